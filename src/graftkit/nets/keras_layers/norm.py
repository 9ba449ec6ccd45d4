"""Keras normalisation and scaling layers: BatchNormalization, LayerNormalization, Normalization, Rescaling."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LAYERS, Layer, channel_view, our_axis


class BatchNorm(nn.Module):
    """Keras BatchNormalization over the channel axis; gamma/beta only when scale/center."""

    def __init__(self, c, eps, momentum, scale, center):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(c)) if scale else None
        self.bias = nn.Parameter(torch.zeros(c)) if center else None
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            1.0 - self.momentum, self.eps)


class LayerNorm(nn.Module):
    """Keras LayerNormalization over the channel (last Keras) axis: biased variance, eps inside the sqrt."""

    def __init__(self, c, eps, scale, center):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c)) if scale else None
        self.bias = nn.Parameter(torch.zeros(c)) if center else None

    def forward(self, x):
        dim = 1 if x.ndim >= 3 else -1
        mean = x.mean(dim=dim, keepdim=True)
        var = (x - mean).square().mean(dim=dim, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * channel_view(self.weight, x.ndim)
        if self.bias is not None:
            y = y + channel_view(self.bias, x.ndim)
        return y


class Normalization(nn.Module):
    """(x - mean) / max(sqrt(var), 1e-7) per channel (or the inverse), Keras 3's formula."""

    def __init__(self, shape, invert, mean=None, variance=None):
        super().__init__()
        self.invert = invert
        if mean is not None:  # given in the config: fixed, not weights
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(shape), persistent=False)
            self.register_buffer("variance", torch.as_tensor(variance, dtype=torch.float32).reshape(shape),
                                 persistent=False)
        else:
            self.register_buffer("mean", torch.zeros(shape))
            self.register_buffer("variance", torch.ones(shape))
            self.register_buffer("count", torch.zeros(1, dtype=torch.int64))  # Keras keeps it as a (1,) weight

    def forward(self, x):
        m, v = self.mean, self.variance
        if m.ndim == 1:
            m, v = channel_view(m, x.ndim), channel_view(v, x.ndim)
        std = v.sqrt().clamp(min=1e-7)
        return m + x * std if self.invert else (x - m) / std


class Rescaling(nn.Module):
    """x * scale + offset; per-channel when given as lists. Constants from the config, so not in the state."""

    def __init__(self, scale, offset):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32), persistent=False)

    def forward(self, x):
        s, o = self.scale, self.offset
        if s.ndim == 1 and x.ndim >= 3:
            s = channel_view(s, x.ndim)
        if o.ndim == 1 and x.ndim >= 3:
            o = channel_view(o, x.ndim)
        return x * s + o


def _one_axis(axis):
    return axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis


@LAYERS.register("BatchNormalization")
def batch_normalization(layer: Layer):
    cfg, rank = layer.cfg, layer.rank
    axis = _one_axis(cfg.get("axis", -1))
    if not isinstance(axis, int) or our_axis(axis, rank) != (1 if rank >= 2 else 0):
        raise layer.refuse(f"axis={axis}", "graftkit converts BatchNormalization over the channel (last) axis")
    return BatchNorm(layer.shape[-1], float(cfg.get("epsilon", 1e-3)), float(cfg.get("momentum", 0.99)),
                     cfg.get("scale", True), cfg.get("center", True)), layer.shape


@LAYERS.register("LayerNormalization")
def layer_normalization(layer: Layer):
    cfg, rank = layer.cfg, layer.rank
    axis = _one_axis(cfg.get("axis", -1))
    if not isinstance(axis, int) or axis % rank != rank - 1 or cfg.get("rms_scaling"):
        option = "rms_scaling=True" if isinstance(axis, int) and axis % rank == rank - 1 else f"axis={axis}"
        raise layer.refuse(option, "graftkit converts LayerNormalization over the last axis, without rms_scaling")
    return LayerNorm(layer.shape[-1], float(cfg.get("epsilon", 1e-3)), cfg.get("scale", True),
                     cfg.get("center", True)), layer.shape


@LAYERS.register("Normalization")
def normalization(layer: Layer):
    cfg, rank = layer.cfg, layer.rank
    axis = cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else ([] if axis is None else [axis])
    if [our_axis(a, rank) for a in axes] != [1 if rank >= 2 else 0]:
        raise layer.refuse(f"axis={axis}", "graftkit converts Normalization over the channel (last) axis")
    return Normalization((layer.shape[-1],), bool(cfg.get("invert", False)), cfg.get("mean"),
                         cfg.get("variance")), layer.shape


@LAYERS.register("Rescaling")
def rescaling(layer: Layer):
    return Rescaling(layer.cfg.get("scale", 1.0), layer.cfg.get("offset", 0.0)), layer.shape
