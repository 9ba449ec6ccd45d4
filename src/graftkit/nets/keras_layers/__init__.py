"""Keras layer converters, one registered function per layer class, grouped by family:

    conv       Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose
    core       Dense, activations, merges, layers that are the identity at inference
    norm       BatchNormalization, LayerNormalization, Normalization, Rescaling
    pooling    max/average pooling, global pooling
    reshaping  padding, cropping, upsampling, Flatten, Reshape, Permute
    ops        Keras 3 operations on symbolic tensors (`x * 2.0`)

To support a new layer, register one function in the module of its family (see base.py) and test it
against Keras in tests/test_nets_keras.py; nets/keras.py's graph needs no change.
"""
from __future__ import annotations

from . import conv, core, norm, pooling, reshaping  # noqa: F401 - each registers its layers in LAYERS
from .base import LAYERS, Fn, Layer, activation_fn
from .ops import OPS


def build_layer(cls: str, cfg: dict, name: str, shapes: list[tuple], keras_major: int):
    """(module, output shape) for one Keras layer given its input shapes (Keras layout, batch first)."""
    act = activation_fn(cfg.get("activation"), keras_major, name) if "activation" in cfg else (lambda x: x)
    layer = Layer(cls, cfg, name, shapes, keras_major, act)
    if cfg.get("data_format") == "channels_first" and layer.rank >= 3:
        raise layer.refuse("data_format='channels_first'", "re-save the model channels_last")
    convert = LAYERS.get(cls)
    if convert is None:  # (unsupported_layers refuses these first, with every offender at once)
        raise LAYERS.refuse({cls: [name]}, "graftkit cannot run custom layer code")
    return convert(layer)


__all__ = ["LAYERS", "OPS", "Fn", "build_layer"]
