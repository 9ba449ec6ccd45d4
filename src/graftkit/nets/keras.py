"""Keras models (`.keras`, full-model `.h5`, optionally with a separate weights file) -> runnable torch modules.

The module is built from the model config alone (so a package can rebuild it from
its spec), then the weights read by formats.keras are loaded into it by name.

Layout: Keras works channels-last (NHWC); converted modules take and return NCHW.
Inside, every tensor of rank >= 3 is kept channels-first, and the layers that care
about axis order translate: a Keras axis `a` of a rank-r tensor is our axis
0 -> 0, r-1 -> 1, k -> k+1. Flatten/Reshape/Permute go back to channels-last for
the element order Keras computes with, so the following Dense weights line up.
`same` padding is Keras's (TensorFlow's): when the total padding is odd the extra
row/column goes at the bottom/right, and `same` average pooling divides by the
number of real (unpadded) values.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError, some
from ..formats import keras as kfile
from ..meta import attach, make_meta

IDENTITY = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
            "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity", "Masking"}
MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
SUPPORTED = IDENTITY | MERGE | {
    "InputLayer", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
    "BatchNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Flatten", "Reshape", "Permute", "Rescaling",
    "Normalization", "LayerNormalization", *kfile.MODEL_CLASSES}


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
        raise GraftError(f"Keras activation {name!r} (layer {where}) is not supported by graftkit",
                         "use a built-in activation, or transplant the weights with `graft transplant`")
    return table[name]


# ---------------------------------------------------------------- layers with weights

class Conv(nn.Module):
    """Conv1D/Conv2D/DepthwiseConv2D (groups) with Keras padding and the fused activation."""

    def __init__(self, nd, cin, cout, kernel, strides, padding, dilation, groups, bias, act):
        super().__init__()
        self.nd, self.kernel, self.strides, self.padding, self.dilation, self.groups = \
            nd, kernel, strides, padding, dilation, groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, *kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.act = act

    def forward(self, x):
        if self.padding == "same":
            x = same_pad(x, self.kernel, self.strides, self.dilation)
        elif self.padding == "causal":
            x = F.pad(x, [(self.kernel[0] - 1) * self.dilation[0], 0])
        conv = F.conv1d if self.nd == 1 else F.conv2d
        return self.act(conv(x, self.weight, self.bias, self.strides, 0, self.dilation, self.groups))

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return (f"{i * self.groups}->{o}, kernel={self.kernel}, strides={self.strides}, padding={self.padding}"
                + (f", dilation={self.dilation}" if any(d != 1 for d in self.dilation) else "")
                + (f", groups={self.groups}" if self.groups != 1 else ""))


class Separable(nn.Module):
    """SeparableConv2D: depthwise (no bias) then pointwise 1x1 (with the bias), then the activation."""

    def __init__(self, cin, mult, cout, kernel, strides, padding, dilation, bias, act):
        super().__init__()
        ident = lambda x: x  # noqa: E731
        self.depthwise = Conv(2, cin, cin * mult, kernel, strides, padding, dilation, cin, False, ident)
        self.pointwise = Conv(2, cin * mult, cout, (1, 1), (1, 1), "valid", (1, 1), 1, bias, ident)
        self.act = act

    def forward(self, x):
        return self.act(self.pointwise(self.depthwise(x)))


class ConvTranspose(nn.Module):
    """Conv2DTranspose: the full transposed convolution, then cropped/zero-filled to Keras's output size."""

    def __init__(self, cin, cout, kernel, strides, padding, dilation, bias, act):
        super().__init__()
        self.kernel, self.strides, self.padding, self.dilation = kernel, strides, padding, dilation
        self.weight = nn.Parameter(torch.empty(cin, cout, *kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.act = act

    def forward(self, x):
        y = F.conv_transpose2d(x, self.weight, None, self.strides, 0, 0, 1, self.dilation)
        for i in range(2):
            n, s = x.shape[2 + i], self.strides[i]
            eff = (self.kernel[i] - 1) * self.dilation[i] + 1
            if self.padding == "same":
                want, before = n * s, max(eff - s, 0) // 2
            else:
                want, before = n * s + max(eff - s, 0), 0
            y = y.narrow(2 + i, before, min(want, y.shape[2 + i] - before))
            if y.shape[2 + i] < want:
                pad = [0, 0] * (1 - i) + [0, want - y.shape[2 + i]]
                y = F.pad(y, pad)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return self.act(y)


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


class PReLU(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        a = self.weight
        a = channel_view(a, x.ndim) if a.ndim == 1 else a.unsqueeze(0)
        return F.relu(x) - a * F.relu(-x)


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


# ---------------------------------------------------------------- parameter-free layers

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


class Fn(nn.Module):
    """A parameter-free layer: a function of the input tensor (activations, padding, reshapes, ...)."""

    def __init__(self, fn, what: str = ""):
        super().__init__()
        self.fn, self.what = fn, what

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.what


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


# Keras 3 operations called on symbolic tensors (`x + 3.0` in a functional model) are saved as graph nodes
# whose module is keras.src.ops.*: the element-wise ones, with tensors or number constants as arguments.
OPS = {"Add": torch.add, "Subtract": torch.sub, "Multiply": torch.mul, "Divide": torch.div,
       "TrueDivide": torch.div, "Maximum": torch.maximum, "Minimum": torch.minimum, "Power": torch.pow,
       "Negative": torch.neg, "Abs": torch.abs, "Absolute": torch.abs, "Sqrt": torch.sqrt, "Exp": torch.exp,
       "Square": torch.square, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": F.relu, "Relu6": F.relu6,
       "Silu": F.silu, "Swish": F.silu, "HardSigmoid": lambda x: F.relu6(x + 3) / 6}
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
            raise GraftError(f"Keras operation {name} ({cls}) has an argument graftkit cannot replay: {a!r:.60}",
                             "transplant the weights with `graft transplant`")
    if node.get("kwargs"):
        raise GraftError(f"Keras operation {name} ({cls}) uses keyword arguments {sorted(node['kwargs'])}, "
                         "which graftkit does not replay", "transplant the weights with `graft transplant`")
    return args


def broadcast_shape(shapes: list[tuple]) -> tuple:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        known = [d for d in dims if d not in (None, 1)]
        out.append(known[0] if known else (None if None in dims else 1))
    return tuple(out)


# ---------------------------------------------------------------- one layer: module + output shape

def _conv_len(n, k, s, d, padding):
    if n is None:
        return None
    eff = (k - 1) * d + 1
    if padding == "same":
        return math.ceil(n / s)
    if padding == "causal":
        return math.ceil(n / s)
    return (n - eff) // s + 1


def build_layer(cls: str, cfg: dict, name: str, shapes: list[tuple], keras_major: int):
    """(module, output shape) for one Keras layer given its input shapes (Keras layout, batch first)."""
    shape = shapes[0]
    rank = len(shape)
    act = activation_fn(cfg.get("activation"), keras_major, name) if "activation" in cfg else (lambda x: x)
    if cfg.get("data_format") == "channels_first" and rank >= 3:
        raise GraftError(f"Keras layer {name} ({cls}) uses data_format='channels_first', which graftkit does "
                         "not convert yet", "re-save the model channels_last")

    if cls in ("Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"):
        nd = 1 if cls == "Conv1D" else 2
        k = _tuple(cfg["kernel_size"], nd)
        s = _tuple(cfg.get("strides", 1), nd)
        d = _tuple(cfg.get("dilation_rate", 1), nd)
        padding = cfg.get("padding", "valid").lower()
        cin = shape[-1]
        bias = cfg.get("use_bias", True)
        if cls == "Conv2DTranspose":
            if cfg.get("output_padding") is not None:
                raise GraftError(f"Keras layer {name}: Conv2DTranspose with output_padding is not supported",
                                 "transplant its weights with `graft transplant`")
            mod = ConvTranspose(cin, cfg["filters"], k, s, padding, d, bias, act)
            spatial = []
            for i in range(2):
                n, eff = shape[1 + i], (k[i] - 1) * d[i] + 1
                spatial.append(None if n is None else n * s[i] + (max(eff - s[i], 0) if padding == "valid" else 0))
            return mod, (shape[0], *spatial, cfg["filters"])
        if cls == "DepthwiseConv2D":
            mult = cfg.get("depth_multiplier", 1)
            mod, cout = Conv(2, cin, cin * mult, k, s, padding, d, cin, bias, act), cin * mult
        elif cls == "SeparableConv2D":
            mult = cfg.get("depth_multiplier", 1)
            mod, cout = Separable(cin, mult, cfg["filters"], k, s, padding, d, bias, act), cfg["filters"]
        else:
            mod, cout = Conv(nd, cin, cfg["filters"], k, s, padding, d, cfg.get("groups", 1), bias, act), \
                cfg["filters"]
        spatial = [_conv_len(shape[1 + i], k[i], s[i], d[i], padding) for i in range(nd)]
        return mod, (shape[0], *spatial, cout)
    if cls == "Dense":
        return Dense(shape[-1], cfg["units"], cfg.get("use_bias", True), act), (*shape[:-1], cfg["units"])
    if cls == "BatchNormalization":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if not isinstance(axis, int) or our_axis(axis, rank) != (1 if rank >= 2 else 0):
            raise GraftError(f"Keras layer {name}: BatchNormalization over axis {axis} is not supported",
                             "graftkit converts BatchNormalization over the channel (last) axis")
        return BatchNorm(shape[-1], float(cfg.get("epsilon", 1e-3)), float(cfg.get("momentum", 0.99)),
                         cfg.get("scale", True), cfg.get("center", True)), shape
    if cls == "Activation":
        return Fn(act), shape
    if cls == "LayerNormalization":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if not isinstance(axis, int) or axis % rank != rank - 1 or cfg.get("rms_scaling"):
            raise GraftError(f"Keras layer {name}: LayerNormalization over axis {axis} is not supported",
                             "graftkit converts LayerNormalization over the last axis")
        return LayerNorm(shape[-1], float(cfg.get("epsilon", 1e-3)), cfg.get("scale", True),
                         cfg.get("center", True)), shape
    if cls == "ReLU":
        ns, mv, th = float(cfg.get("negative_slope") or 0.0), cfg.get("max_value"), float(cfg.get("threshold") or 0.0)
        return Fn(lambda x: keras_relu(x, ns, mv, th)), shape
    if cls == "LeakyReLU":
        slope = float(cfg.get("negative_slope", cfg.get("alpha", 0.3)))
        return Fn(lambda x: F.leaky_relu(x, slope)), shape
    if cls == "ELU":
        alpha = float(cfg.get("alpha", 1.0))
        return Fn(lambda x: F.elu(x, alpha)), shape
    if cls == "ThresholdedReLU":
        theta = float(cfg.get("theta", 1.0))
        return Fn(lambda x: x * (x > theta)), shape
    if cls == "Softmax":
        axis = cfg.get("axis", -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        if len(axes) != 1:
            raise GraftError(f"Keras layer {name}: Softmax over several axes is not supported")
        return Fn(lambda x: F.softmax(x, dim=our_axis(axes[0], x.ndim))), shape
    if cls == "PReLU":
        shared = cfg.get("shared_axes") or []
        alpha = [1 if (i + 1) in shared else n for i, n in enumerate(shape[1:])]
        alpha = [alpha[-1], *alpha[:-1]] if len(alpha) >= 2 else alpha  # channels first
        if len(alpha) >= 2 and all(a == 1 for a in alpha[1:]):
            alpha = alpha[:1]
        return PReLU(tuple(alpha)), shape
    if cls in ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"):
        nd = int(cls[-2])
        size = _tuple(cfg.get("pool_size", 2), nd)
        strides = _tuple(cfg.get("strides"), nd) or size
        padding = cfg.get("padding", "valid").lower()
        kind = "max" if cls.startswith("Max") else "avg"
        spatial = [None if shape[1 + i] is None else (math.ceil(shape[1 + i] / strides[i]) if padding == "same"
                   else (shape[1 + i] - size[i]) // strides[i] + 1) for i in range(nd)]
        return Pool(kind, nd, size, strides, padding), (shape[0], *spatial, shape[-1])
    if cls.startswith("Global") and "Pooling" in cls:
        keep = bool(cfg.get("keepdims", False))
        dims = tuple(range(2, rank))
        if cls.startswith("GlobalAverage"):
            fn = lambda x: x.mean(dim=dims, keepdim=keep)  # noqa: E731
        else:
            fn = lambda x: x.amax(dim=dims, keepdim=keep)  # noqa: E731
        return Fn(fn), ((shape[0], *([1] * (rank - 2)), shape[-1]) if keep else (shape[0], shape[-1]))
    if cls == "ZeroPadding2D":
        p = cfg.get("padding", 1)
        (t, b), (l, r) = [(q, q) if isinstance(q, int) else tuple(q) for q in _tuple(p, 2)]
        return Fn(lambda x: F.pad(x, [l, r, t, b])), \
            (shape[0], None if shape[1] is None else shape[1] + t + b,
             None if shape[2] is None else shape[2] + l + r, shape[3])
    if cls == "Cropping2D":
        c = cfg.get("cropping", 0)
        (t, b), (l, r) = [(q, q) if isinstance(q, int) else tuple(q) for q in _tuple(c, 2)]
        return Fn(lambda x: x[:, :, t:x.shape[2] - b, l:x.shape[3] - r]), \
            (shape[0], None if shape[1] is None else shape[1] - t - b,
             None if shape[2] is None else shape[2] - l - r, shape[3])
    if cls == "UpSampling2D":
        sh, sw = _tuple(cfg.get("size", 2), 2)
        mode = cfg.get("interpolation", "nearest")
        if mode == "nearest":
            fn = lambda x: x.repeat_interleave(sh, 2).repeat_interleave(sw, 3)  # noqa: E731
        elif mode == "bilinear":
            fn = lambda x: F.interpolate(x, size=(x.shape[2] * sh, x.shape[3] * sw), mode="bilinear",  # noqa: E731
                                         align_corners=False)
        else:
            raise GraftError(f"Keras layer {name}: UpSampling2D interpolation {mode!r} is not supported",
                             "use nearest or bilinear")
        return Fn(fn), (shape[0], None if shape[1] is None else shape[1] * sh,
                            None if shape[2] is None else shape[2] * sw, shape[3])
    if cls == "Flatten":
        n = None if any(d is None for d in shape[1:]) else math.prod(shape[1:])
        return Fn(lambda x: to_keras(x).flatten(1)), (shape[0], n)
    if cls == "Reshape":
        target = list(cfg["target_shape"])
        if -1 in target and all(d is not None for d in shape[1:]):
            known = math.prod(d for d in target if d != -1)
            target[target.index(-1)] = math.prod(shape[1:]) // known
        return Fn(lambda x: from_keras(to_keras(x).reshape(x.shape[0], *target))), (shape[0], *target)
    if cls == "Permute":
        dims = list(cfg["dims"])
        return Fn(lambda x: from_keras(to_keras(x).permute(0, *dims))), (shape[0], *[shape[d] for d in dims])
    if cls == "Rescaling":
        return Rescaling(cfg.get("scale", 1.0), cfg.get("offset", 0.0)), shape
    if cls == "Normalization":
        axis = cfg.get("axis", -1)
        axes = axis if isinstance(axis, (list, tuple)) else ([] if axis is None else [axis])
        if [our_axis(a, rank) for a in axes] != [1 if rank >= 2 else 0]:
            raise GraftError(f"Keras layer {name}: Normalization over axis {axis} is not supported",
                             "graftkit converts Normalization over the channel (last) axis")
        return Normalization((shape[-1],), bool(cfg.get("invert", False)), cfg.get("mean"),
                             cfg.get("variance")), shape
    if cls in IDENTITY:
        return Fn(lambda x: x), shape
    if cls in MERGE:
        if cls == "Concatenate":
            axis = cfg.get("axis", -1)
            a = axis % rank
            n = None if any(s[a] is None for s in shapes) else sum(s[a] for s in shapes)
            return Merge(cls, axis), tuple(n if i == a else d for i, d in enumerate(shape))
        return Merge(cls), shape
    raise GraftError(f"Keras layer {name} ({cls}) is not supported", "transplant its weights with `graft transplant`")


# ---------------------------------------------------------------- the graph

def _refs(obj) -> list[tuple[str, int, int]]:
    """Keras tensor references (layer, node, tensor) in call arguments, Keras 2 or 3 style, in order."""
    out = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            h = obj["config"]["keras_history"]
            return [(h[0], int(h[1]), int(h[2]))]
        for v in obj.values():
            out += _refs(v)
    elif isinstance(obj, (list, tuple)):
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int) and isinstance(obj[2], int):
            return [(obj[0], obj[1], obj[2])]
        for v in obj:
            out += _refs(v)
    return out


def _node_inputs(node) -> tuple[list[tuple[str, int, int]], bool]:
    """(references, called with a list?) of one inbound node."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args = node.get("args", [])
        refs = _refs(args)
        return refs, len(refs) > 1 or (len(args) == 1 and isinstance(args[0], list))
    refs = _refs(node)  # Keras 2: [[name, node, tensor, kwargs], ...]
    return refs, len(refs) > 1


def _io_list(v) -> list[tuple[str, int, int]]:
    if not v:
        return []
    if isinstance(v[0], str):
        v = [v]
    return [(x[0], int(x[1]), int(x[2])) for x in v]


def unsupported_layers(config: dict) -> dict[str, list[str]]:
    """Class -> layer names that graftkit cannot convert, over the whole (nested) config."""
    bad: dict[str, list[str]] = {}
    for name, info in kfile.flatten_config(config).items():
        cls = info["class_name"]
        if str(info.get("module", "")).startswith("keras.src.ops"):
            if cls not in OPS:
                bad.setdefault(f"operation {cls}", []).append(name)
        elif cls not in SUPPORTED:
            bad.setdefault(cls, []).append(name)
    return bad


# Attributes of KerasNet itself, which a layer's submodule must not shadow.
RESERVED = {"inputs", "outputs", "train_outputs", "input_shapes", "keras_input_shapes", "keras_output_shapes",
            "steps", "keras_major", "model_class", "input_refs", "output_refs", "output_names", "layer_of",
            "flatten_feeds"}


def module_name(name: str) -> str:
    """A torch submodule name for a Keras layer name: the same name whenever torch allows it."""
    n = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    while hasattr(nn.Module, n) or n in RESERVED:
        n += "_"
    return n


def _input_shape(layer: dict) -> tuple:
    cfg = layer.get("config") or {}
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if shape is None and cfg.get("input_shape") is not None:
        shape = [None, *cfg["input_shape"]]
    if shape is None:
        raise GraftError(f"Keras input {layer_name(layer)} has no shape in the config",
                         "re-save the model after building it with a known input shape")
    return tuple(shape)


def layer_name(layer: dict) -> str:
    return kfile.layer_name(layer)


class KerasNet(nn.Module):
    """A Keras Functional or Sequential model, run in NCHW. Layers are submodules named after Keras's layers."""

    def __init__(self, config: dict, keras_version: str = "3", input_shapes: list[tuple] | None = None):
        super().__init__()
        self.keras_major = int(str(keras_version or "3").split(".")[0] or 3)
        layers = kfile.model_layers(config)
        self.model_class = config.get("class_name", "Functional")
        self.steps: list[tuple] = []  # (layer, module attr, input refs, called with a list?, node index)
        self.layer_of: dict[str, str] = {}  # submodule name -> Keras layer name (they differ only when torch forbids)
        self.flatten_feeds: dict[str, list] = {}  # Dense layer -> [H, W, C] of the Flatten it reads
        self._flattened: dict[tuple, list] = {}
        shapes: dict[tuple[str, int, int], tuple] = {}
        modules: dict[str, tuple[str, Any]] = {}
        if self.model_class == "Sequential":
            self._build_sequential(config, layers, input_shapes, shapes, modules)
        else:
            self._build_functional(config, layers, input_shapes, shapes, modules)
        self.keras_input_shapes = [shapes[r] for r in self.input_refs]
        self.keras_output_shapes = [shapes[r] for r in self.output_refs]
        # What nets.convert.summarize and users read: names, and input shapes in our (NCHW) layout.
        self.inputs = [r[0] for r in self.input_refs]
        self.outputs = list(self.output_names)
        self.train_outputs = list(self.output_names)  # Keras graphs have no training-only heads
        self.input_shapes = {r[0]: nchw_shape(s) for r, s in zip(self.input_refs, self.keras_input_shapes)}

    # Sequential: a chain; the input is the InputLayer or the recorded build shape.
    def _build_sequential(self, config, layers, input_shapes, shapes, modules):
        cfg = config.get("config") if isinstance(config.get("config"), dict) else {}
        body = [lyr for lyr in layers if lyr.get("class_name") != "InputLayer"]
        first = next((lyr for lyr in layers if lyr.get("class_name") == "InputLayer"), None)
        if input_shapes:
            shape = tuple(input_shapes[0])
        elif first is not None:
            shape = _input_shape(first)
        elif cfg.get("build_input_shape"):
            shape = tuple(cfg["build_input_shape"])
        elif body:
            shape = _input_shape(body[0])
        else:
            raise GraftError("the Keras Sequential model is empty")
        in_name = layer_name(first) if first is not None else "input"
        self.input_refs = [(in_name, 0, 0)]
        shapes[(in_name, 0, 0)] = shape
        prev = (in_name, 0, 0)
        for layer in body:
            name = layer_name(layer)
            self._add_step(layer, name, [prev], False, shapes, modules)
            prev = (name, 0, 0)
        self.output_refs = [prev]
        self.output_names = [prev[0]]

    def _build_functional(self, config, layers, input_shapes, shapes, modules):
        cfg = config.get("config", {})
        self.input_refs = _io_list(cfg.get("input_layers"))
        self.output_refs = _io_list(cfg.get("output_layers"))
        self.output_names = [o[0] for o in self.output_refs]
        by_name = {layer_name(lyr): lyr for lyr in layers}
        for i, ref in enumerate(self.input_refs):
            shapes[ref] = tuple(input_shapes[i]) if input_shapes else _input_shape(by_name[ref[0]])
        # Nodes in dependency order (config order is topological except for shared layers).
        pending = []
        for layer in layers:
            if layer.get("class_name") == "InputLayer":
                continue
            for ni, node in enumerate(layer.get("inbound_nodes") or []):
                refs, as_list = _node_inputs(node)
                if is_op(layer):  # the call's arguments, constants included
                    as_list = op_template(node, layer_name(layer), layer.get("class_name", ""))
                pending.append((layer, ni, refs, as_list))
        while pending:
            rest = []
            for layer, ni, refs, as_list in pending:
                if all(r in shapes for r in refs):
                    self._add_step(layer, layer_name(layer), refs, as_list, shapes, modules, ni)
                else:
                    rest.append((layer, ni, refs, as_list))
            if len(rest) == len(pending):
                missing = sorted({r[0] for _, _, refs, _ in rest for r in refs if r not in shapes})
                raise GraftError(f"the Keras model graph refers to tensors no layer produces ({', '.join(missing)})",
                                 "the model config is inconsistent; re-save the model")
            pending = rest

    def _add_step(self, layer, name, refs, as_list, shapes, modules, node_index=0):
        cls = layer.get("class_name", "")
        in_shapes = [shapes[r] for r in refs]
        if isinstance(as_list, list):  # a Keras operation: one module per call, arguments fixed
            attr = module_name(name if node_index == 0 else f"{name}_{node_index}")
            self.add_module(attr, Op(cls, as_list))
            out_shapes = [broadcast_shape(in_shapes)]
        elif name in modules:  # a shared layer called again: same module, new node
            attr, _ = modules[name]
            out_shapes = self._shape_again(attr, cls, layer, name, in_shapes)
        else:
            attr = module_name(name)
            if cls in kfile.MODEL_CLASSES or kfile.is_model(layer):
                mod = KerasNet(layer, str(self.keras_major), in_shapes)
                out_shapes = mod.keras_output_shapes
            else:
                mod, out = build_layer(cls, layer.get("config") or {}, name, in_shapes, self.keras_major)
                if isinstance(mod, Fn):
                    mod.what = cls  # print(net) shows the Keras class of function layers
                out_shapes = [out]
            self.add_module(attr, mod)
            self.layer_of[attr] = name
            modules[name] = (attr, out_shapes)
        for ti, s in enumerate(out_shapes):
            shapes[(name, node_index, ti)] = s
        self.steps.append((name, attr, refs, as_list, node_index))
        self._note_flatten(cls, name, refs, in_shapes, node_index, len(out_shapes), getattr(self, attr))

    def _note_flatten(self, cls, name, refs, in_shapes, node_index, n_out, mod):
        """Remember which Dense layers read a Flatten of an (H, W, C) tensor: their weight columns are in
        Keras's HWC order, which a PyTorch network flattening NCHW needs permuted (see chw_columns)."""
        src = self._flattened.get(refs[0]) if refs else None
        if cls == "Flatten" and len(in_shapes[0]) >= 3:
            src = list(in_shapes[0][1:])
        elif cls == "Dense" and src is not None:
            self.flatten_feeds[name] = src
            src = None
        elif cls not in IDENTITY | {"Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU"}:
            src = None
        if src is not None:
            for ti in range(n_out):
                self._flattened[(name, node_index, ti)] = src
        if isinstance(mod, KerasNet):
            self.flatten_feeds.update({f"{name}.{k}": v for k, v in mod.flatten_feeds.items()})

    def _shape_again(self, attr, cls, layer, name, in_shapes):
        if isinstance(getattr(self, attr), KerasNet):
            return KerasNet(layer, str(self.keras_major), in_shapes).keras_output_shapes
        return [build_layer(cls, layer.get("config") or {}, name, in_shapes, self.keras_major)[1]]

    def source_name(self, key: str) -> str:
        """The Keras reader's tensor name for one of our state_dict keys (`inner.conv.weight`)."""
        head, _, rest = key.partition(".")
        sub = getattr(self, head, None)
        if isinstance(sub, KerasNet):
            return f"{self.layer_of.get(head, head)}.{sub.source_name(rest)}"
        return f"{self.layer_of.get(head, head)}.{rest}" if rest else key

    def forward(self, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], dict):
            kwargs, args = args[0], ()
        if kwargs:
            try:
                args = tuple(kwargs[r[0]] for r in self.input_refs)
            except KeyError as e:
                raise GraftError(f"missing model input {e}", f"the inputs are {[r[0] for r in self.input_refs]}") \
                    from None
        if len(args) != len(self.input_refs):
            raise GraftError(f"the model takes {len(self.input_refs)} input(s) ({[r[0] for r in self.input_refs]}), "
                             f"got {len(args)}")
        for (name, *_), x, shape in zip(self.input_refs, args, self.keras_input_shapes):
            channels = shape[-1] if len(shape) >= 3 else None
            if channels and x.ndim == len(shape) and x.shape[1] != channels and x.shape[-1] == channels:
                raise GraftError(f"input {name!r} has shape {tuple(x.shape)}, channels last; converted Keras "
                                 f"models take channels first ({nchw_shape(shape)})", "pass x.permute(0, 3, 1, 2)")
        values = dict(zip(self.input_refs, args))
        for name, attr, refs, as_list, node_index in self.steps:
            xs = [values[r] for r in refs]
            mod = getattr(self, attr)
            if isinstance(mod, KerasNet):
                y = mod(*xs)
            else:
                y = mod(xs if isinstance(mod, Op) or as_list else xs[0])
            if isinstance(y, dict):
                y = list(y.values())
            for ti, t in enumerate(y if isinstance(y, (list, tuple)) else [y]):
                values[(name, node_index, ti)] = t
        outs = [values[r] for r in self.output_refs]
        if len(outs) == 1:
            return outs[0]
        return dict(zip(self.output_names, outs))


def flatten_feeds(config: dict, keras_version: str = "3") -> dict[str, list]:
    """Dense layer name -> [H, W, C] for every Dense that reads a Flatten of an image-shaped tensor.

    Keras flattens NHWC, so such a Dense's weight columns (as formats.keras reads them) are in HWC order:
    a hand-written PyTorch network that flattens NCHW needs them permuted with chw_columns."""
    with torch.device("meta"):  # shapes only: no weights are allocated
        return KerasNet(config, keras_version).flatten_feeds


def chw_columns(weight: torch.Tensor, hwc) -> torch.Tensor:
    """A Dense weight [out, H*W*C] with Keras's HWC column order -> PyTorch's CHW order."""
    h, w, c = hwc
    return weight.reshape(weight.shape[0], h, w, c).permute(0, 3, 1, 2).reshape(weight.shape[0], h * w * c)


# ---------------------------------------------------------------- converter contract

SUFFIXES = (".keras", ".h5", ".hdf5")


def claims(paths: list[Path]) -> bool:
    return bool(paths) and all(p.suffix.lower() in SUFFIXES for p in paths)


def check_supported(config: dict, source: str) -> None:
    bad = unsupported_layers(config)
    if bad:
        what = "; ".join(f"{cls} ({some(names)})"
                         for cls, names in bad.items())
        raise GraftError(f"{source}: graftkit cannot run these custom or unsupported Keras layers: {what}",
                         "graftkit cannot run custom layer code; write the architecture in PyTorch and move the "
                         "weights with `graft transplant`")


def build_net(config: dict, keras_version: str, source: str) -> KerasNet:
    """KerasNet(config), with a malformed config reported as one GraftError naming the file."""
    try:
        return KerasNet(config, keras_version)
    except GraftError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise GraftError(f"{source}: the Keras model config is malformed or of an unknown kind "
                         f"({type(e).__name__}: {str(e)[:80]})", "re-save the model with Keras") from None


def build_from_spec(spec: dict, *, trust: bool = False) -> nn.Module:
    config = spec.get("config")
    if not isinstance(config, dict):
        raise GraftError("the package's Keras spec has no model config", "re-convert the model")
    check_supported(config, "package")
    return build_net(config, spec.get("keras_version", "3"), "package")


def preprocessing_of(config: dict, net: KerasNet) -> dict[str, Any]:
    """What the model expects: its input size (NCHW) and the Rescaling/Normalization it does itself."""
    layers = kfile.flatten_config(config)
    in_model = []
    for name, info in layers.items():
        c = info["config"]
        if info["class_name"] == "Rescaling":
            in_model.append({"layer": name, "op": "rescaling", "scale": c.get("scale"), "offset": c.get("offset")})
        elif info["class_name"] == "Normalization":
            in_model.append({"layer": name, "op": "normalization", "mean": c.get("mean"),
                             "variance": c.get("variance"), "from_weights": c.get("mean") is None})
    shape = net.keras_input_shapes[0] if net.keras_input_shapes else None
    pre: dict[str, Any] = {"layout": "NCHW", "source_layout": "NHWC", "in_model": in_model}
    if shape and len(shape) == 4:
        pre["input_size"] = [shape[3], shape[1], shape[2]]
    first = in_model[0] if in_model else None
    if first and first["op"] == "rescaling" and isinstance(first["scale"], (int, float)) \
            and abs(first["scale"] * 255 - 1) < 1e-6:
        pre["pixel_range"] = 255.0  # the model divides by 255 itself: feed raw 0..255 pixels
    return pre


def _split(paths: list[Path]) -> tuple[Path, dict, str, Path]:
    """(architecture file, its config, Keras version, weights file) among the given paths."""
    with_config, without = [], []
    for p in paths:
        config, version = kfile.read_config(p)
        (with_config if config else without).append((p, config, version))
    if len(with_config) != 1 or len(without) > 1:
        raise GraftError(f"give one Keras model file (.keras or full-model .h5) and at most one weights file, "
                         f"got {len(with_config)} model file(s) and {len(without)} weights-only file(s)",
                         "a bare .weights.h5 has no architecture: pass the .keras/.h5 model beside it")
    arch, config, version = with_config[0]
    return arch, config, version, (without[0][0] if without else arch)


def convert(paths: list[Path], **kwargs) -> nn.Module:
    paths = [Path(p) for p in paths]
    arch, config, version, weights_file = _split(paths)
    check_supported(config, str(arch))
    net = build_net(config, version, str(arch))
    tensors = kfile.read_with_config(weights_file, config)
    state = net.state_dict()
    source = {k: net.source_name(k) for k in state}
    missing = [source[k] for k in state if source[k] not in tensors]
    unexpected = sorted(set(tensors) - set(source.values()))
    if missing or unexpected:
        raise GraftError(f"{weights_file}: the weights do not fit the model in {arch.name} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                         "pair the weights with the model they were saved from")
    for k, t in state.items():
        if tuple(tensors[source[k]].shape) != tuple(t.shape):
            raise GraftError(f"{weights_file}: tensor {source[k]} has shape {tuple(tensors[source[k]].shape)}, "
                             f"the model in {arch.name} needs {tuple(t.shape)}",
                             "pair the weights with their own model")
    net.load_state_dict({k: tensors[source[k]].to(state[k].dtype) for k in state}, strict=True)
    net.eval()
    spec = {"converter": "keras", "config": config, "keras_version": version}
    meta = make_meta(spec, preprocessing=preprocessing_of(config, net),
                     provenance={"sources": [str(p) for p in paths], "converter": "keras",
                                 "keras_version": version},
                     extra={"inputs": [r[0] for r in net.input_refs], "outputs": net.output_names})
    return attach(net, meta)
