"""Keras core layers: Dense, Embedding, activations, merges (Add, Concatenate, ...) and the layers that are
the identity at inference (Dropout, noise, Masking, ...)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LAYERS, Layer, Fn, channel_view, from_keras, keras_relu, our_axis, to_keras


class Dense(nn.Module):
    """Dense on the last Keras axis (our channel axis for rank >= 3)."""

    def __init__(self, cin, units, bias, act):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(units, cin))
        self.bias = nn.Parameter(torch.zeros(units)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.act = act

    def forward(self, x):
        if x.ndim >= 3:
            return self.act(from_keras(F.linear(to_keras(x), self.weight, self.bias)))
        return self.act(F.linear(x, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}->{self.weight.shape[0]}"


class PReLU(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        a = self.weight
        a = channel_view(a, x.ndim) if a.ndim == 1 else a.unsqueeze(0)
        return F.relu(x) - a * F.relu(-x)


class Merge(nn.Module):
    def __init__(self, kind, axis=-1):
        super().__init__()
        self.kind, self.axis = kind, axis

    def forward(self, xs):
        if self.kind == "Concatenate":
            return torch.cat(xs, dim=our_axis(self.axis, xs[0].ndim))
        y = xs[0]
        for t in xs[1:]:
            if self.kind in ("Add", "Average"):
                y = y + t
            elif self.kind == "Subtract":
                y = y - t
            elif self.kind == "Multiply":
                y = y * t
            elif self.kind == "Maximum":
                y = torch.maximum(y, t)
            else:
                y = torch.minimum(y, t)
        return y / len(xs) if self.kind == "Average" else y


@LAYERS.register("Dense")
def dense(layer: Layer):
    shape, cfg = layer.shape, layer.cfg
    return Dense(shape[-1], cfg["units"], cfg.get("use_bias", True), layer.act), (*shape[:-1], cfg["units"])


class Embedding(nn.Embedding):
    """Keras Embedding: integer indices (N, ...) -> vectors, the vector axis as our channel axis (N, D, ...)."""

    def forward(self, x):
        return from_keras(super().forward(to_keras(x).long()))  # (Keras casts its indices to integers too)


# A mask changes what later layers compute (a masked average): graftkit does not reproduce masks.
@LAYERS.register("Embedding", allow={"mask_zero": lambda v: not v, "lora_rank": lambda v: not v})
def embedding(layer: Layer):
    cfg = layer.cfg
    return Embedding(cfg["input_dim"], cfg["output_dim"]), (*layer.shape, cfg["output_dim"])


@LAYERS.register("Activation", elementwise=True)
def activation(layer: Layer):
    return Fn(layer.act), layer.shape


@LAYERS.register("ReLU", elementwise=True)
def relu(layer: Layer):
    cfg = layer.cfg
    ns, mv, th = float(cfg.get("negative_slope") or 0.0), cfg.get("max_value"), float(cfg.get("threshold") or 0.0)
    return Fn(lambda x: keras_relu(x, ns, mv, th)), layer.shape


@LAYERS.register("LeakyReLU", elementwise=True)
def leaky_relu(layer: Layer):
    slope = float(layer.cfg.get("negative_slope", layer.cfg.get("alpha", 0.3)))
    return Fn(lambda x: F.leaky_relu(x, slope)), layer.shape


@LAYERS.register("ELU", elementwise=True)
def elu(layer: Layer):
    alpha = float(layer.cfg.get("alpha", 1.0))
    return Fn(lambda x: F.elu(x, alpha)), layer.shape


@LAYERS.register("ThresholdedReLU", elementwise=True)
def thresholded_relu(layer: Layer):
    theta = float(layer.cfg.get("theta", 1.0))
    return Fn(lambda x: x * (x > theta)), layer.shape


@LAYERS.register("Softmax")
def softmax(layer: Layer):
    axis = layer.cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1:
        raise layer.refuse(f"axis={axis}", "use a Softmax over one axis")
    return Fn(lambda x: F.softmax(x, dim=our_axis(axes[0], x.ndim))), layer.shape


@LAYERS.register("PReLU")
def prelu(layer: Layer):
    shape = layer.shape
    shared = layer.cfg.get("shared_axes") or []
    alpha = [1 if (i + 1) in shared else n for i, n in enumerate(shape[1:])]
    alpha = [alpha[-1], *alpha[:-1]] if len(alpha) >= 2 else alpha  # channels first
    if len(alpha) >= 2 and all(a == 1 for a in alpha[1:]):
        alpha = alpha[:1]
    return PReLU(tuple(alpha)), shape


@LAYERS.register("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                 "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity", elementwise=True)
def identity(layer: Layer):
    return Fn(lambda x: x), layer.shape


@LAYERS.register("Masking", elementwise=True)
def masking(layer: Layer):
    # Keras zeroes the steps whose features (our axis 1) all equal mask_value. (The mask it also passes on
    # to mask-aware layers is not reproduced.)
    value = float(layer.cfg.get("mask_value", 0.0))
    return Fn(lambda x: x * (x != value).any(dim=1, keepdim=True).to(x.dtype)), layer.shape


@LAYERS.register("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def merge(layer: Layer):
    return Merge(layer.cls), layer.shape


@LAYERS.register("Concatenate")
def concatenate(layer: Layer):
    shapes, shape = layer.shapes, layer.shape
    axis = layer.cfg.get("axis", -1)
    a = axis % layer.rank
    n = None if any(s[a] is None for s in shapes) else sum(s[a] for s in shapes)
    return Merge(layer.cls, axis), tuple(n if i == a else d for i, d in enumerate(shape))
