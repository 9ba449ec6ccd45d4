"""MXNet symbol JSON + `.params` (Module checkpoints and Gluon exports) -> a torch module.

The symbol is a list of nodes in topological order; `null` nodes are inputs or
parameters, every other node is an op whose inputs are [node, output] pairs.
We build one submodule per parameterised op (named after the node, so
`net.conv1_1.weight`), and a forward pass that walks the node list. Only ops
whose semantics we reproduce exactly are accepted; anything else is refused by
name, with the nodes that use it, before any tensor is read.

MXNet defaults that differ from PyTorch's and are honoured here: BatchNorm
eps=1e-3 and fix_gamma=True (gamma held at 1), Pooling stride 1 and the
`full` (round-up) convention, which never drops a last window as PyTorch's
ceil_mode does, Deconvolution without bias unless asked.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError, short, some
from ..formats import mxnet as mxfile
from ..meta import attach, make_meta

SUPPORTED = {
    "null", "Convolution", "Deconvolution", "FullyConnected", "Pooling", "BatchNorm", "Activation", "LeakyReLU",
    "Concat", "concat", "elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "elemwise_sub", "_minus",
    "_sub", "broadcast_sub", "elemwise_mul", "_mul", "_Mul", "broadcast_mul", "_plus_scalar", "_minus_scalar",
    "_mul_scalar", "_div_scalar", "Flatten", "flatten", "Dropout", "Reshape", "reshape", "softmax", "log_softmax",
    "SoftmaxOutput", "SoftmaxActivation", "LRN", "clip", "_copy", "identity", "BlockGrad", "stop_gradient",
    "relu", "sigmoid", "tanh",
}
# Ops whose extra inputs are training labels, ignored in inference.
LABEL_OPS = {"SoftmaxOutput": 1}


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


def module_name(node: str) -> str:
    """A submodule name for an MXNet node ('mobilenet0_conv0_fwd' -> 'mobilenet0_conv0')."""
    name = re.sub(r"_fwd$", "", node)
    name = re.sub(r"\W", "_", name)
    return name if name.isidentifier() else f"n_{name}"


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


class MXNetNet(nn.Module):
    """A converted MXNet symbol. `net(x)` (or `net(data=x)`) returns the symbol's output, a dict by
    output name when it has several; `net.run(inputs, outputs=[node names])` returns any nodes."""

    def __init__(self, graph: dict[str, Any], shapes: dict[str, list[int]]):
        super().__init__()
        self.graph = graph
        nodes = graph["nodes"]
        check_ops(graph)
        self.params = {n["name"] for n in nodes if n["op"] == "null" and n["name"] in shapes}
        labels = {nodes[inp[0]]["name"] for n in nodes if n["op"] in LABEL_OPS
                  for inp in n["inputs"][LABEL_OPS[n["op"]]:]}
        self.inputs = [n["name"] for n in nodes
                       if n["op"] == "null" and n["name"] not in self.params and n["name"] not in labels]
        self.outputs = [self._entry_name(h) for h in graph.get("heads", [])]
        self.train_outputs = self.outputs
        shape_attr = {n["name"]: (n.get("attrs") or {}).get("__shape__") for n in nodes}
        self.input_shapes = {n: list(_tuple(shape_attr[n])) if shape_attr.get(n) else None for n in self.inputs}
        self.mod_of: dict[int, str] = {}
        for i, node in enumerate(nodes):
            try:
                m = self._make(node, shapes)
            except (ValueError, TypeError, OverflowError, IndexError) as e:  # an attribute that is no number
                raise GraftError(f"MXNet node {node['name']!r} ({node['op']}): invalid attributes "
                                 f"{short(node.get('attrs'))} ({e})", "the symbol file is corrupt") from None
            if m is not None:
                name = module_name(node["name"])
                while hasattr(self, name):  # taken by a submodule or an nn.Module attribute ("forward")
                    name = f"{name}_"
                self.add_module(name, m)
                self.mod_of[i] = name

    def _entry_name(self, entry) -> str:
        node, out = entry[0], entry[1]
        name = self.graph["nodes"][node]["name"]
        return name if out == 0 else f"{name}:{out}"

    def _param_shape(self, node, slot, shapes):
        inputs = node["inputs"]
        if slot >= len(inputs):
            return None
        name = self.graph["nodes"][inputs[slot][0]]["name"]
        return shapes.get(name)

    def _make(self, node, shapes) -> nn.Module | None:
        op, a = node["op"], node.get("attrs") or {}
        where = f"MXNet node {node['name']!r} ({op})"
        if op in ("Convolution", "Deconvolution", "FullyConnected", "BatchNorm", "LeakyReLU") and not (
                op == "LeakyReLU" and a.get("act_type", "leaky") != "prelu"):
            w = self._param_shape(node, 1, shapes)
            if w is None:
                raise GraftError(f"{where}: its weights are missing from the .params file",
                                 "the .params file does not belong to this symbol")
        if op in ("Convolution", "Deconvolution"):
            kernel = _tuple(a.get("kernel"))
            nd = len(kernel)
            groups = int(a.get("num_group", 1))
            bias = not _bool(a.get("no_bias"), op == "Deconvolution")
            stride = _tuple(a.get("stride")) or (1,) * nd
            dilate = _tuple(a.get("dilate")) or (1,) * nd
            pad = _tuple(a.get("pad")) or (0,) * nd
            # the symbol's kernel must be the weight's: checked before the layer allocates anything
            if not 1 <= nd <= 3 or len(w) != nd + 2 or tuple(w[2:]) != kernel or groups < 1 \
                    or (w[0] if op == "Convolution" else w[1] * groups) % groups \
                    or any(len(t) != nd for t in (stride, dilate, pad)) or min(stride + dilate) < 1 or min(pad) < 0:
                raise GraftError(f"{where}: kernel {kernel}, groups {groups}, stride {stride}, pad {pad}, "
                                 f"dilate {dilate} do not fit its weight of shape {tuple(w)}",
                                 "the symbol and .params files do not belong together, or one is corrupt")
            if op == "Convolution":
                cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
                return cls(w[1] * groups, w[0], kernel, stride, pad, dilate, groups, bias)
            adj = _tuple(a.get("adj")) or (0,) * nd
            cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[nd - 1]
            return cls(w[0], w[1] * groups, kernel, stride, pad, adj, groups, bias, dilate)
        if op == "FullyConnected":
            if len(w) != 2:
                raise GraftError(f"{where}: its weight has shape {tuple(w)}, not [out, in]",
                                 "the symbol and .params files do not belong together, or one is corrupt")
            return nn.Linear(w[1], w[0], bias=not _bool(a.get("no_bias"), False))
        if op == "BatchNorm":
            return BatchNorm(w[0], _float(a.get("eps"), 1e-3), _float(a.get("momentum"), 0.9),
                             _bool(a.get("fix_gamma"), True), _bool(a.get("use_global_stats"), False))
        if op == "LeakyReLU" and a.get("act_type", "leaky") == "prelu":
            return nn.PReLU(w[0] if w else 1)
        if op == "Pooling":
            return Pool(a)
        if op == "Dropout":
            return nn.Dropout(_float(a.get("p"), 0.5))
        if op == "LRN":
            n = int(a.get("nsize"))
            return nn.LocalResponseNorm(n, _float(a.get("alpha"), 1e-4), _float(a.get("beta"), 0.75),
                                        _float(a.get("knorm"), 2.0))
        return None

    def forward(self, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], dict):
            kwargs = {**args[0], **kwargs}
        elif args:
            kwargs = {**dict(zip(self.inputs, args)), **kwargs}
        out = self.run(kwargs)
        return next(iter(out.values())) if len(out) == 1 else out

    def run(self, inputs: dict[str, torch.Tensor], outputs: list[str] | None = None) -> dict[str, torch.Tensor]:
        nodes = self.graph["nodes"]
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise GraftError(f"missing network input(s) {missing}", f"the inputs are {self.inputs}")
        wanted = outputs or self.outputs
        values: dict[tuple[int, int], torch.Tensor] = {}
        by_name = {n["name"]: i for i, n in enumerate(nodes)}
        unknown = [w for w in wanted if w.split(":")[0] not in by_name]
        if unknown:
            raise GraftError(f"no node named {unknown[0]!r} in this MXNet network")
        last = max(by_name[w.split(":")[0]] for w in wanted)
        for i, node in enumerate(nodes[:last + 1]):
            if node["op"] == "null":
                if node["name"] in inputs:
                    values[(i, 0)] = inputs[node["name"]]
                continue
            xs = [values.get((src, out)) for src, out, *_ in node["inputs"]]
            try:
                values[(i, 0)] = self._run_node(i, node, xs)
            except RuntimeError as e:
                # Shapes that do not fit (a wrong input size, or .params from another symbol) are the
                # user's to fix: say which node and which shapes.
                shapes = [list(x.shape) for x in xs if torch.is_tensor(x)]
                raise GraftError(f"MXNet node {node['name']!r} ({node['op']}) cannot take input of shape "
                                 f"{shapes}: {str(e).splitlines()[0]}",
                                 "check the input size, and that the .params file belongs to this symbol") from None
        result = {}
        for w in wanted:
            name, _, out = w.partition(":")
            result[w] = values[(by_name[name], int(out or 0))]
        return result

    def _run_node(self, i, node, xs):
        op, a = node["op"], node.get("attrs") or {}
        if i in self.mod_of:
            m = getattr(self, self.mod_of[i])
            x = xs[0]
            if op == "FullyConnected" and _bool(a.get("flatten"), True):
                x = x.flatten(1)
            return m(x)
        x = xs[0]
        if op in ("Activation",):
            act = a.get("act_type")
            return {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softrelu": F.softplus,
                    "softsign": F.softsign}[act](x)
        if op in ("relu", "sigmoid", "tanh"):
            return getattr(torch, op)(x)
        if op == "LeakyReLU":
            act, slope = a.get("act_type", "leaky"), _float(a.get("slope"), 0.25)
            if act == "leaky":
                return F.leaky_relu(x, slope)
            if act == "elu":
                return F.elu(x, slope)
            if act == "selu":
                return F.selu(x)
            if act == "gelu":
                return F.gelu(x)
            if act == "rrelu":  # inference: the mean of the random slope range
                return F.leaky_relu(x, (_float(a.get("lower_bound"), 0.125) + _float(a.get("upper_bound"), 0.334)) / 2)
        if op in ("Concat", "concat"):
            return torch.cat(xs, dim=int(a.get("dim", 1)))
        if op in ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add"):
            return xs[0] + xs[1]
        if op in ("elemwise_sub", "_minus", "_sub", "broadcast_sub"):
            return xs[0] - xs[1]
        if op in ("elemwise_mul", "_mul", "_Mul", "broadcast_mul"):
            return xs[0] * xs[1]
        if op.endswith("_scalar"):
            s = float(a.get("scalar", 0))
            return {"_plus_scalar": x + s, "_minus_scalar": x - s, "_mul_scalar": x * s, "_div_scalar": x / s}[op]
        if op in ("Flatten", "flatten"):
            return x.flatten(1)
        if op in ("Reshape", "reshape"):
            return _reshape(x, _tuple(a.get("shape")), _bool(a.get("reverse"), False))
        if op in ("softmax", "log_softmax"):
            axis = int(a.get("axis", -1))
            t = _float(a.get("temperature"), 1.0) if a.get("temperature") not in (None, "None") else 1.0
            return (F.softmax if op == "softmax" else F.log_softmax)(x / t, dim=axis)
        if op == "SoftmaxOutput":
            if _bool(a.get("multi_output"), False):
                return F.softmax(x, dim=1)
            if _bool(a.get("preserve_shape"), False):
                return F.softmax(x, dim=-1)
            return F.softmax(x.reshape(x.shape[0], -1), dim=1).reshape(x.shape)
        if op == "SoftmaxActivation":
            if a.get("mode", "instance") == "channel":
                return F.softmax(x, dim=1)
            return F.softmax(x.reshape(x.shape[0], -1), dim=1).reshape(x.shape)
        if op == "clip":
            return x.clamp(float(a["a_min"]), float(a["a_max"]))
        if op in ("_copy", "identity"):
            return x
        if op in ("BlockGrad", "stop_gradient"):
            return x.detach()
        raise GraftError(f"MXNet op {op} (node {node['name']!r}) is not supported")


NCHW_LAYOUTS = (None, "None", "NCW", "NCHW", "NCDHW")


def _unsupported_option(op: str, a: dict[str, Any]) -> str | None:
    """The option of a supported op that we do not reproduce, as 'key=value', else None."""
    if op == "Activation" and a.get("act_type") not in ("relu", "sigmoid", "tanh", "softrelu", "softsign"):
        return f"act_type={a.get('act_type')}"
    if op == "LeakyReLU" and a.get("act_type", "leaky") not in ("leaky", "prelu", "elu", "selu", "gelu", "rrelu"):
        return f"act_type={a.get('act_type')}"
    if op in ("Convolution", "Deconvolution", "Pooling") and a.get("layout") not in NCHW_LAYOUTS:
        return f"layout={a['layout']}"
    if op == "Deconvolution" and _tuple(a.get("target_shape")) and any(_tuple(a.get("target_shape"))):
        return f"target_shape={a['target_shape']}"
    if op == "BatchNorm" and int(a.get("axis", 1)) != 1:
        return f"axis={a['axis']}"
    if op == "Pooling" and a.get("pool_type", "max") not in ("max", "avg", "sum"):
        return f"pool_type={a['pool_type']}"
    if op == "Pooling" and a.get("pooling_convention", "valid") not in ("valid", "full"):
        return f"pooling_convention={a['pooling_convention']}"
    return None


def check_ops(graph: dict[str, Any]) -> None:
    """Refuse a graph with ops (or op options) we cannot reproduce, naming them and their nodes."""
    unknown: dict[str, list[str]] = {}
    for node in graph["nodes"]:
        op, a = node.get("op"), node.get("attrs") or {}
        bad = op if op not in SUPPORTED else None
        option = _unsupported_option(op, a)
        if bad is None and option:
            bad = f"{op}({option})"
        if bad:
            unknown.setdefault(str(bad), []).append(str(node.get("name")))
    if unknown:
        listing = "; ".join(f"{op} (used by {some(names)})"
                            for op, names in unknown.items())
        raise GraftError(f"unsupported MXNet op(s): {listing}",
                         "graftkit converts Convolution, FullyConnected, Pooling, BatchNorm, activations, "
                         "Concat, elementwise arithmetic, Flatten, Reshape, Dropout and softmax")


def _find_files(paths: list[Path]) -> tuple[Path, Path]:
    sym = next((p for p in paths if p.name.endswith(".json")), None)
    params = next((p for p in paths if p.suffix == ".params"), None)
    if params is None and sym is not None:
        prefix = sym.name.removesuffix("-symbol.json")
        found = sorted(sym.parent.glob(f"{glob_escape(prefix)}-[0-9]*.params"))
        params = found[-1] if found else None
        if params is None:
            raise GraftError(f"{sym}: no {prefix}-NNNN.params beside it", "give the .params file too")
    if sym is None and params is not None:
        sym = mxfile.symbol_path(params)
        if sym is None:
            raise GraftError(f"{params}: no -symbol.json beside it", "give the symbol file too")
    return sym, params


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def claims(paths: list[Path]) -> bool:
    for p in paths:
        if p.name.endswith("-symbol.json"):
            return True
        if p.suffix == ".params" and mxfile.symbol_path(p) is not None:
            return True
        if p.suffix == ".json":
            try:
                with open(p, "rb") as f:
                    head = f.read(4096)
                if b'"nodes"' in head and b'"op"' in head:
                    return True
            except OSError:
                pass
    return False


def build_from_spec(spec: dict[str, Any], *, trust: bool = False) -> nn.Module:
    try:
        graph = json.loads(spec["symbol"])
        shapes = {k: list(v) for k, v in spec["shapes"].items()}
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise GraftError(f"the package's MXNet spec is damaged ({e})") from None
    except RecursionError:
        raise GraftError("the package's MXNet spec nests too deeply") from None
    return MXNetNet(mxfile.check_symbol(graph, "the package's MXNet spec"), shapes)


def convert(paths: list[Path], *, mean=None, std=None, input_size=None, channel_order: str = "RGB",
            pixel_range: float = 1.0, **kwargs) -> nn.Module:
    """The symbol + .params as a module. MXNet files carry no preprocessing: pass the mean/std
    (and input size, channel order, pixel range) the model was trained with to keep them in the package."""
    sym, params = _find_files([Path(p) for p in paths])
    graph = mxfile.load_symbol(sym)
    try:
        check_ops(graph)
    except GraftError as e:
        raise GraftError(f"{sym}: {e}") from None
    raw = mxfile.load_params(params)
    tensors = {mxfile.strip_prefix(k)[1]: v for k, v in raw.items()}
    used = {n["name"] for n in graph["nodes"] if n["op"] == "null"}
    shapes = {k: list(v.shape) for k, v in tensors.items() if k in used}
    try:
        net = MXNetNet(graph, shapes)
    except GraftError as e:
        raise GraftError(f"{params}: {e}") from None
    state = {}
    for i, mod in net.mod_of.items():
        node = graph["nodes"][i]
        m = getattr(net, mod)
        slots = mxfile.OP_SLOTS.get(node["op"], ())
        for slot, role in enumerate(slots, start=1):
            if slot >= len(node["inputs"]):
                continue
            pname = graph["nodes"][node["inputs"][slot][0]]["name"]
            key = f"{mod}.{role}"
            if key not in m.state_dict(prefix=f"{mod}."):
                continue
            if pname not in tensors:
                raise GraftError(f"{params}: parameter {pname!r} of node {node['name']!r} is missing",
                                 "the .params file does not belong to this symbol")
            state[key] = tensors[pname]
    own = net.state_dict()
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise GraftError(f"{params}: {k} has shape {tuple(v.shape)} but the symbol needs {tuple(own[k].shape)}",
                             "the .params file does not belong to this symbol")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise GraftError(f"{params}: no values for {', '.join(missing[:5])}",
                         "the .params file does not belong to this symbol")
    net.load_state_dict(state, strict=False)
    for m in net.modules():
        if isinstance(m, BatchNorm) and m.fix_gamma:
            m.weight.data.fill_(1.0)
    net.eval()
    spec = {"converter": "mxnet", "symbol": json.dumps(graph), "shapes": shapes,
            "inputs": net.inputs, "outputs": net.outputs}
    preprocessing = None
    if mean is not None or std is not None:
        preprocessing = {"input_size": list(input_size) if input_size else None, "mean": list(mean or (0, 0, 0)),
                         "std": list(std or (1, 1, 1)), "pixel_range": pixel_range, "channel_order": channel_order}
    return attach(net, make_meta(spec, preprocessing=preprocessing,
                                 provenance={"sources": [str(sym), str(params)], "converter": "mxnet"}))
