"""Keras 3 operations called on symbolic tensors (`x + 3.0` in a functional model, MobileNetV3's hard
sigmoid) are saved as graph nodes whose module is keras.src.ops.*: the element-wise ones, with tensors
or number constants as arguments, replayed here. OPS is their registry: operation class -> torch function."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

OPS = Registry("Keras", "operation", {
    "Add": torch.add, "Subtract": torch.sub, "Multiply": torch.mul, "Divide": torch.div, "TrueDivide": torch.div,
    "Maximum": torch.maximum, "Minimum": torch.minimum, "Power": torch.pow, "Negative": torch.neg,
    "Abs": torch.abs, "Absolute": torch.abs, "Sqrt": torch.sqrt, "Exp": torch.exp, "Square": torch.square,
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": F.relu, "Relu6": F.relu6, "Silu": F.silu,
    "Swish": F.silu, "HardSigmoid": lambda x: F.relu6(x + 3) / 6})
TENSOR = object()  # placeholder for a tensor argument in an op's argument template


def is_op(layer: dict) -> bool:
    return str(layer.get("module") or "").startswith("keras.src.ops")


class Op(nn.Module):
    """A Keras operation node: fn(*args) with the graph's tensors put in place of the placeholders."""

    def __init__(self, name: str, template: list):
        super().__init__()
        self.op_name, self.template = name, template

    def forward(self, xs):
        it = iter(xs)
        args = [next(it) if a is TENSOR else a for a in self.template]
        return OPS[self.op_name](*args)


def op_template(node: dict, name: str, cls: str) -> list:
    args = []
    for a in node.get("args", []):
        if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__":
            args.append(TENSOR)
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            args.append(float(a))
        else:
            raise OPS.refuse({f"{cls}(argument {a!r:.60})": [name]},
                             "graftkit replays operations on tensors and number constants")
    if node.get("kwargs"):
        raise OPS.refuse({f"{cls}(keyword arguments {sorted(node['kwargs'])})": [name]},
                         "graftkit replays operations called with positional arguments")
    return args


def broadcast_shape(shapes: list[tuple]) -> tuple:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        known = [d for d in dims if d not in (None, 1)]
        out.append(known[0] if known else (None if None in dims else 1))
    return tuple(out)


