"""Keras pooling: MaxPooling1D/2D, AveragePooling1D/2D (`same` averages divide by the number of real,
unpadded values, as TensorFlow does) and the global poolings."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LAYERS, Layer, Fn, _tuple, same_pad


class Pool(nn.Module):
    def __init__(self, kind, nd, size, strides, padding):
        super().__init__()
        self.kind, self.nd, self.size, self.strides, self.padding = kind, nd, size, strides, padding

    def forward(self, x):
        pool = (F.max_pool1d if self.nd == 1 else F.max_pool2d) if self.kind == "max" else \
            (F.avg_pool1d if self.nd == 1 else F.avg_pool2d)
        if self.padding != "same":
            return pool(x, self.size, self.strides)
        if self.kind == "max":
            return pool(same_pad(x, self.size, self.strides, value=float("-inf")), self.size, self.strides)
        # Keras's `same` average ignores the padding: sum of real values / count of real values.
        total = pool(same_pad(x, self.size, self.strides), self.size, self.strides)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        count = pool(same_pad(ones, self.size, self.strides), self.size, self.strides)
        return total / count

    def extra_repr(self) -> str:
        return f"{self.kind}, size={self.size}, strides={self.strides}, padding={self.padding}"


@LAYERS.register("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D")
def pooling(layer: Layer):
    cls, cfg, shape = layer.cls, layer.cfg, layer.shape
    nd = int(cls[-2])
    size = _tuple(cfg.get("pool_size", 2), nd)
    strides = _tuple(cfg.get("strides"), nd) or size
    padding = cfg.get("padding", "valid").lower()
    kind = "max" if cls.startswith("Max") else "avg"
    spatial = [None if shape[1 + i] is None else (math.ceil(shape[1 + i] / strides[i]) if padding == "same"
               else (shape[1 + i] - size[i]) // strides[i] + 1) for i in range(nd)]
    return Pool(kind, nd, size, strides, padding), (shape[0], *spatial, shape[-1])


@LAYERS.register("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D")
def global_pooling(layer: Layer):
    shape, rank = layer.shape, layer.rank
    keep = bool(layer.cfg.get("keepdims", False))
    dims = tuple(range(2, rank))
    if layer.cls.startswith("GlobalAverage"):
        fn = lambda x: x.mean(dim=dims, keepdim=keep)  # noqa: E731
    else:
        fn = lambda x: x.amax(dim=dims, keepdim=keep)  # noqa: E731
    return Fn(fn), ((shape[0], *([1] * (rank - 2)), shape[-1]) if keep else (shape[0], shape[-1]))
