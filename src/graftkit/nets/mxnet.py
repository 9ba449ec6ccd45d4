"""MXNet symbol JSON + `.params` (Module checkpoints and Gluon exports) -> a torch module.

The symbol is a list of nodes in topological order; `null` nodes are inputs or
parameters, every other node is an op whose inputs are [node, output] pairs.
Each op is converted by its one registered function in nets/mxnet_ops.py; we keep
one submodule per op with weights or state (named after the node, so
`net.conv1_1.weight`), and a forward pass that walks the node list. Only the
registered ops, with the options they accept, are converted; anything else is
refused by name, with the nodes that use it, before any tensor is read.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import GraftError, short
from ..formats import mxnet as mxfile
from ..meta import attach, make_meta
from .mxnet_ops import OPS, BatchNorm, Node, _tuple

# Every supported op (and `null`: the graph's inputs and parameters)
SUPPORTED = frozenset(OPS) | {"null"}


def module_name(node: str) -> str:
    """A submodule name for an MXNet node ('mobilenet0_conv0_fwd' -> 'mobilenet0_conv0')."""
    name = re.sub(r"_fwd$", "", node)
    name = re.sub(r"\W", "_", name)
    return name if name.isidentifier() else f"n_{name}"


class MXNetNet(nn.Module):
    """A converted MXNet symbol. `net(x)` (or `net(data=x)`) returns the symbol's output, a dict by
    output name when it has several; `net.run(inputs, outputs=[node names])` returns any nodes."""

    def __init__(self, graph: dict[str, Any], shapes: dict[str, list[int]]):
        super().__init__()
        self.graph = graph
        nodes = graph["nodes"]
        check_ops(graph)
        self.params = {n["name"] for n in nodes if n["op"] == "null" and n["name"] in shapes}
        labels = set()  # inputs that are training labels (SoftmaxOutput's), ignored in inference
        for n in nodes:
            first = OPS.traits(n["op"]).get("labels_from")
            if first:
                labels.update(nodes[inp[0]]["name"] for inp in n["inputs"][first:])
        self.inputs = [n["name"] for n in nodes
                       if n["op"] == "null" and n["name"] not in self.params and n["name"] not in labels]
        self.outputs = [self._entry_name(h) for h in graph.get("heads", [])]
        self.train_outputs = self.outputs
        shape_attr = {n["name"]: (n.get("attrs") or {}).get("__shape__") for n in nodes}
        self.input_shapes = {n: list(_tuple(shape_attr[n])) if shape_attr.get(n) else None for n in self.inputs}
        self.mod_of: dict[int, str] = {}  # node index -> its submodule's name
        self._runs: dict[int, Callable] = {}  # node index -> run(module, inputs)
        for i, node in enumerate(nodes):
            if node["op"] == "null":
                continue
            try:
                step = OPS[node["op"]](Node(node, nodes, shapes))
            except (ValueError, TypeError, OverflowError, IndexError, KeyError) as e:  # an attribute that is no number
                raise GraftError(f"MXNet node {node['name']!r} ({node['op']}): invalid attributes "
                                 f"{short(node.get('attrs'))} ({e})", "the symbol file is corrupt") from None
            self._runs[i] = step.run
            if step.module is not None:
                name = module_name(node["name"])
                while hasattr(self, name):  # taken by a submodule or an nn.Module attribute ("forward")
                    name = f"{name}_"
                self.add_module(name, step.module)
                self.mod_of[i] = name

    def _entry_name(self, entry) -> str:
        node, out = entry[0], entry[1]
        name = self.graph["nodes"][node]["name"]
        return name if out == 0 else f"{name}:{out}"

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
                module = getattr(self, self.mod_of[i]) if i in self.mod_of else None
                values[(i, 0)] = self._runs[i](module, xs)
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


def check_ops(graph: dict[str, Any], where: str | None = None) -> None:
    """Refuse a graph with ops (or op options) we cannot reproduce, naming them and their nodes."""
    unknown: dict[str, list[str]] = {}
    for node in graph["nodes"]:
        op, a = node.get("op"), node.get("attrs") or {}
        if op not in SUPPORTED:
            bad = str(op)
        else:
            option = OPS.refused_option(op, a)
            bad = f"{op}({option})" if option else None
        if bad:
            unknown.setdefault(bad, []).append(str(node.get("name")))
    if unknown:
        raise OPS.refuse(unknown, "replace these ops in the symbol, or re-export the model without them", where)


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
    check_ops(graph, str(sym))
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
