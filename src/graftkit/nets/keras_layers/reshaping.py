"""Keras reshaping layers: padding, cropping, upsampling, Flatten, Reshape, Permute. Flatten/Reshape/Permute
work on the channels-last view, the element order Keras computes with."""
from __future__ import annotations

import math

import torch.nn.functional as F

from .base import LAYERS, Layer, Fn, _tuple, from_keras, to_keras


def _pairs(v) -> list[tuple[int, int]]:
    """Keras's 2-D padding/cropping: an int, (rows, cols), or ((top, bottom), (left, right))."""
    return [(q, q) if isinstance(q, int) else tuple(q) for q in _tuple(v, 2)]


def _plus(n, k):
    return None if n is None else n + k


@LAYERS.register("ZeroPadding2D")
def zero_padding_2d(layer: Layer):
    shape = layer.shape
    (t, b), (l, r) = _pairs(layer.cfg.get("padding", 1))
    return Fn(lambda x: F.pad(x, [l, r, t, b])), (shape[0], _plus(shape[1], t + b), _plus(shape[2], l + r), shape[3])


@LAYERS.register("Cropping2D")
def cropping_2d(layer: Layer):
    shape = layer.shape
    (t, b), (l, r) = _pairs(layer.cfg.get("cropping", 0))
    return Fn(lambda x: x[:, :, t:x.shape[2] - b, l:x.shape[3] - r]), \
        (shape[0], _plus(shape[1], -t - b), _plus(shape[2], -l - r), shape[3])


@LAYERS.register("UpSampling2D")
def upsampling_2d(layer: Layer):
    shape = layer.shape
    sh, sw = _tuple(layer.cfg.get("size", 2), 2)
    mode = layer.cfg.get("interpolation", "nearest")
    if mode == "nearest":
        fn = lambda x: x.repeat_interleave(sh, 2).repeat_interleave(sw, 3)  # noqa: E731
    elif mode == "bilinear":
        fn = lambda x: F.interpolate(x, size=(x.shape[2] * sh, x.shape[3] * sw), mode="bilinear",  # noqa: E731
                                     align_corners=False)
    else:
        raise layer.refuse(f"interpolation={mode!r}", "use nearest or bilinear")
    return Fn(fn), (shape[0], None if shape[1] is None else shape[1] * sh,
                    None if shape[2] is None else shape[2] * sw, shape[3])


@LAYERS.register("Flatten")
def flatten(layer: Layer):
    shape = layer.shape
    n = None if any(d is None for d in shape[1:]) else math.prod(shape[1:])
    return Fn(lambda x: to_keras(x).flatten(1)), (shape[0], n)


@LAYERS.register("Reshape")
def reshape(layer: Layer):
    shape = layer.shape
    target = list(layer.cfg["target_shape"])
    if -1 in target and all(d is not None for d in shape[1:]):
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(shape[1:]) // known
    return Fn(lambda x: from_keras(to_keras(x).reshape(x.shape[0], *target))), (shape[0], *target)


@LAYERS.register("Permute")
def permute(layer: Layer):
    shape = layer.shape
    dims = list(layer.cfg["dims"])
    return Fn(lambda x: from_keras(to_keras(x).permute(0, *dims))), (shape[0], *[shape[d] for d in dims])
