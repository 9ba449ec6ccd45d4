"""Caffe layer types, each computing exactly what Caffe computes: torch modules for the layers
with parameters (CaffeLayer), plain callables for the others (CaffeOp).

A layer type is a class with
    attrs(lp)                -> dict      # its hyper-parameters, resolved from the parsed LayerParameter
                                          # (Caffe's defaults applied; JSON-able, stored in the package spec)
    blob_shapes(a, bottoms)  -> [shape]   # the Caffe blobs it expects, given the bottom shapes
    __init__(a, shapes, given=None)       # parameters allocated (torch.empty: no init work), or the
                                          # given tensors by name (a package's) taken as they are
    reset_parameters()                    # Caffe's fillers, for a prototxt without weights
    blob_tensors(a, blobs)   -> {name: t} # the caffemodel's arrays (checked and reshaped) as the tensors
                                          # to give the constructor
    forward(*bottoms)                     # one tensor, or a tuple when the layer has several tops
and is registered under its Caffe type with `@LAYERS.register("Type")`: the converter supports what
LAYERS holds. Parameter names follow PyTorch (weight, bias, running_mean, running_var) so that
`state_dict()` keys read `<layer>.weight`. Layouts: Caffe's convolution, deconvolution
and inner-product blobs already are PyTorch's (OIHW, [in, out/g, kh, kw], [out, in]).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError
from ..formats.caffe_proto import V1_TYPE_NAMES
from .registry import Registry

# ---------------------------------------------------------------- parsed-prototxt access
# The prototxt parser gives repeated fields as lists (a field seen once may also come
# as a scalar); a singular field given twice keeps its last value, as protobuf does.


def all_of(d: dict | None, key: str) -> list:
    v = (d or {}).get(key)
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def one(d: dict | None, key: str, default: Any = None) -> Any:
    v = (d or {}).get(key, default)
    if isinstance(v, (list, tuple)):
        return v[-1] if v else default
    return v


def sub(d: dict | None, key: str) -> dict:
    v = one(d, key, None)
    return v if isinstance(v, dict) else {}


def as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "t")
    return bool(v)


def enum(v: Any, names: tuple[str, ...], default: str) -> str:
    """An enum value given by name or by number -> its name."""
    if v is None:
        return default
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return names[v] if 0 <= v < len(names) else str(v)
    return str(v)


def _at_least(a: dict, **least: int) -> dict:
    """`a` with its geometry checked: each named value (or every value of a list) at least its minimum
    (a stride of 0 would divide by zero, a negative pad or kernel makes no layer)."""
    for key, lo in least.items():
        vals = a[key] if isinstance(a[key], list) else [a[key]]
        if any(v < lo for v in vals):
            raise GraftError(f"{key} {a[key]} must be at least {lo}", "the prototxt is corrupt")
    return a


def _spatial(p: dict, key: str, n: int, default: int) -> list[int]:
    """Caffe's kernel_size/stride/pad/dilation: repeated, or `_h`/`_w` for 2-D."""
    h, w = p.get(f"{key}_h"), p.get(f"{key}_w")
    if n == 2 and (h is not None or w is not None):
        return [int(one(p, f"{key}_h", default)), int(one(p, f"{key}_w", default))]
    vals = [int(v) for v in all_of(p, key)]
    if not vals:
        return [default] * n
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise GraftError(f"{key} has {len(vals)} values for {n} spatial axes")
    return vals


def _filler(d: dict) -> dict | None:
    return dict(d) if isinstance(d, dict) and d else None


def _fill(t: torch.Tensor, filler: dict | None, default: str) -> None:
    """Caffe's fillers (constant, gaussian, uniform, xavier, msra, bilinear); without one,
    `default` ('kaiming': PyTorch's default conv/linear init, or a constant '0'/'1'/'0.25')."""
    if t.is_meta:
        return
    with torch.no_grad():
        if filler is None:
            if default == "kaiming":
                nn.init.kaiming_uniform_(t.view(t.shape[0], -1) if t.dim() < 2 else t, a=math.sqrt(5))
            else:
                t.fill_(float(default))
            return
        kind = str(filler.get("type", "constant"))
        fan_in = t.numel() / t.shape[0] if t.dim() else 1
        fan_out = t.numel() / t.shape[1] if t.dim() > 1 else t.numel()
        norm = enum(filler.get("variance_norm"), ("FAN_IN", "FAN_OUT", "AVERAGE"), "FAN_IN")
        n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[norm]
        if kind == "constant":
            t.fill_(float(filler.get("value", 0.0)))
        elif kind == "gaussian":
            t.normal_(float(filler.get("mean", 0.0)), float(filler.get("std", 1.0)))
        elif kind == "uniform":
            t.uniform_(float(filler.get("min", 0.0)), float(filler.get("max", 1.0)))
        elif kind == "xavier":
            s = math.sqrt(3.0 / n)
            t.uniform_(-s, s)
        elif kind == "msra":
            t.normal_(0.0, math.sqrt(2.0 / n))
        elif kind == "bilinear" and t.dim() == 4:
            k = t.shape[-1]
            f = math.ceil(k / 2.0)
            c = (2 * f - 1 - f % 2) / (2.0 * f)
            r = 1 - torch.abs(torch.arange(k, dtype=t.dtype) / f - c)
            t.copy_((r[:, None] * r[None, :]).expand_as(t))
        else:
            nn.init.kaiming_uniform_(t.view(t.shape[0], -1) if t.dim() < 2 else t, a=math.sqrt(5))


# nn.Module.__init__ sets 17 attributes through super().__setattr__ one by one; a package
# load builds ~140 layers, so they copy a fresh module's attributes in one update instead
# (immutable values shared, every container a new empty one of the same type).
_FRESH = nn.Module().__dict__
_SHARED_ATTRS = {k: v for k, v in _FRESH.items() if not isinstance(v, (dict, set, list))}
_CONTAINER_ATTRS = tuple((k, type(v)) for k, v in _FRESH.items() if isinstance(v, (dict, set, list)))
assert not any(_FRESH[k] for k, _ in _CONTAINER_ATTRS)
del _FRESH


_PARAMETER_REGISTRATION_HOOKS = nn.modules.module._global_parameter_registration_hooks  # (a dict, changed in place)


class GivenMismatch(Exception):
    """The tensors given to a layer do not fit it (a package for another architecture)."""


def _given(given: dict[str, torch.Tensor], name: str, shape) -> torch.Tensor:
    """The given tensor `name` of this shape, taken out of `given` (what is left over does not fit)."""
    t = given.pop(name, None)
    if t is None or t.shape != tuple(shape):
        raise GivenMismatch(name)
    return t


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """A caffemodel array as a float32 tensor, sharing its memory when it can."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if not a.flags.writeable:  # torch must be able to train it in place
        a = a.copy()
    return torch.from_numpy(a)


class LayerType:
    """What every Caffe layer type states (class-level rules, the same for both bases below)."""
    KIND = "other"
    SAME_SHAPE = False  # one bottom, one top of the same shape (lets shape inference skip the layer)
    STATEFUL = False    # registered as a submodule even without parameters (behaves differently in training)
    blob_roles: tuple[str, ...] = ()

    @staticmethod
    def attrs(lp: dict) -> dict:
        return {}

    @staticmethod
    def blob_shapes(a: dict, bottoms: list[tuple] | None) -> list[tuple]:
        return []

    @classmethod
    def top_shapes(cls, a: dict, bottoms: list[tuple]) -> list[tuple] | None:
        """The tops' shapes computed directly, or None: then shape inference runs the layer on meta tensors."""
        return [bottoms[0]] if cls.SAME_SHAPE and len(bottoms) == 1 else None

    def reset_parameters(self) -> None:
        pass

    @classmethod
    def blob_tensors(cls, a: dict, blobs: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {role: _as_tensor(arr) for role, arr in zip(cls.blob_roles, blobs)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.a.items() if "filler" not in k)


class CaffeOp(LayerType):
    """Base of the layers without parameters: a plain callable, not a module. A net has many
    (GoogLeNet: 84 of its 142 layers) and they were never submodules, so a module's machinery
    would only make loading slower. Run them as `op(x)`; to see a blob, use `net.run(..., outputs=)`."""
    training = False

    def __init__(self, a: dict, shapes: list[tuple], given: dict[str, torch.Tensor] | None = None):
        self.a = a

    def __call__(self, *xs):
        return self.forward(*xs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class CaffeLayer(LayerType, nn.Module):
    """Base of the layers with parameters or training behaviour: torch modules."""

    def __init__(self, a: dict, shapes: list[tuple], given: dict[str, torch.Tensor] | None = None):
        """`given`: the layer's tensors by role (a package's or a caffemodel's); the layer takes
        them out of the dict, so that what is left over does not fit it."""
        d = self.__dict__  # nn.Module.__init__, cheaper (see _SHARED_ATTRS)
        d.update(_SHARED_ATTRS)
        for k, t in _CONTAINER_ATTRS:
            d[k] = t()
        d["a"] = a

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ costs a microsecond of type checks per call: plain values that
        # replace no parameter, buffer or submodule go straight into __dict__
        if isinstance(value, (torch.Tensor, nn.Module)) or name in self._parameters or name in self._buffers \
                or name in self._modules:
            super().__setattr__(name, value)
        else:
            object.__setattr__(self, name, value)

    def _params(self, given: Mapping[str, torch.Tensor] | None, **shapes: tuple | None) -> None:
        """Parameters of these shapes (None: the layer has none by that name): the `given` tensors
        (taken out of it by name) or else empty ones, registered straight into _parameters:
        register_parameter's checks cost microseconds per parameter."""
        hooks = _PARAMETER_REGISTRATION_HOOKS
        for name, shape in shapes.items():
            if shape is None:
                p = None
            elif given is not None:
                p = nn.Parameter(_given(given, name, shape))
            else:
                p = nn.Parameter(torch.empty(tuple(shape)))
            if hooks:
                self.register_parameter(name, p)
            else:
                self._parameters[name] = p


# Layer type -> its class, each registered where it is defined. Inputs, losses and Silence are the graph's.
LAYERS = Registry("Caffe", "layer type")


# ---------------------------------------------------------------- convolutions and inner product

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@LAYERS.register("Convolution")
class Convolution(CaffeLayer):
    KIND = "conv"
    blob_roles = ("weight", "bias")

    @staticmethod
    def attrs(lp):
        p = sub(lp, "convolution_param")
        if int(one(p, "axis", 1)) != 1:
            raise GraftError("only channel axis 1 is supported for convolutions")
        nd = max(2, len(all_of(p, "kernel_size")))
        return _at_least(
            {"num_output": int(one(p, "num_output", 0)), "bias_term": as_bool(one(p, "bias_term", True)),
             "kernel": _spatial(p, "kernel", nd, 0) if p.get("kernel_h") is not None
             else _spatial(p, "kernel_size", nd, 0),
             "stride": _spatial(p, "stride", nd, 1), "pad": _spatial(p, "pad", nd, 0),
             "dilation": _spatial(p, "dilation", nd, 1), "group": int(one(p, "group", 1)),
             "weight_filler": _filler(sub(p, "weight_filler")), "bias_filler": _filler(sub(p, "bias_filler"))},
            num_output=1, kernel=1, stride=1, pad=0, dilation=1, group=1)

    @staticmethod
    def blob_shapes(a, bottoms):
        c = bottoms[0][1]
        if c % a["group"] or a["num_output"] % a["group"]:
            raise GraftError(f"{c} input channels and num_output {a['num_output']} are not divisible "
                             f"by group {a['group']}")
        shapes = [(a["num_output"], c // a["group"], *a["kernel"])]
        return shapes + [(a["num_output"],)] if a["bias_term"] else shapes

    @staticmethod
    def top_shapes(a, bottoms):
        x = bottoms[0]
        if len(x) != 2 + len(a["kernel"]):
            return None
        out = [(n + 2 * p - (d * (k - 1) + 1)) // s + 1
               for n, k, s, p, d in zip(x[2:], a["kernel"], a["stride"], a["pad"], a["dilation"])]
        if min(out) < 1:
            raise GraftError(f"input {list(x)} is smaller than the kernel {a['kernel']}")
        return [(x[0], a["num_output"], *out)]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        self._params(given, weight=shapes[0], bias=shapes[1] if a["bias_term"] else None)
        conv = _CONVS.get(len(a["kernel"]))
        if conv is None:
            raise GraftError(f"{len(a['kernel'])}-D convolutions are not supported")
        # (plain values straight into __dict__: a package load builds dozens of these)
        self.__dict__.update(_conv=conv, _args=(tuple(a["stride"]), tuple(a["pad"]), tuple(a["dilation"]),
                                                a["group"]))

    def reset_parameters(self):
        _fill(self.weight, self.a["weight_filler"], "kaiming")
        if self.bias is not None:
            _fill(self.bias, self.a["bias_filler"], "0")

    def forward(self, x):
        return self._conv(x, self.weight, self.bias, *self._args)


@LAYERS.register("Deconvolution")
class Deconvolution(Convolution):
    KIND = "conv_transpose"

    @staticmethod
    def blob_shapes(a, bottoms):
        c = bottoms[0][1]
        if c % a["group"] or a["num_output"] % a["group"]:
            raise GraftError(f"{c} input channels and num_output {a['num_output']} are not divisible "
                             f"by group {a['group']}")
        shapes = [(c, a["num_output"] // a["group"], *a["kernel"])]
        return shapes + [(a["num_output"],)] if a["bias_term"] else shapes

    @staticmethod
    def top_shapes(a, bottoms):
        x = bottoms[0]
        if len(x) != 2 + len(a["kernel"]):
            return None
        out = [s * (n - 1) + d * (k - 1) + 1 - 2 * p
               for n, k, s, p, d in zip(x[2:], a["kernel"], a["stride"], a["pad"], a["dilation"])]
        if min(out) < 1:
            raise GraftError(f"output size {out} is not positive")
        return [(x[0], a["num_output"], *out)]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        nd = len(a["kernel"])
        self._conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
        s, p, d, g = self._args
        self._args = (s, p, 0, g, d)  # conv_transpose: stride, padding, output_padding, groups, dilation


@LAYERS.register("InnerProduct")
class InnerProduct(CaffeLayer):
    KIND = "linear"
    blob_roles = ("weight", "bias")

    @staticmethod
    def attrs(lp):
        p = sub(lp, "inner_product_param")
        return {"num_output": int(one(p, "num_output", 0)), "bias_term": as_bool(one(p, "bias_term", True)),
                "axis": int(one(p, "axis", 1)), "transpose": as_bool(one(p, "transpose", False)),
                "weight_filler": _filler(sub(p, "weight_filler")), "bias_filler": _filler(sub(p, "bias_filler"))}

    @staticmethod
    def blob_shapes(a, bottoms):
        shape = bottoms[0]
        axis = a["axis"] % len(shape)
        k = int(np.prod(shape[axis:], dtype=np.int64))
        w = (k, a["num_output"]) if a["transpose"] else (a["num_output"], k)
        return [w, (a["num_output"],)] if a["bias_term"] else [w]

    @staticmethod
    def top_shapes(a, bottoms):
        x = bottoms[0]
        return [(*x[:a["axis"] % len(x)], a["num_output"])]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        w = shapes[0][::-1] if a["transpose"] else shapes[0]  # kept as [out, in], PyTorch's layout
        self._params(given, weight=w, bias=shapes[1] if a["bias_term"] else None)
        self.axis = a["axis"]

    def reset_parameters(self):
        _fill(self.weight, self.a["weight_filler"], "kaiming")
        if self.bias is not None:
            _fill(self.bias, self.a["bias_filler"], "0")

    @classmethod
    def blob_tensors(cls, a, blobs):
        w = blobs[0].T if a["transpose"] else blobs[0]
        return super().blob_tensors(a, [np.ascontiguousarray(w), *blobs[1:]])

    def forward(self, x):
        axis = self.axis % x.dim()
        if axis != x.dim() - 1:
            x = x.flatten(axis)
        return F.linear(x, self.weight, self.bias)


# ---------------------------------------------------------------- pooling

@LAYERS.register("Pooling")
class Pooling(CaffeOp):
    """MAX/AVE pooling with Caffe's output size: rounded up by default (round_mode CEIL),
    dropping a last window that would start in the padding; AVE divides by the window
    clipped to the padded input. PyTorch's ceil_mode/count_include_pad compute exactly
    this when pad <= kernel/2; otherwise the general path below is used."""

    @staticmethod
    def attrs(lp):
        p = sub(lp, "pooling_param")
        pool = enum(one(p, "pool"), ("MAX", "AVE", "STOCHASTIC"), "MAX")
        if pool not in ("MAX", "AVE"):
            raise GraftError(f"Pooling method {pool} is not supported (only MAX and AVE)")
        glob = as_bool(one(p, "global_pooling", False))
        kernel = [0, 0] if glob else (_spatial(p, "kernel", 2, 0) if p.get("kernel_h") is not None
                                      else _spatial(p, "kernel_size", 2, 0))
        if not glob and min(kernel) <= 0:
            raise GraftError("pooling_param has no kernel_size", "give kernel_size or global_pooling: true")
        return _at_least({"pool": pool, "global": glob, "kernel": kernel,
                          "stride": _spatial(p, "stride", 2, 1), "pad": _spatial(p, "pad", 2, 0),
                          "ceil": enum(one(p, "round_mode"), ("CEIL", "FLOOR"), "CEIL") == "CEIL"},
                         stride=1, pad=0)

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        self.k, self.s, self.p = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["pad"])
        self.native = all(2 * p <= k for p, k in zip(self.p, self.k))
        self._counts: dict = {}

    @staticmethod
    def top_shapes(a, bottoms):
        x = bottoms[0]
        if len(x) != 4:
            return None
        if a["global"]:
            return [(*x[:2], 1, 1)]
        out = [Pooling.size(n, k, s, p, a["ceil"]) for n, k, s, p in zip(x[2:], a["kernel"], a["stride"], a["pad"])]
        if min(out) < 1:
            raise GraftError(f"input {list(x)} is smaller than the pooling window {a['kernel']}")
        return [(*x[:2], *out)]

    @staticmethod
    def size(n: int, k: int, s: int, p: int, ceil: bool) -> int:
        """Caffe's pooled size: rounded up (or down), minus a last window that would start in the padding."""
        out = (math.ceil if ceil else math.floor)((n + 2 * p - k) / s) + 1
        if p and (out - 1) * s >= n + p:
            out -= 1
        return out

    def forward(self, x):
        if self.a["global"]:
            return x.amax((-2, -1), keepdim=True) if self.a["pool"] == "MAX" else x.mean((-2, -1), keepdim=True)
        if self.native:
            if self.a["pool"] == "MAX":
                return F.max_pool2d(x, self.k, self.s, self.p, ceil_mode=self.a["ceil"])
            return F.avg_pool2d(x, self.k, self.s, self.p, ceil_mode=self.a["ceil"], count_include_pad=True)
        return self._general(x)

    def _general(self, x):
        h, w = x.shape[-2:]
        oh, ow = (self.size(n, k, s, p, self.a["ceil"]) for n, k, s, p in zip((h, w), self.k, self.s, self.p))
        ph, pw = self.p
        # pad so that exactly oh x ow windows fit (negative padding crops)
        right = (ow - 1) * self.s[1] + self.k[1] - w - pw
        bottom = (oh - 1) * self.s[0] + self.k[0] - h - ph
        if self.a["pool"] == "MAX":
            y = F.pad(x, (pw, right, ph, bottom), value=float("-inf"))
            return F.max_pool2d(y, self.k, self.s)
        y = F.pad(x, (pw, right, ph, bottom))
        sums = F.avg_pool2d(y, self.k, self.s, divisor_override=1)
        key = (h, w, x.device, x.dtype)
        if key not in self._counts:
            def sizes(n, o, k, s, p):
                start = torch.arange(o) * s - p
                return (torch.clamp(start + k, max=n + p) - start).to(torch.float64)
            c = sizes(h, oh, self.k[0], self.s[0], ph)[:, None] * sizes(w, ow, self.k[1], self.s[1], pw)[None, :]
            self._counts[key] = c.to(device=x.device, dtype=x.dtype)
        return sums / self._counts[key]


# ---------------------------------------------------------------- element-wise activations

@LAYERS.register("ReLU")
class ReLU(CaffeOp):
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        return {"negative_slope": float(one(sub(lp, "relu_param"), "negative_slope", 0.0))}

    def forward(self, x):
        s = self.a["negative_slope"]
        return F.relu(x) if s == 0 else F.leaky_relu(x, s)


@LAYERS.register("PReLU")
class PReLU(CaffeLayer):
    SAME_SHAPE = True
    KIND = "prelu"
    blob_roles = ("weight",)

    @staticmethod
    def attrs(lp):
        p = sub(lp, "prelu_param")
        return {"channel_shared": as_bool(one(p, "channel_shared", False)), "filler": _filler(sub(p, "filler"))}

    @staticmethod
    def blob_shapes(a, bottoms):
        return [()] if a["channel_shared"] else [(bottoms[0][1],)]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        self._params(given, weight=(1,) if a["channel_shared"] else shapes[0])

    def reset_parameters(self):
        _fill(self.weight, self.a["filler"], "0.25")

    @classmethod
    def blob_tensors(cls, a, blobs):
        return super().blob_tensors(a, [blobs[0].reshape((1,) if a["channel_shared"] else blobs[0].shape)])

    def forward(self, x):
        return F.prelu(x, self.weight)


@LAYERS.register("ELU")
class ELU(CaffeOp):
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        return {"alpha": float(one(sub(lp, "elu_param"), "alpha", 1.0))}

    def forward(self, x):
        return F.elu(x, self.a["alpha"])


@LAYERS.register("Sigmoid")
class Sigmoid(CaffeOp):
    SAME_SHAPE = True

    def forward(self, x):
        return torch.sigmoid(x)


@LAYERS.register("TanH")
class TanH(CaffeOp):
    SAME_SHAPE = True

    def forward(self, x):
        return torch.tanh(x)


@LAYERS.register("AbsVal")
class AbsVal(CaffeOp):
    SAME_SHAPE = True

    def forward(self, x):
        return torch.abs(x)


@LAYERS.register("BNLL")
class BNLL(CaffeOp):
    SAME_SHAPE = True

    def forward(self, x):  # log(1 + exp(x)), computed without overflow as Caffe does
        return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


@LAYERS.register("Swish")
class Swish(CaffeOp):
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        return {"beta": float(one(sub(lp, "swish_param"), "beta", 1.0))}

    def forward(self, x):
        return x * torch.sigmoid(self.a["beta"] * x)


@LAYERS.register("Power")
class Power(CaffeOp):
    """(shift + scale * x) ^ power"""
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "power_param")
        return {"power": float(one(p, "power", 1.0)), "scale": float(one(p, "scale", 1.0)),
                "shift": float(one(p, "shift", 0.0))}

    def forward(self, x):
        a = self.a
        y = x * a["scale"] if a["scale"] != 1 else x
        y = y + a["shift"] if a["shift"] != 0 else y
        return y if a["power"] == 1 else torch.pow(y, a["power"])


@LAYERS.register("Exp")
class Exp(CaffeOp):
    """base ^ (shift + scale * x), base -1 meaning e."""
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "exp_param")
        return {"base": float(one(p, "base", -1.0)), "scale": float(one(p, "scale", 1.0)),
                "shift": float(one(p, "shift", 0.0))}

    def forward(self, x):
        a = self.a
        log_base = 1.0 if a["base"] == -1 else math.log(a["base"])
        outer = 1.0 if a["shift"] == 0 else math.exp(log_base * a["shift"])
        y = torch.exp(x * (log_base * a["scale"]))
        return y * outer if outer != 1 else y


@LAYERS.register("Log")
class Log(CaffeOp):
    """log_base(shift + scale * x), base -1 meaning e."""
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "log_param")
        return {"base": float(one(p, "base", -1.0)), "scale": float(one(p, "scale", 1.0)),
                "shift": float(one(p, "shift", 0.0))}

    def forward(self, x):
        a = self.a
        y = torch.log(x * a["scale"] + a["shift"])
        return y if a["base"] == -1 else y * (1.0 / math.log(a["base"]))


@LAYERS.register("Threshold")
class Threshold(CaffeOp):
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        return {"threshold": float(one(sub(lp, "threshold_param"), "threshold", 0.0))}

    def forward(self, x):
        return (x > self.a["threshold"]).to(x.dtype)


@LAYERS.register("Clip")
class Clip(CaffeOp):
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "clip_param")
        if "min" not in p or "max" not in p:
            raise GraftError("clip_param needs min and max")
        return {"min": float(one(p, "min")), "max": float(one(p, "max"))}

    def forward(self, x):
        return torch.clamp(x, self.a["min"], self.a["max"])


@LAYERS.register("Dropout")
class Dropout(CaffeLayer):
    SAME_SHAPE = True
    STATEFUL = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "dropout_param")
        return {"ratio": float(one(p, "dropout_ratio", 0.5)), "scale_train": as_bool(one(p, "scale_train", True))}

    def forward(self, x):
        r = self.a["ratio"]
        if self.a["scale_train"]:
            return F.dropout(x, r, self.training)
        # Caffe's scale_train: false keeps training activations unscaled and scales at test time
        return F.dropout(x, r, True) * (1 - r) if self.training else x * (1 - r)


# ---------------------------------------------------------------- normalisation

@LAYERS.register("LRN")
class LRN(CaffeOp):
    """ACROSS_CHANNELS: x / (k + alpha/n * sum of squares over n channels)^beta.
    WITHIN_CHANNEL: x / (1 + alpha/n^2 * sum over an n x n window)^beta (Caffe ignores k here)."""
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "lrn_param")
        a = {"local_size": int(one(p, "local_size", 5)), "alpha": float(one(p, "alpha", 1.0)),
             "beta": float(one(p, "beta", 0.75)), "k": float(one(p, "k", 1.0)),
             "region": enum(one(p, "norm_region"), ("ACROSS_CHANNELS", "WITHIN_CHANNEL"), "ACROSS_CHANNELS")}
        if a["local_size"] % 2 == 0:
            raise GraftError(f"LRN local_size {a['local_size']} must be odd (Caffe refuses even sizes)")
        return a

    def forward(self, x):
        a = self.a
        n = a["local_size"]
        if a["region"] == "ACROSS_CHANNELS":
            return F.local_response_norm(x, n, a["alpha"], a["beta"], a["k"])
        avg = F.avg_pool2d(x * x, n, 1, (n - 1) // 2, count_include_pad=True)
        return x * torch.pow(1 + a["alpha"] * avg, -a["beta"])


@LAYERS.register("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe's BatchNorm: no affine part (a Scale layer follows); the caffemodel keeps
    sums and a scale factor, folded here into running_mean/running_var. Without an explicit
    use_global_stats the module follows train()/eval() like torch's BatchNorm."""
    SAME_SHAPE = True
    KIND = "batchnorm"

    @staticmethod
    def attrs(lp):
        p = sub(lp, "batch_norm_param")
        ugs = one(p, "use_global_stats")
        return {"use_global_stats": None if ugs is None else as_bool(ugs), "eps": float(one(p, "eps", 1e-5)),
                "momentum": 1.0 - float(one(p, "moving_average_fraction", 0.999))}

    @staticmethod
    def blob_shapes(a, bottoms):
        c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
        return [(c,), (c,), (1,)]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        for name, shape in (("running_mean", shapes[0]), ("running_var", shapes[1])):
            self.register_buffer(name, torch.empty(shape) if given is None
                                 else _given(given, name, shape).detach())
        self.use_global_stats = a["use_global_stats"]

    def reset_parameters(self):
        if not self.running_mean.is_meta:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)

    @classmethod
    def blob_tensors(cls, a, blobs):
        f = float(np.asarray(blobs[2]).reshape(-1)[0]) if len(blobs) > 2 else 1.0
        f = 0.0 if f == 0 else 1.0 / f
        return {name: torch.from_numpy(np.asarray(b, dtype=np.float32) * np.float32(f))
                for name, b in (("running_mean", blobs[0]), ("running_var", blobs[1]))}

    def forward(self, x):
        batch_stats = self.training if self.use_global_stats is None else not self.use_global_stats
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, batch_stats,
                            self.a["momentum"], self.a["eps"])


def _broadcast_shape(x: torch.Tensor, axis: int, shape) -> tuple:
    """Shape that lines `shape` up with x's axes starting at `axis` (Caffe's Scale/Bias)."""
    axis = axis % x.dim() if x.dim() else 0
    return (1,) * axis + tuple(shape) + (1,) * (x.dim() - axis - len(shape))


@LAYERS.register("Scale")
class Scale(CaffeLayer):
    """y = x * scale (+ bias), scale learned (one bottom) or given by the second bottom."""
    KIND = "scale"
    blob_roles = ("weight", "bias")

    @staticmethod
    def attrs(lp):
        p = sub(lp, "scale_param")
        return {"axis": int(one(p, "axis", 1)), "num_axes": int(one(p, "num_axes", 1)),
                "bias_term": as_bool(one(p, "bias_term", False)), "two_bottoms": len(all_of(lp, "bottom")) > 1,
                "filler": _filler(sub(p, "filler")), "bias_filler": _filler(sub(p, "bias_filler"))}

    @staticmethod
    def param_shape(a, bottoms):
        if a["two_bottoms"]:
            return None
        shape = bottoms[0]
        axis = a["axis"] % len(shape) if shape else 0
        end = len(shape) if a["num_axes"] == -1 else axis + a["num_axes"]
        return tuple(shape[axis:end])

    @classmethod
    def blob_shapes(cls, a, bottoms):
        ps = cls.param_shape(a, bottoms)
        if ps is None:  # the scale is the second bottom: only the bias is learned
            b1 = bottoms[1]
            return [tuple(b1)] if a["bias_term"] else []
        return [ps, ps] if a["bias_term"] else [ps]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        self._params(given, weight=None if a["two_bottoms"] else shapes[0],
                     bias=shapes[-1] if a["bias_term"] else None)
        if a["two_bottoms"]:
            self.blob_roles = ("bias",)

    @classmethod
    def blob_tensors(cls, a, blobs):
        roles = ("bias",) if a["two_bottoms"] else cls.blob_roles
        return {role: _as_tensor(arr) for role, arr in zip(roles, blobs)}

    def reset_parameters(self):
        if self.weight is not None:
            _fill(self.weight, self.a["filler"], "1")
        if self.bias is not None:
            _fill(self.bias, self.a["bias_filler"], "0")

    def forward(self, x, scale=None):
        w = self.weight if scale is None else scale
        y = x * w.reshape(_broadcast_shape(x, self.a["axis"], w.shape))
        if self.bias is not None:
            y = y + self.bias.reshape(_broadcast_shape(x, self.a["axis"], self.bias.shape))
        return y


@LAYERS.register("Bias")
class Bias(CaffeLayer):
    KIND = "bias"
    blob_roles = ("bias",)

    @staticmethod
    def attrs(lp):
        p = sub(lp, "bias_param")
        return {"axis": int(one(p, "axis", 1)), "num_axes": int(one(p, "num_axes", 1)),
                "two_bottoms": len(all_of(lp, "bottom")) > 1, "filler": _filler(sub(p, "filler"))}

    @staticmethod
    def blob_shapes(a, bottoms):
        if a["two_bottoms"]:
            return []
        shape = bottoms[0]
        axis = a["axis"] % len(shape) if shape else 0
        end = len(shape) if a["num_axes"] == -1 else axis + a["num_axes"]
        return [tuple(shape[axis:end])]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        self._params(given, bias=None if a["two_bottoms"] else shapes[0])

    def reset_parameters(self):
        if self.bias is not None:
            _fill(self.bias, self.a["filler"], "0")

    def forward(self, x, bias=None):
        b = self.bias if bias is None else bias
        return x + b.reshape(_broadcast_shape(x, self.a["axis"], b.shape))


# ---------------------------------------------------------------- blob plumbing

@LAYERS.register("Eltwise")
class Eltwise(CaffeOp):
    @staticmethod
    def attrs(lp):
        p = sub(lp, "eltwise_param")
        op = enum(one(p, "operation"), ("PROD", "SUM", "MAX"), "SUM")
        coeff = [float(c) for c in all_of(p, "coeff")]
        n = len(all_of(lp, "bottom"))
        if coeff and len(coeff) != n:
            raise GraftError(f"Eltwise has {len(coeff)} coeff values for {n} bottoms", "give one coeff per bottom")
        if coeff and op != "SUM":
            raise GraftError("Eltwise coeff is only allowed with operation SUM")
        return {"operation": op, "coeff": coeff or None}

    @staticmethod
    def top_shapes(a, bottoms):
        if any(b != bottoms[0] for b in bottoms):
            raise GraftError(f"Eltwise needs equal shapes, got {[list(b) for b in bottoms]}")
        return [bottoms[0]]

    def forward(self, *xs):
        op, coeff = self.a["operation"], self.a["coeff"]
        if op == "SUM":
            if coeff is None:
                y = xs[0]
                for x in xs[1:]:
                    y = y + x
                return y
            y = xs[0] * coeff[0] if coeff[0] != 1 else xs[0]
            for c, x in zip(coeff[1:], xs[1:]):
                y = y + x * c if c != 1 else y + x
            return y
        y = xs[0]
        for x in xs[1:]:
            y = y * x if op == "PROD" else torch.maximum(y, x)
        return y


@LAYERS.register("Concat")
class Concat(CaffeOp):
    @staticmethod
    def attrs(lp):
        p = sub(lp, "concat_param")
        return {"axis": int(one(p, "axis", one(p, "concat_dim", 1)))}

    @staticmethod
    def top_shapes(a, bottoms):
        nd = len(bottoms[0])
        axis = a["axis"] % nd
        if any(len(b) != nd or b[:axis] != bottoms[0][:axis] or b[axis + 1:] != bottoms[0][axis + 1:]
               for b in bottoms):
            raise GraftError(f"Concat along axis {a['axis']} needs the other axes equal, "
                             f"got {[list(b) for b in bottoms]}")
        return [(*bottoms[0][:axis], sum(b[axis] for b in bottoms), *bottoms[0][axis + 1:])]

    def forward(self, *xs):
        return torch.cat(xs, self.a["axis"]) if len(xs) > 1 else xs[0]


@LAYERS.register("Slice")
class Slice(CaffeOp):
    @staticmethod
    def attrs(lp):
        p = sub(lp, "slice_param")
        return {"axis": int(one(p, "axis", one(p, "slice_dim", 1))),
                "slice_point": [int(v) for v in all_of(p, "slice_point")], "tops": len(all_of(lp, "top"))}

    def forward(self, x):
        a = self.a
        axis = a["axis"] % x.dim()
        n = x.shape[axis]
        if a["slice_point"]:
            edges = [0, *a["slice_point"], n]
        else:
            if n % a["tops"]:
                raise GraftError(f"Slice: axis size {n} does not split into {a['tops']} equal parts")
            edges = [i * (n // a["tops"]) for i in range(a["tops"] + 1)]
        return tuple(x.narrow(axis, lo, hi - lo) for lo, hi in zip(edges[:-1], edges[1:]))


@LAYERS.register("Split")
class Split(CaffeOp):
    @staticmethod
    def attrs(lp):
        return {"tops": len(all_of(lp, "top"))}

    @staticmethod
    def top_shapes(a, bottoms):
        return [bottoms[0]] * a["tops"]

    def forward(self, x):
        return (x,) * self.a["tops"]


@LAYERS.register("Flatten")
class Flatten(CaffeOp):
    @staticmethod
    def attrs(lp):
        p = sub(lp, "flatten_param")
        return {"axis": int(one(p, "axis", 1)), "end_axis": int(one(p, "end_axis", -1))}

    def forward(self, x):
        return x.flatten(self.a["axis"], self.a["end_axis"])


@LAYERS.register("Reshape")
class Reshape(CaffeOp):
    """dims of `shape` replace input axes [axis, axis+num_axes); 0 copies, -1 is inferred."""

    @staticmethod
    def attrs(lp):
        p = sub(lp, "reshape_param")
        dims = [int(d) for d in all_of(sub(p, "shape"), "dim")]
        if dims.count(-1) > 1:
            raise GraftError("Reshape shape has more than one -1")
        return {"dims": dims, "axis": int(one(p, "axis", 0)), "num_axes": int(one(p, "num_axes", -1))}

    def forward(self, x):
        a, shape = self.a, list(x.shape)
        start = a["axis"] if a["axis"] >= 0 else len(shape) + a["axis"] + 1
        end = len(shape) if a["num_axes"] == -1 else start + a["num_axes"]
        new = [shape[start + i] if d == 0 else d for i, d in enumerate(a["dims"])]
        return x.reshape(shape[:start] + new + shape[end:])


@LAYERS.register("Softmax")
class Softmax(CaffeOp):
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        return {"axis": int(one(sub(lp, "softmax_param"), "axis", 1))}

    def forward(self, x):
        return F.softmax(x, self.a["axis"])


@LAYERS.register("Crop")
class Crop(CaffeOp):
    """bottom[0] cropped to bottom[1]'s shape on the axes from `axis` on, at `offset`."""

    @staticmethod
    def attrs(lp):
        p = sub(lp, "crop_param")
        return {"axis": int(one(p, "axis", 2)), "offset": [int(v) for v in all_of(p, "offset")]}

    def forward(self, x, ref):
        axis = self.a["axis"] % x.dim()
        offs = self.a["offset"]
        for i, d in enumerate(range(axis, x.dim())):
            o = 0 if not offs else offs[0] if len(offs) == 1 else offs[i]
            if o + ref.shape[d] > x.shape[d]:
                raise GraftError(f"Crop: offset {o} + size {ref.shape[d]} exceeds axis {d} of size {x.shape[d]}")
            x = x.narrow(d, o, ref.shape[d])
        return x


@LAYERS.register("ArgMax")
class ArgMax(CaffeOp):
    @staticmethod
    def attrs(lp):
        p = sub(lp, "argmax_param")
        ax = one(p, "axis")
        a = {"top_k": int(one(p, "top_k", 1)), "out_max_val": as_bool(one(p, "out_max_val", False)),
             "axis": None if ax is None else int(ax)}
        return a

    def forward(self, x):
        a = self.a
        if a["axis"] is None:
            v, i = x.flatten(1).topk(a["top_k"], 1)
            i = i.to(x.dtype).unsqueeze(1)
            return torch.cat([i, v.unsqueeze(1)], 1) if a["out_max_val"] else i
        v, i = x.topk(a["top_k"], a["axis"])
        return v if a["out_max_val"] else i.to(x.dtype)


@LAYERS.register("MVN")
class MVN(CaffeOp):
    """Mean-variance normalisation per channel (or across channels): (x - mean) / (std + eps)."""
    SAME_SHAPE = True

    @staticmethod
    def attrs(lp):
        p = sub(lp, "mvn_param")
        return {"normalize_variance": as_bool(one(p, "normalize_variance", True)),
                "across_channels": as_bool(one(p, "across_channels", False)), "eps": float(one(p, "eps", 1e-9))}

    def forward(self, x):
        dims = tuple(range(1 if self.a["across_channels"] else 2, x.dim()))
        y = x - x.mean(dims, keepdim=True)
        if not self.a["normalize_variance"]:
            return y
        return y / (torch.sqrt((y * y).mean(dims, keepdim=True)) + self.a["eps"])


@LAYERS.register("Reduction")
class Reduction(CaffeOp):
    """SUM / ASUM / SUMSQ / MEAN over all axes from `axis` on, times coeff."""

    @staticmethod
    def attrs(lp):
        p = sub(lp, "reduction_param")
        return {"operation": enum(one(p, "operation"), ("", "SUM", "ASUM", "SUMSQ", "MEAN"), "SUM"),
                "axis": int(one(p, "axis", 0)), "coeff": float(one(p, "coeff", 1.0))}

    def forward(self, x):
        a = self.a
        axis = a["axis"] % x.dim() if x.dim() else 0
        y = x.flatten(axis) if axis < x.dim() else x.unsqueeze(-1)
        y = {"SUM": y, "ASUM": y.abs(), "SUMSQ": y * y, "MEAN": y}[a["operation"]]
        y = y.mean(-1) if a["operation"] == "MEAN" else y.sum(-1)
        return y * a["coeff"] if a["coeff"] != 1 else y


@LAYERS.register("Tile")
class Tile(CaffeOp):
    @staticmethod
    def attrs(lp):
        p = sub(lp, "tile_param")
        return {"axis": int(one(p, "axis", 1)), "tiles": int(one(p, "tiles", 1))}

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.a["axis"] % x.dim()] = self.a["tiles"]
        return x.repeat(reps)


@LAYERS.register("Embed")
class Embed(CaffeLayer):
    """A lookup table: integer-valued inputs in [0, input_dim) pick rows of the [input_dim, num_output] weight."""
    KIND = "embedding"
    blob_roles = ("weight", "bias")

    @staticmethod
    def attrs(lp):
        p = sub(lp, "embed_param")
        return {"num_output": int(one(p, "num_output", 0)), "input_dim": int(one(p, "input_dim", 0)),
                "bias_term": as_bool(one(p, "bias_term", True)),
                "weight_filler": _filler(sub(p, "weight_filler")), "bias_filler": _filler(sub(p, "bias_filler"))}

    @staticmethod
    def blob_shapes(a, bottoms):
        w = (a["input_dim"], a["num_output"])
        return [w, (a["num_output"],)] if a["bias_term"] else [w]

    @staticmethod
    def top_shapes(a, bottoms):
        return [(*bottoms[0], a["num_output"])]

    def __init__(self, a, shapes, given=None):
        super().__init__(a, shapes, given)
        self._params(given, weight=shapes[0], bias=shapes[1] if a["bias_term"] else None)

    def reset_parameters(self):
        _fill(self.weight, self.a["weight_filler"], "kaiming")
        if self.bias is not None:
            _fill(self.bias, self.a["bias_filler"], "0")

    def forward(self, x):
        y = F.embedding(x.long(), self.weight)
        return y + self.bias if self.bias is not None else y



DATA_LAYERS = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData",
               "AnnotatedData", "VideoData")
LOSS_LAYERS = ("SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
               "MultinomialLogisticLoss", "ContrastiveLoss", "MultiBoxLoss", "SmoothL1Loss")
METRIC_LAYERS = ("Accuracy",)
SINK_LAYERS = ("Silence", "HDF5Output")

# Legacy V1 `layers { type: ENUM }` -> the V2 type string: formats.caffe_proto.V1_TYPE_NAMES.
V1_TYPE_NUMBERS = {0: "NONE", 35: "ABSVAL", 1: "ACCURACY", 30: "ARGMAX", 2: "BNLL", 3: "CONCAT",
                   37: "CONTRASTIVE_LOSS", 4: "CONVOLUTION", 5: "DATA", 39: "DECONVOLUTION", 6: "DROPOUT",
                   32: "DUMMY_DATA", 7: "EUCLIDEAN_LOSS", 25: "ELTWISE", 38: "EXP", 8: "FLATTEN",
                   9: "HDF5_DATA", 10: "HDF5_OUTPUT", 28: "HINGE_LOSS", 11: "IM2COL", 12: "IMAGE_DATA",
                   13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT", 15: "LRN", 29: "MEMORY_DATA",
                   16: "MULTINOMIAL_LOGISTIC_LOSS", 34: "MVN", 17: "POOLING", 26: "POWER", 18: "RELU",
                   19: "SIGMOID", 27: "SIGMOID_CROSS_ENTROPY_LOSS", 36: "SILENCE", 20: "SOFTMAX",
                   21: "SOFTMAX_LOSS", 22: "SPLIT", 33: "SLICE", 23: "TANH", 24: "WINDOW_DATA", 31: "THRESHOLD"}


def v2_type(t: Any) -> str:
    """A layer's type as the V2 string, whether written as V2 text or a V1 enum (name or number)."""
    if isinstance(t, int) and not isinstance(t, bool):
        t = V1_TYPE_NUMBERS.get(t, str(t))
    t = str(t)
    return V1_TYPE_NAMES.get(t, t)
