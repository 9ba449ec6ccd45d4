"""MXNet op converters: one registered function per op (or family of aliases), each returning the
node's Step: its weights as a module (named after the node in the converted net) and how it runs.

    @OPS.register("Pooling", allow={"pool_type": one_of(None, "max", "avg", "sum"), ...})
    def pooling(node: Node) -> Step:
        return layer(Pool(node.attrs))          # an op with state or weights: a module on its data input

    @OPS.register("clip")
    def clip(node: Node) -> Step:
        lo, hi = float(node.attrs["a_min"]), float(node.attrs["a_max"])
        return pure(lambda xs: xs[0].clamp(lo, hi))   # an op without: a function of its inputs

`allow` maps an attribute to a test of its value (None when absent): a node whose option fails it is
refused with the unknown ops, by name, before the .params file is read. `labels_from=k`: inputs k...
are training labels, not network inputs. Only ops whose semantics are reproduced exactly are
registered; nets/mxnet.py runs the graph, and the supported set is OPS's keys.

MXNet defaults that differ from PyTorch's and are honoured here: BatchNorm eps=1e-3 and
fix_gamma=True (gamma held at 1), Pooling stride 1 and the `full` (round-up) convention, which never
drops a last window as PyTorch's ceil_mode does, Deconvolution without bias unless asked.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError
from .registry import Registry

OPS = Registry("MXNet", "op")


class Node:
    """One symbol node being converted: its name, op, attributes, and the shapes of its parameters."""

    def __init__(self, node: dict[str, Any], nodes: list[dict], shapes: dict[str, list[int]]):
        self.name, self.op, self.attrs = node["name"], node["op"], node.get("attrs") or {}
        self.where = f"MXNet node {self.name!r} ({self.op})"
        self._inputs, self._nodes, self._shapes = node["inputs"], nodes, shapes

    def weight(self) -> list[int]:
        """The shape of the node's weight (its second input), from the .params file."""
        shape = None
        if len(self._inputs) > 1:
            shape = self._shapes.get(self._nodes[self._inputs[1][0]]["name"])
        if shape is None:
            raise GraftError(f"{self.where}: its weights are missing from the .params file",
                             "the .params file does not belong to this symbol")
        return shape


class Step(NamedTuple):
    """A converted node: its weights (None for an op without) and run(module, inputs) -> output. The net
    looks the module up when it runs, so a replaced submodule (a new head) is the one used."""
    module: nn.Module | None
    run: Callable[[nn.Module | None, list], torch.Tensor]


def layer(module: nn.Module) -> Step:
    """An op with weights: the module, run on the node's data input (the others are its parameters)."""
    return Step(module, lambda m, xs: m(xs[0]))


def pure(fn: Callable[[list], torch.Tensor]) -> Step:
    """An op without weights: fn(the node's inputs)."""
    return Step(None, lambda _m, xs: fn(xs))


def one_of(*values) -> Callable[[Any], bool]:
    return lambda v: v in values


NCHW_LAYOUTS = one_of(None, "None", "NCW", "NCHW", "NCDHW")


# ---------------------------------------------------------------- attribute parsing

def _tuple(v: Any, default: tuple[int, ...] = ()) -> tuple[int, ...]:
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    # "(3, 3)", "[1,1]", "3", "(None, 2)": parsed as text (linear time, no nesting), not by literal_eval
    inner = str(v).strip().strip("()[] ")
    parts = [p.strip() for p in inner.split(",")] if inner else []
    if parts and not parts[-1]:
        parts.pop()  # "(3,)"
    return tuple(0 if p == "None" else int(p) for p in parts)  # (ValueError for anything else)


def _bool(v: Any, default: bool) -> bool:
    return default if v is None else str(v).strip().lower() in ("true", "1")


def _float(v: Any, default: float) -> float:
    return default if v is None else float(v)



# ---------------------------------------------------------------- modules

class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """MXNet BatchNorm over axis 1 of any rank; fix_gamma holds gamma at 1, use_global_stats never
    uses batch statistics."""

    def __init__(self, channels: int, eps: float, momentum: float, fix_gamma: bool, use_global_stats: bool):
        super().__init__(channels, eps=eps, momentum=1.0 - momentum)
        self.fix_gamma, self.use_global_stats = fix_gamma, use_global_stats
        if fix_gamma:
            self.weight.requires_grad_(False)

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"BatchNorm expects at least 2-D input, got {x.dim()}-D")

    def forward(self, x):
        weight = torch.ones_like(self.weight) if self.fix_gamma else self.weight
        training = self.training and not self.use_global_stats
        return F.batch_norm(x, self.running_mean, self.running_var, weight, self.bias, training,
                            self.momentum, self.eps)


class Pool(nn.Module):
    """MXNet Pooling: max/avg/sum, `valid` (floor) or `full` (ceil) output size, padding counted in the
    average unless count_include_pad=False, global pooling."""

    def __init__(self, attrs: dict[str, Any]):
        super().__init__()
        self.kind = attrs.get("pool_type", "max")
        self.global_pool = _bool(attrs.get("global_pool"), False)
        self.kernel = _tuple(attrs.get("kernel"))
        nd = len(self.kernel) or 2
        self.stride = _tuple(attrs.get("stride")) or (1,) * nd
        self.pad = _tuple(attrs.get("pad")) or (0,) * nd
        self.full = attrs.get("pooling_convention", "valid") == "full"
        self.include_pad = _bool(attrs.get("count_include_pad"), True)

    def _out(self, size: int, k: int, s: int, p: int) -> int:
        span = size + 2 * p - k
        return 1 + (-(-span // s) if self.full else span // s)

    def forward(self, x):
        spatial = tuple(range(2, x.dim()))
        if self.global_pool:
            return {"max": x.amax, "avg": x.mean, "sum": x.sum}[self.kind](dim=spatial, keepdim=True)
        dims = x.shape[2:]
        outs = [self._out(n, k, s, p) for n, k, s, p in zip(dims, self.kernel, self.stride, self.pad)]
        # Explicit padding so that a plain floor-mode pool yields MXNet's size: pad on the far side
        # up to the last window's end (PyTorch's ceil_mode would drop a window starting in the padding).
        extra = [max(0, (o - 1) * s + k - (n + 2 * p)) for o, n, k, s, p in
                 zip(outs, dims, self.kernel, self.stride, self.pad)]
        pads = [v for p, e in zip(reversed(self.pad), reversed(extra)) for v in (p, p + e)]
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(dims) - 1] if self.kind == "max" else \
            (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(dims) - 1]
        if self.kind == "max":
            return pool(F.pad(x, pads, value=-math.inf), self.kernel, self.stride)
        total = pool(F.pad(x, pads), self.kernel, self.stride) * math.prod(self.kernel)
        if self.kind == "sum":
            return total
        # The divisor: window cells inside the input (and its padding when counted), the overhang never.
        ones = torch.ones((1, 1, *dims), dtype=x.dtype, device=x.device)
        if self.include_pad:
            ones = F.pad(ones, [v for p in reversed(self.pad) for v in (p, p)], value=1.0)
            mask = F.pad(ones, [v for e in reversed(extra) for v in (0, e)])
        else:
            mask = F.pad(ones, pads)
        count = pool(mask, self.kernel, self.stride) * math.prod(self.kernel)
        return total / count.clamp_min(1)


def _reshape(x: torch.Tensor, spec: tuple[int, ...], reverse: bool) -> torch.Tensor:
    """MXNet Reshape codes: 0 copy a dim, -1 infer, -2 copy the rest, -3 merge two, -4 split one in two."""
    src = list(x.shape)
    if reverse:
        src, spec = src[::-1], tuple(reversed(spec))
    out, i, j = [], 0, 0
    while j < len(spec):
        c = spec[j]
        if c == 0:
            out.append(src[i]); i += 1
        elif c == -1:
            out.append(-1); i += 1
        elif c == -2:
            out.extend(src[i:]); i = len(src)
        elif c == -3:
            out.append(src[i] * src[i + 1]); i += 2
        elif c == -4:
            a, b = spec[j + 1], spec[j + 2]
            if a == -1:
                a = src[i] // b
            if b == -1:
                b = src[i] // a
            out.extend([a, b]); i += 1; j += 2
        else:
            out.append(c); i += 1
        j += 1
    if reverse:
        out = out[::-1]
    return x.reshape(out)


# ---------------------------------------------------------------- ops with weights

def _conv_geometry(node: Node, w: list[int], transposed: bool):
    """(kernel, stride, dilate, pad, groups), checked against the weight's shape before anything is allocated."""
    a = node.attrs
    kernel = _tuple(a.get("kernel"))
    nd = len(kernel)
    groups = int(a.get("num_group", 1))
    stride = _tuple(a.get("stride")) or (1,) * nd
    dilate = _tuple(a.get("dilate")) or (1,) * nd
    pad = _tuple(a.get("pad")) or (0,) * nd
    if not 1 <= nd <= 3 or len(w) != nd + 2 or tuple(w[2:]) != kernel or groups < 1 \
            or (w[1] * groups if transposed else w[0]) % groups \
            or any(len(t) != nd for t in (stride, dilate, pad)) or min(stride + dilate) < 1 or min(pad) < 0:
        raise GraftError(f"{node.where}: kernel {kernel}, groups {groups}, stride {stride}, pad {pad}, "
                         f"dilate {dilate} do not fit its weight of shape {tuple(w)}",
                         "the symbol and .params files do not belong together, or one is corrupt")
    return kernel, stride, dilate, pad, groups


@OPS.register("Convolution", allow={"layout": NCHW_LAYOUTS})
def convolution(node: Node) -> Step:
    w = node.weight()
    kernel, stride, dilate, pad, groups = _conv_geometry(node, w, transposed=False)
    bias = not _bool(node.attrs.get("no_bias"), False)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(kernel) - 1]
    return layer(cls(w[1] * groups, w[0], kernel, stride, pad, dilate, groups, bias))


@OPS.register("Deconvolution", allow={"layout": NCHW_LAYOUTS, "target_shape": lambda v: not any(_tuple(v))})
def deconvolution(node: Node) -> Step:
    w = node.weight()
    kernel, stride, dilate, pad, groups = _conv_geometry(node, w, transposed=True)
    bias = not _bool(node.attrs.get("no_bias"), True)
    adj = _tuple(node.attrs.get("adj")) or (0,) * len(kernel)
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[len(kernel) - 1]
    return layer(cls(w[0], w[1] * groups, kernel, stride, pad, adj, groups, bias, dilate))


@OPS.register("FullyConnected")
def fully_connected(node: Node) -> Step:
    w = node.weight()
    if len(w) != 2:
        raise GraftError(f"{node.where}: its weight has shape {tuple(w)}, not [out, in]",
                         "the symbol and .params files do not belong together, or one is corrupt")
    flatten = _bool(node.attrs.get("flatten"), True)
    return Step(nn.Linear(w[1], w[0], bias=not _bool(node.attrs.get("no_bias"), False)),
                lambda m, xs: m(xs[0].flatten(1) if flatten else xs[0]))


@OPS.register("BatchNorm", allow={"axis": lambda v: v is None or int(v) == 1})
def batch_norm(node: Node) -> Step:
    w, a = node.weight(), node.attrs
    return layer(BatchNorm(w[0], _float(a.get("eps"), 1e-3), _float(a.get("momentum"), 0.9),
                           _bool(a.get("fix_gamma"), True), _bool(a.get("use_global_stats"), False)))


@OPS.register("LeakyReLU", allow={"act_type": one_of(None, "leaky", "prelu", "elu", "selu", "gelu", "rrelu")})
def leaky_relu(node: Node) -> Step:
    a = node.attrs
    act, slope = a.get("act_type", "leaky"), _float(a.get("slope"), 0.25)
    if act == "prelu":  # the slopes are weights
        w = node.weight()
        return layer(nn.PReLU(w[0] if w else 1))
    if act == "leaky":
        return pure(lambda xs: F.leaky_relu(xs[0], slope))
    if act == "elu":
        return pure(lambda xs: F.elu(xs[0], slope))
    if act == "selu":
        return pure(lambda xs: F.selu(xs[0]))
    if act == "gelu":
        return pure(lambda xs: F.gelu(xs[0]))
    # rrelu in inference: the mean of the random slope range
    mean = (_float(a.get("lower_bound"), 0.125) + _float(a.get("upper_bound"), 0.334)) / 2
    return pure(lambda xs: F.leaky_relu(xs[0], mean))


# ---------------------------------------------------------------- ops with state but no weights

@OPS.register("Pooling", allow={"layout": NCHW_LAYOUTS, "pool_type": one_of(None, "max", "avg", "sum"),
                                "pooling_convention": one_of(None, "valid", "full")})
def pooling(node: Node) -> Step:
    return layer(Pool(node.attrs))


@OPS.register("Dropout")
def dropout(node: Node) -> Step:
    return layer(nn.Dropout(_float(node.attrs.get("p"), 0.5)))


@OPS.register("LRN")
def lrn(node: Node) -> Step:
    a = node.attrs
    return layer(nn.LocalResponseNorm(int(a.get("nsize")), _float(a.get("alpha"), 1e-4), _float(a.get("beta"), 0.75),
                                      _float(a.get("knorm"), 2.0)))


# ---------------------------------------------------------------- activations

ACTIVATIONS = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softrelu": F.softplus,
               "softsign": F.softsign}


@OPS.register("Activation", allow={"act_type": lambda v: v in ACTIVATIONS})
def activation(node: Node) -> Step:
    fn = ACTIVATIONS[node.attrs["act_type"]]
    return pure(lambda xs: fn(xs[0]))


@OPS.register("relu", "sigmoid", "tanh")
def elementwise_activation(node: Node) -> Step:
    fn = getattr(torch, node.op)
    return pure(lambda xs: fn(xs[0]))


@OPS.register("clip")
def clip(node: Node) -> Step:
    lo, hi = float(node.attrs["a_min"]), float(node.attrs["a_max"])
    return pure(lambda xs: xs[0].clamp(lo, hi))


# ---------------------------------------------------------------- softmax

@OPS.register("softmax", "log_softmax")
def softmax(node: Node) -> Step:
    a = node.attrs
    axis = int(a.get("axis", -1))
    t = _float(a.get("temperature"), 1.0) if a.get("temperature") not in (None, "None") else 1.0
    fn = F.softmax if node.op == "softmax" else F.log_softmax
    return pure(lambda xs: fn(xs[0] / t, dim=axis))


def _instance_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over everything but the batch axis."""
    return F.softmax(x.reshape(x.shape[0], -1), dim=1).reshape(x.shape)


@OPS.register("SoftmaxOutput", labels_from=1)
def softmax_output(node: Node) -> Step:
    if _bool(node.attrs.get("multi_output"), False):
        return pure(lambda xs: F.softmax(xs[0], dim=1))
    if _bool(node.attrs.get("preserve_shape"), False):
        return pure(lambda xs: F.softmax(xs[0], dim=-1))
    return pure(lambda xs: _instance_softmax(xs[0]))


@OPS.register("SoftmaxActivation")
def softmax_activation(node: Node) -> Step:
    if node.attrs.get("mode", "instance") == "channel":
        return pure(lambda xs: F.softmax(xs[0], dim=1))
    return pure(lambda xs: _instance_softmax(xs[0]))


# ---------------------------------------------------------------- arithmetic and joins

@OPS.register("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add")
def add(node: Node) -> Step:
    return pure(lambda xs: xs[0] + xs[1])


@OPS.register("elemwise_sub", "_minus", "_sub", "broadcast_sub")
def sub(node: Node) -> Step:
    return pure(lambda xs: xs[0] - xs[1])


@OPS.register("elemwise_mul", "_mul", "_Mul", "broadcast_mul")
def mul(node: Node) -> Step:
    return pure(lambda xs: xs[0] * xs[1])


@OPS.register("_plus_scalar", "_minus_scalar", "_mul_scalar", "_div_scalar")
def scalar(node: Node) -> Step:
    s = float(node.attrs.get("scalar", 0))
    fn = {"_plus_scalar": lambda x: x + s, "_minus_scalar": lambda x: x - s, "_mul_scalar": lambda x: x * s,
          "_div_scalar": lambda x: x / s}[node.op]
    return pure(lambda xs: fn(xs[0]))


@OPS.register("Concat", "concat")
def concat(node: Node) -> Step:
    dim = int(node.attrs.get("dim", 1))
    return pure(lambda xs: torch.cat(xs, dim=dim))


# ---------------------------------------------------------------- shapes and identities

@OPS.register("Flatten", "flatten")
def flatten(node: Node) -> Step:
    return pure(lambda xs: xs[0].flatten(1))


@OPS.register("Reshape", "reshape")
def reshape(node: Node) -> Step:
    shape, reverse = _tuple(node.attrs.get("shape")), _bool(node.attrs.get("reverse"), False)
    return pure(lambda xs: _reshape(xs[0], shape, reverse))


@OPS.register("_copy", "identity")
def identity(node: Node) -> Step:
    return pure(lambda xs: xs[0])


@OPS.register("BlockGrad", "stop_gradient")
def block_grad(node: Node) -> Step:
    return pure(lambda xs: xs[0].detach())
