"""What every Keras layer converter uses: the registry, the layer being converted, the layout helpers.

Layout: Keras works channels-last (NHWC); converted modules take and return NCHW. Inside, every
tensor of rank >= 3 is kept channels-first, and the layers that care about axis order translate: a
Keras axis `a` of a rank-r tensor is our axis 0 -> 0, r-1 -> 1, k -> k+1. Flatten/Reshape/Permute go
back to channels-last for the element order Keras computes with, so the following Dense weights line up.
`same` padding is Keras's (TensorFlow's): when the total padding is odd the extra row/column goes at
the bottom/right.

A layer converter is one function registered for its Keras class(es):

    @LAYERS.register("Flatten")
    def flatten(layer: Layer) -> tuple[nn.Module, tuple]:
        shape = layer.shape                               # input shape, Keras's layout, batch first
        n = None if any(d is None for d in shape[1:]) else math.prod(shape[1:])
        return Fn(lambda x: to_keras(x).flatten(1)), (shape[0], n)   # module, output shape

Traits: `elementwise=True` for layers that keep each value in place (activations, dropout), so a
Flatten's element order passes through them to the Dense that reads it (KerasNet.flatten_feeds);
`allow={option: test}` for options checked before anything is built (registry.refused_option).
Options that need the input shapes to judge are refused in the function, with `layer.refuse`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry, Unsupported

LAYERS = Registry("Keras", "layer")


@dataclass
class Layer:
    """One Keras layer to convert: its class, config, name, input shapes (Keras layout, batch first), the
    Keras major version, and its fused activation (identity when it has none)."""
    cls: str
    cfg: dict
    name: str
    shapes: list[tuple]
    keras_major: int
    act: Callable

    @property
    def shape(self) -> tuple:
        return self.shapes[0]

    @property
    def rank(self) -> int:
        return len(self.shapes[0])

    def refuse(self, option: str, hint: str) -> Unsupported:
        """The shared unsupported error for an option of this layer that graftkit does not reproduce."""
        return LAYERS.refuse({f"{self.cls}({option})": [self.name]}, hint)


# ---------------------------------------------------------------- layout helpers

def our_axis(axis: int, rank: int) -> int:
    """Keras (channels-last) axis -> our (channels-first) axis for a tensor of this rank."""
    a = axis % rank
    if rank < 3 or a == 0:
        return a
    return 1 if a == rank - 1 else a + 1


def to_keras(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1) if x.ndim >= 3 else x


def from_keras(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1) if x.ndim >= 3 else x


def channel_view(v: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over our layout."""
    return v.reshape(-1, *([1] * (rank - 2))) if rank >= 3 else v


def same_pad(x: torch.Tensor, kernel, strides, dilation=None, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's `same` padding: total = max((ceil(n/s)-1)*s + eff_k - n, 0), the odd one after."""
    pads: list[int] = []
    nd = len(kernel)
    for i in reversed(range(nd)):
        n = x.shape[2 + i]
        eff = (kernel[i] - 1) * (dilation[i] if dilation else 1) + 1
        total = max((math.ceil(n / strides[i]) - 1) * strides[i] + eff - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def nchw_shape(shape) -> list:
    """A Keras (channels-last) shape in our layout."""
    shape = list(shape)
    return [shape[0], shape[-1], *shape[1:-1]] if len(shape) >= 3 else shape


def _tuple(v, n: int) -> tuple:
    if v is None:
        return None
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


# ---------------------------------------------------------------- activations

def keras_relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """keras.activations.relu, exactly (including threshold and max_value)."""
    if negative_slope and max_value is None and not threshold:
        return F.leaky_relu(x, negative_slope)
    neg = F.relu(threshold - x) if negative_slope else None
    y = x * (x > threshold) if threshold else F.relu(x)
    if max_value is not None:
        y = y.clamp(max=float(max_value))
    if negative_slope:
        y = y - negative_slope * neg
    return y


def activation_fn(spec, keras_major: int, where: str):
    """The torch function for a Keras activation name (channel axis is 1 for rank >= 3)."""
    name = spec
    if isinstance(spec, dict):  # serialised builtin: {"class_name": "function", "config": "relu"}
        name = spec.get("config") if isinstance(spec.get("config"), str) else spec.get("class_name")
    name = (name or "linear").lower()

    def softmax(x, fn=F.softmax):
        return fn(x, dim=1 if x.ndim >= 3 else -1)

    table = {
        "linear": lambda x: x, "relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
        "softmax": softmax, "log_softmax": lambda x: softmax(x, F.log_softmax),
        "elu": F.elu, "selu": F.selu, "softplus": F.softplus, "softsign": F.softsign,
        "swish": F.silu, "silu": F.silu, "exponential": torch.exp, "mish": F.mish,
        "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "gelu": F.gelu,
        # Keras 3: relu6(x + 3) / 6; Keras 2: clip(0.2 x + 0.5, 0, 1).
        "hard_sigmoid": (lambda x: F.relu6(x + 3) / 6) if keras_major >= 3 else (lambda x: (0.2 * x + 0.5).clamp(0, 1)),
        "hard_swish": lambda x: x * F.relu6(x + 3) / 6, "hard_silu": lambda x: x * F.relu6(x + 3) / 6,
    }
    if name not in table:
        raise LAYERS.refuse({f"activation {name!r}": [where]}, "use a built-in Keras activation")
    return table[name]


class Fn(nn.Module):
    """A parameter-free layer: a function of the input tensor (activations, padding, reshapes, ...)."""

    def __init__(self, fn, what: str = ""):
        super().__init__()
        self.fn, self.what = fn, what

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.what


