"""Caffe networks (prototxt, with or without a caffemodel) as runnable torch modules.

    net = convert(["deploy.prototxt", "weights.caffemodel"])     # or graftkit.convert(...)
    y = net(x)                                   # NCHW in; the net's default output(s) out
    blobs = net.run({"data": x}, outputs=["pool5/7x7_s1", "loss3/classifier"])
    net.conv1_7x7_s2.weight                      # submodules named after the layers
    net.layer("pool5/7x7_s1")                    # any layer by its Caffe name (parameter-free ones
                                                 # are plain callables, CaffeOp, not submodules)

Conversion happens once: the prototxt is parsed, the layers of the requested phase
selected (include/exclude rules), unsupported types reported before anything else,
then every layer is built on the meta device while blob shapes are inferred from the
inputs, the caffemodel's arrays are checked against those shapes and assigned without
copying, and the result is a *graph*: a JSON description (layer types, resolved
hyper-parameters, parameter shapes, blob wiring, outputs) that `build_from_spec`
turns back into the same module without the original files or any parsing.

Outputs: the blobs no other layer consumes, where loss and accuracy layers are never
computed (their bottoms become outputs instead). In a train_val net the bottoms of
auxiliary losses (loss_weight below the largest) are outputs in training mode only;
`net.loss_weights` gives each loss bottom's weight.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import GraftError, short, some
from ..meta import attach, make_meta
from .caffe_layers import (DATA_LAYERS, LAYERS, LOSS_LAYERS, METRIC_LAYERS, SINK_LAYERS, GivenMismatch, all_of,
                           as_bool, enum, one, sub, v2_type)

GRAPH_VERSION = 1
PROTOTXT_SUFFIXES = (".prototxt", ".pbtxt", ".prototxt.txt")
_PHASES = ("TRAIN", "TEST")


# ---------------------------------------------------------------- file discovery

def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".prototxt.txt" if name.endswith(".prototxt.txt") else p.suffix.lower()


def claims(paths: Sequence[Path]) -> bool:
    """Caffe's files: a .prototxt and/or a .caffemodel (optionally with a mean .binaryproto)."""
    sfx = [_suffix(Path(p)) for p in paths]
    return any(s in PROTOTXT_SUFFIXES + (".caffemodel",) for s in sfx) and all(
        s in PROTOTXT_SUFFIXES + (".caffemodel", ".binaryproto") for s in sfx)


def _split_paths(paths: Sequence[Path]) -> tuple[Path | None, Path | None, Path | None]:
    protos = [p for p in paths if _suffix(p) in PROTOTXT_SUFFIXES]
    models = [p for p in paths if _suffix(p) == ".caffemodel"]
    means = [p for p in paths if _suffix(p) == ".binaryproto"]
    if len(protos) > 1 or len(models) > 1 or len(means) > 1 or not (protos or models):
        raise GraftError(f"give one .prototxt and/or one .caffemodel, and at most one mean .binaryproto "
                         f"(got {', '.join(p.name for p in paths)})")
    return (protos[0] if protos else None), (models[0] if models else None), (means[0] if means else None)


# ---------------------------------------------------------------- phase selection

def _meets(rule: dict, phase: str, level: int, stages: set[str]) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if "phase" in rule and enum(one(rule, "phase"), _PHASES, "TEST") != phase:
        return False
    if "min_level" in rule and level < int(one(rule, "min_level")):
        return False
    if "max_level" in rule and level > int(one(rule, "max_level")):
        return False
    if any(s not in stages for s in all_of(rule, "stage")):
        return False
    return not any(s in stages for s in all_of(rule, "not_stage"))


def select_layers(net: dict, phase: str) -> list[dict]:
    """The layers of `net` in `phase` (Caffe's Net::FilterNet), V1 types renamed to V2."""
    if net.get("layer") and net.get("layers"):
        raise GraftError("the prototxt mixes V2 `layer` and legacy V1 `layers` blocks",
                         "use one format (caffe's upgrade_net_proto_text converts V1)")
    state = sub(net, "state")
    level = int(one(state, "level", 0))
    stages = {str(s) for s in all_of(state, "stage")}
    out = []
    for i, lp in enumerate(all_of(net, "layer") or all_of(net, "layers")):
        if lp.get("layer") is not None:
            raise GraftError("the prototxt uses Caffe's V0 layer format (layers { layer { ... } })",
                             "upgrade it with caffe's upgrade_net_proto_text")
        included = not all_of(lp, "include")
        if any(_meets(r, phase, level, stages) for r in all_of(lp, "exclude")):
            included = False
        if any(_meets(r, phase, level, stages) for r in all_of(lp, "include")):
            included = True
        if included:
            lp = dict(lp)
            lp["type"] = v2_type(one(lp, "type", ""))
            lp["name"] = str(one(lp, "name", "") or f"{lp['type'].lower()}{i}")
            out.append(lp)
    return out


def check_supported(layers: Iterable[dict], where: str | None = None) -> None:
    """One error naming every unsupported type and the layers that use it (`where`: the file)."""
    known = set(LAYERS) | set(DATA_LAYERS) | set(LOSS_LAYERS) | set(METRIC_LAYERS) | set(SINK_LAYERS)
    bad: dict[str, list[str]] = {}
    for lp in layers:
        if lp["type"] not in known:
            bad.setdefault(lp["type"], []).append(lp["name"])
    if bad:
        raise LAYERS.refuse(bad, "graftkit converts the standard BVLC layers: remove or replace these in the "
                                 "prototxt", where)


# ---------------------------------------------------------------- inputs

def _dims(shape_msg: dict) -> list[int]:
    return [int(d) for d in all_of(shape_msg, "dim")]


def _data_inputs(lp: dict) -> list[dict]:
    """Input records for a data layer's tops: the first top is taken for the data and the others for
    labels, until the loss layers tell (compile_graph)."""
    t, tops = lp["type"], [str(x) for x in all_of(lp, "top")]
    tp = sub(lp, "transform_param")
    crop = int(one(tp, "crop_size", 0))
    shapes: list[list[int] | None] = [None] * len(tops)
    if t == "Input":
        ss = [_dims(s) for s in all_of(sub(lp, "input_param"), "shape")]
        shapes = [ss[0] if len(ss) == 1 else (ss[i] if i < len(ss) else None) for i in range(len(tops))]
    elif t == "DummyData":
        p = sub(lp, "dummy_data_param")
        ss = [_dims(s) for s in all_of(p, "shape")]
        if not ss and all_of(p, "num"):
            ss = [list(map(int, d)) for d in zip(all_of(p, "num"), all_of(p, "channels"), all_of(p, "height"),
                                                 all_of(p, "width"))]
        shapes = [ss[0] if len(ss) == 1 else (ss[i] if i < len(ss) else None) for i in range(len(tops))]
    elif t == "MemoryData":
        p = sub(lp, "memory_data_param")
        dims = [int(one(p, k, 0)) for k in ("batch_size", "channels", "height", "width")]
        shapes[0] = dims if min(dims) > 0 else None
    elif t in ("Data", "WindowData", "ImageData", "AnnotatedData"):
        colour = as_bool(one(sub(lp, "image_data_param"), "is_color", True))
        batch = int(one(sub(lp, "data_param"), "batch_size", 0) or one(sub(lp, "image_data_param"),
                                                                         "batch_size", 0) or 1)
        ip = sub(lp, "image_data_param")
        h, w = int(one(ip, "new_height", 0)), int(one(ip, "new_width", 0))
        if crop:
            h = w = crop
        if h and w:  # the colour channels are an assumption for Data (the LMDB decides)
            shapes[0] = [batch, 3 if colour else 1, h, w]
    return [{"name": top, "shape": shapes[i] if i < len(shapes) else None, "label": i > 0, "layer": lp["name"]}
            for i, top in enumerate(tops)]


def _legacy_inputs(net: dict) -> list[dict]:
    names = [str(n) for n in all_of(net, "input")]
    shapes = [_dims(s) for s in all_of(net, "input_shape")]
    dims = [int(d) for d in all_of(net, "input_dim")]
    if not shapes and dims:
        shapes = [dims[i:i + 4] for i in range(0, len(dims), 4)]
    return [{"name": n, "shape": shapes[i] if i < len(shapes) else None, "label": False, "layer": None}
            for i, n in enumerate(names)]


# ---------------------------------------------------------------- caffemodel blobs

def _squeezed(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


def _legacy_shapes(layer_type: str, arrays: list[np.ndarray]) -> list[tuple]:
    """Parameter shapes read off the blobs themselves (when the input shape is unknown);
    V1 files store every blob as num x channels x height x width."""
    out = []
    for i, a in enumerate(arrays):
        s = tuple(a.shape)
        if layer_type in ("Convolution", "Deconvolution") and i == 0:
            out.append(s)
        elif layer_type == "InnerProduct" and i == 0:
            out.append(s[-2:] if len(s) >= 2 else (1, s[0]))
        else:
            out.append((int(np.prod(s, dtype=np.int64)),))
    return out


def _check_blobs(name: str, ltype: str, expected: list[tuple], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The caffemodel's arrays reshaped to the shapes the prototxt implies, or one clear error."""
    want = len(expected)
    if ltype == "BatchNorm":
        want = 3 if len(arrays) >= 3 else 2
        expected = expected[:want]
    if len(arrays) != want:
        raise GraftError(f"layer {name!r} ({ltype}): the caffemodel has {len(arrays)} blobs, the prototxt implies "
                         f"{len(expected)} (shapes {', '.join(map(str, [list(s) for s in expected]))})",
                         "the weights belong to another network or the prototxt's bias_term is wrong")
    out = []
    for i, (shape, a) in enumerate(zip(expected, arrays)):
        if tuple(a.shape) != tuple(shape):
            if _squeezed(a.shape) != _squeezed(shape):
                raise GraftError(f"layer {name!r} ({ltype}): blob {i} in the caffemodel has shape {list(a.shape)} "
                                 f"but the prototxt implies {list(shape)}",
                                 "the weights belong to another network, or the prototxt's num_output, kernel "
                                 "or input shape differs")
            a = a.reshape(shape)
        out.append(a)
    return out


def caffemodel_blobs(net: dict) -> dict[str, tuple[str, list[np.ndarray]]]:
    """layer name -> (V2 type, [arrays as stored]) for the layers of a decoded caffemodel that have blobs."""
    from ..formats import caffe as caffe_file
    return {name: (v2_type(ltype), list(arrays)) for name, ltype, arrays in caffe_file.layer_blobs(net) if arrays}


def read_caffemodel_blobs(path: Path) -> dict[str, tuple[str, list[np.ndarray]]]:
    from ..formats import caffe as caffe_file
    return caffemodel_blobs(caffe_file.read_net(path))


# ---------------------------------------------------------------- the graph

def _module_name(name: str, taken: set[str]) -> str:
    base = name.replace("/", "_").replace(".", "_") or "layer"
    cand, i = base, 1
    while cand in taken or hasattr(nn.Module, cand) or cand in CaffeNet.RESERVED:
        i += 1
        cand = f"{base}_{i}"
    taken.add(cand)
    return cand


def compile_graph(net: dict, phase: str = "TEST", blobs: Mapping[str, tuple[str, list]] | None = None,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, layers: list[dict] | None = None):
    """Parsed NetParameter -> (graph JSON, layer modules, checked blob arrays per layer): the modules of
    layers with checked arrays hold them as their tensors, the others are on the meta device.
    `layers`: the phase's layers when the caller already selected and checked them."""
    phase = phase.upper()
    if phase not in _PHASES:
        raise GraftError(f"phase {phase!r} is not TRAIN or TEST")
    if layers is None:
        layers = select_layers(net, phase)
        check_supported(layers)
    inputs = _legacy_inputs(net)
    for lp in layers:
        if lp["type"] in DATA_LAYERS:
            inputs += _data_inputs(lp)
    for name, shape in (input_shapes or {}).items():
        match = [i for i in inputs if i["name"] == name]
        if not match:
            raise GraftError(f"the net has no input {name!r}", f"its inputs: {[i['name'] for i in inputs]}")
        match[0]["shape"] = [int(d) for d in shape]
    if not inputs:
        raise GraftError("the prototxt declares no input (no `input`, Input layer or data layer)",
                         "add `input: \"data\"` with `input_shape { dim: ... }`")

    shapes: dict[str, tuple | None] = {i["name"]: (tuple(i["shape"]) if i["shape"] else None) for i in inputs}
    produced = set(shapes)
    ancestry = {name: frozenset([name]) for name in shapes}  # blob -> the inputs it is computed from
    taken: set[str] = set()
    glayers, modules, checked, losses, silenced = [], [], {}, [], []
    meta = torch.device("meta")  # where layers without the caffemodel's arrays are built (no memory)
    for lp in layers:
        t, name = lp["type"], lp["name"]
        bottoms, tops = [str(b) for b in all_of(lp, "bottom")], [str(x) for x in all_of(lp, "top")]
        if t in DATA_LAYERS:
            continue
        for b in bottoms:
            if b not in produced:
                raise GraftError(f"layer {name!r} ({t}) reads blob {b!r}, which no earlier layer produces",
                                 "check the bottom names and the phase (include/exclude rules)")
        if t in LOSS_LAYERS or t in METRIC_LAYERS:
            # caffe.proto floats are float32: 0.3 is read as 0.30000001; keep the value the author wrote
            weights = [float(str(np.float32(w))) for w in all_of(lp, "loss_weight")]
            losses.append({"name": name, "type": t, "bottoms": bottoms,
                           "loss_weight": weights[0] if weights else (1.0 if t in LOSS_LAYERS else 0.0)})
            continue
        if t in SINK_LAYERS:
            silenced.extend(b for b in bottoms if b not in silenced)
            continue
        cls = LAYERS[t]
        lo, hi = _arity(cls)
        if not lo <= len(bottoms) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi < 1 << 30 else f"at least {lo}"
            raise GraftError(f"layer {name!r} ({t}) has {len(bottoms)} bottoms but takes {want}",
                             "check the layer's bottom lines")
        bshapes = [shapes[b] for b in bottoms]
        known = all(b is not None for b in bshapes)
        try:
            attrs = cls.attrs(lp)
            pshapes = cls.blob_shapes(attrs, bshapes) if known else []
        except GraftError as e:
            raise GraftError(f"layer {name!r} ({t}): {e}") from None
        except (IndexError, ValueError, ZeroDivisionError) as e:
            got = [list(b) if b else None for b in bshapes]
            raise GraftError(f"layer {name!r} ({t}) does not fit inputs of shape {got} ({e})") from None
        for shape in pshapes:  # before any module is built, even on the meta device (torch overflows)
            if any(int(d) < 0 for d in shape) or math.prod(int(d) for d in shape) > MAX_BLOB:
                raise GraftError(f"layer {name!r} ({t}) would need a parameter of shape {list(shape)}",
                                 "the prototxt's sizes (num_output, kernel, input dims) are absurd or corrupt")
        found = blobs.get(name) if blobs else None
        if known:
            if found is not None and pshapes:
                checked[name] = _check_blobs(name, t, pshapes, found[1])
        elif not cls.blob_roles:  # no parameters: nothing to infer
            pshapes = []
        elif found is not None:
            pshapes = _legacy_shapes(t, found[1])
            checked[name] = [a.reshape(s) for a, s in zip(found[1], pshapes)]
        else:
            raise GraftError(f"layer {name!r} ({t}): its parameter shapes depend on an input whose shape the "
                             f"prototxt does not give", "pass the caffemodel, or the input shape: --input-shape "
                                                        "data=1,3,224,224, or input_shapes= in Python")
        # the caffemodel's tensors are given to the layer as it is built; without them it is built
        # on the meta device (no memory) and initialised or given a package's tensors later
        if name in checked:
            mod = cls(attrs, [tuple(s) for s in pshapes], cls.blob_tensors(attrs, checked[name]))
        else:
            with meta:
                mod = cls(attrs, [tuple(s) for s in pshapes])
        outs = (None,) * len(tops) if not known else _top_shapes(name, t, cls, attrs, mod, pshapes, bshapes)
        if len(outs) != len(tops):
            raise GraftError(f"layer {name!r} ({t}) has {len(tops)} tops but computes {len(outs)} blobs")
        anc = frozenset().union(*(ancestry[b] for b in bottoms))
        for top, o in zip(tops, outs):
            shapes[top] = o
            produced.add(top)
            ancestry[top] = anc
        glayers.append({"name": name, "type": t, "module": _module_name(name, taken), "bottoms": bottoms,
                        "tops": tops, "attrs": attrs, "shapes": [list(s) for s in pshapes]})
        shared = [_param_name(ps) for ps in all_of(lp, "param")]
        if any(shared):  # Caffe shares a parameter between the layers that name it alike
            glayers[-1]["param_names"] = shared
        modules.append(mod)

    # Labels: inputs that only feed the targets of loss/accuracy layers (bottom 1 on; Caffe's convention).
    preds, targets = set(), set()
    for loss in losses:
        k = 2 if loss["type"] == "ContrastiveLoss" else 1
        loss["predictions"] = loss["bottoms"][:k]
        for b in loss["bottoms"][:k]:
            preds |= ancestry[b]
        for b in loss["bottoms"][k:]:
            targets |= ancestry[b]
    labels = targets - preds
    for i in inputs:
        i["label"] = i["name"] in labels or (i["label"] and i["name"] not in preds)
    labels = {i["name"] for i in inputs if i["label"]}
    label_blobs = {b for b, a in ancestry.items() if a and a <= labels}
    graph = {"version": GRAPH_VERSION, "name": str(one(net, "name", "") or ""), "phase": phase,
             "inputs": [{"name": i["name"], "shape": i["shape"], "label": i["label"]} for i in inputs],
             "layers": glayers, "losses": losses, "silenced": silenced}
    graph.update(_outputs(graph, label_blobs))
    graph["blob_shapes"] = {k: (list(v) if v is not None else None) for k, v in shapes.items()}
    return graph, modules, checked


MAX_BLOB = 2**31 - 1  # elements of one parameter blob (Caffe's own limit: int32 counts)
MAX_INIT_BYTES = 1 << 30  # float32 bytes graftkit allocates for layers the caffemodel does not give
_ARITY: dict[type, tuple[int, int]] = {}


def _arity(cls) -> tuple[int, int]:
    """(fewest, most) bottoms a layer class's forward takes."""
    if cls not in _ARITY:
        import inspect
        params = list(inspect.signature(cls.forward).parameters.values())[1:]  # (without self)
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            lo, hi = sum(1 for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty), 1 << 30
            lo = max(lo, 1)
        else:
            pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            lo, hi = sum(1 for p in pos if p.default is p.empty), len(pos)
        _ARITY[cls] = (lo, hi)
    return _ARITY[cls]


def _param_name(spec: Any) -> str | None:
    """The share name of a ParamSpec (V2 `param { name: }`) or a V1 `param: "name"` string."""
    name = one(spec, "name") if isinstance(spec, dict) else spec
    return str(name) if name else None


def _top_shapes(name: str, t: str, cls, attrs: dict, mod, pshapes: list, bshapes: list[tuple]) -> tuple:
    """The tops' shapes: computed by the layer class, or by running it on meta tensors (no data, no work)."""
    try:
        outs = cls.top_shapes(attrs, bshapes)
        if outs is None:
            if isinstance(mod, nn.Module) and not all(p.is_meta for p in mod.parameters()):
                # given real weights: run a meta twin
                with torch.device("meta"):
                    mod = cls(attrs, [tuple(s) for s in pshapes])
            outs = mod(*[torch.empty(b, device="meta") for b in bshapes])
            outs = [tuple(o.shape) for o in (outs if isinstance(outs, tuple) else (outs,))]
    except GraftError as e:
        raise GraftError(f"layer {name!r} ({t}): {e}") from None
    except (RuntimeError, ValueError, IndexError) as e:
        raise GraftError(f"layer {name!r} ({t}) cannot run on inputs of shape "
                         f"{[list(b) for b in bshapes]}: {str(e).splitlines()[0]}") from None
    return tuple(tuple(int(d) for d in o) for o in outs)


def _outputs(graph: dict, label_blobs: set[str]) -> dict:
    """Default outputs in eval and train mode, and the loss weight of each loss's prediction."""
    input_names = {i["name"] for i in graph["inputs"]}
    order: dict[str, int] = {}
    available: dict[str, None] = {}
    for n, L in enumerate(graph["layers"]):
        for b in L["bottoms"]:
            available.pop(b, None)
        for t in L["tops"]:
            available[t] = None
            order.setdefault(t, n)
    natural = [b for b in available
               if b not in input_names and b not in graph["silenced"] and b not in label_blobs]
    loss_weights: dict[str, float] = {}
    for loss in graph["losses"]:
        if loss["type"] not in LOSS_LAYERS:
            continue
        for b in loss["predictions"]:
            if b not in input_names and b not in label_blobs:
                loss_weights[b] = max(loss_weights.get(b, 0.0), loss["loss_weight"])
    train = natural + [b for b in loss_weights if b not in natural]
    train.sort(key=lambda b: order.get(b, -1))
    top = max(loss_weights.values(), default=0.0)
    aux = {b for b, w in loss_weights.items() if w < top}
    return {"outputs": [b for b in train if b not in aux], "train_outputs": train, "loss_weights": loss_weights}


# ---------------------------------------------------------------- the module

class CaffeNet(nn.Module):
    """A Caffe net as a torch module; see the module docstring."""
    RESERVED = {"graph", "inputs", "outputs", "train_outputs", "loss_weights", "layer_names", "run", "layer",
                "blobs", "data_inputs", "input_shapes", "_stateless", "_steps", "_plans"}

    def __init__(self, graph: dict, modules: Sequence[nn.Module] | None = None,
                 state: Mapping[str, torch.Tensor] | None = None):
        """From a compiled graph: with the layer modules already built (convert), around the tensors
        of a package's `state` (build_loaded: GivenMismatch when they do not fit exactly), or else
        with the prototxt's fillers (none on the meta device)."""
        super().__init__()
        if graph.get("version") != GRAPH_VERSION:
            raise GraftError(f"Caffe graph version {graph.get('version')} is not one this graftkit builds",
                             "upgrade graftkit")
        self.graph = graph
        self.layer_names: dict[str, str] = {}  # Caffe layer name -> attribute name
        self._stateless: list = []  # layers without state (CaffeOps, and modules that hold nothing)
        # built on the meta device (how packages load) the fillers have nothing to fill
        fill = modules is None and state is None and not torch.empty(0).is_meta
        given: dict[str, dict[str, torch.Tensor]] = {}  # module name -> its tensors by role
        for key, t in (state or {}).items():
            mname, _, role = key.rpartition(".")
            given.setdefault(mname, {})[role] = t
        submodules, attributes, taken = self._modules, self.__dict__, self._TAKEN
        for n, L in enumerate(graph["layers"]):
            name = L["module"]
            if not isinstance(name, str) or not name or "." in name or name in attributes \
                    or name in submodules or name in taken:
                raise GraftError(f"layer {L['name']!r} has an invalid or duplicate module name {name!r}",
                                 "the package is corrupt; convert the model again")
            if modules is not None:
                mod = modules[n]
            elif state is not None:
                mine = given.pop(name, {})
                held = len(mine)
                mod = LAYERS[L["type"]](L["attrs"], L["shapes"], mine)
                if mine:  # tensors the layer did not take
                    raise GivenMismatch(name)
            else:
                mod = LAYERS[L["type"]](L["attrs"], [tuple(s) for s in L["shapes"]])
                if fill:
                    mod.reset_parameters()
            if state is None:
                held = isinstance(mod, nn.Module) and (
                    len(mod._buffers) + sum(1 for v in mod._parameters.values() if v is not None))
            if held or mod.STATEFUL:
                submodules[name] = mod  # (add_module's checks, done above, cost more than the insert)
            else:  # layers without state are plain attributes (most are not even modules: CaffeOp)
                attributes[name] = mod
                self._stateless.append(mod)
            self.layer_names[L["name"]] = name
        self.inputs = [i["name"] for i in graph["inputs"]]
        self.input_shapes = {i["name"]: i["shape"] for i in graph["inputs"]}
        self.data_inputs = [i["name"] for i in graph["inputs"] if not i["label"]] or self.inputs[:1]
        self.outputs = list(graph["outputs"])
        self.train_outputs = list(graph["train_outputs"])
        self.loss_weights = dict(graph["loss_weights"])
        blobs: dict[str, int] = {}
        for name in self.inputs + [t for L in graph["layers"] for t in L["tops"]]:
            blobs.setdefault(name, len(blobs))
        self.blobs = blobs  # blob name -> slot in the forward's list
        slot = blobs.__getitem__
        self._steps = [(L["module"], tuple(map(slot, L["bottoms"])), tuple(map(slot, L["tops"])))
                       for L in graph["layers"]]
        self._plans: dict[tuple[str, ...], tuple] = {}
        if given:  # tensors for modules the graph does not have
            raise GivenMismatch(next(iter(given)))
        self._tie_shared()

    _TAKEN = frozenset(dir(nn.Module)) | RESERVED  # names a layer's module cannot have

    def _tie_shared(self) -> None:
        """Layers that name a parameter alike (`param { name: ... }`) use one Parameter, as in Caffe."""
        owners: dict[str, nn.Parameter] = {}
        for L in self.graph["layers"]:
            if not L.get("param_names"):
                continue
            mod = getattr(self, L["module"])
            for role, pname in zip(mod.blob_roles, L["param_names"]):
                p = getattr(mod, role, None)
                if not pname or p is None:
                    continue
                if pname not in owners:
                    owners[pname] = p
                elif owners[pname].shape != p.shape:
                    raise GraftError(f"layer {L['name']!r} shares parameter {pname!r} but its shape {list(p.shape)} "
                                     f"differs from the first user's {list(owners[pname].shape)}")
                else:
                    setattr(mod, role, owners[pname])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """torch's load_state_dict; with assign=True (how packages load) a direct path that skips
        torch's per-module recursion, the main cost of loading a net of many small layers."""
        mods = [self] + [m for m in self._modules.values() if m is not None]
        if not assign or torch.__future__.get_swap_module_params_on_conversion() or any(
                m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks or m._modules for m in mods[1:]) \
                or self._load_state_dict_pre_hooks or self._load_state_dict_post_hooks:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        missing, errors, seen = [], [], set()
        for mname, mod in self._modules.items():
            for table in (mod._parameters, mod._buffers):
                for name, old in table.items():
                    key = f"{mname}.{name}"
                    if old is None or (table is mod._buffers and name in mod._non_persistent_buffers_set):
                        continue
                    if key not in state_dict:
                        missing.append(key)
                        continue
                    seen.add(key)
                    new = state_dict[key]
                    if new.shape != old.shape:
                        errors.append(f"size mismatch for {key}: copying a param with shape {new.shape} from "
                                      f"checkpoint, the shape in current model is {old.shape}.")
                    elif table is mod._parameters:
                        table[name] = new if isinstance(new, nn.Parameter) else nn.Parameter(
                            new, requires_grad=old.requires_grad)
                    else:
                        table[name] = new.detach()
        unexpected = [k for k in state_dict if k not in seen]
        if strict:
            errors[:0] = [f"Missing key(s) in state_dict: {', '.join(map(repr, missing))}."] if missing else []
            errors[:0] = [f"Unexpected key(s) in state_dict: {', '.join(map(repr, unexpected))}."] \
                if unexpected else []
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for CaffeNet:\n\t" + "\n\t".join(errors))
        self._tie_shared()
        from torch.nn.modules.module import _IncompatibleKeys
        return _IncompatibleKeys(missing, unexpected)

    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for mod in self._modules.values():
            if mod is None:
                continue
            if type(mod).train is nn.Module.train and not mod._modules:
                mod.training = mode  # a plain leaf: what Module.train would do, without its recursion
            else:
                mod.train(mode)
        for mod in self._stateless:
            mod.training = mode
        return self

    def extra_repr(self) -> str:
        return (f"name={self.graph['name']!r}, phase={self.graph['phase']}, {len(self.layer_names)} layers "
                f"({len(self._modules)} with parameters or training behaviour shown), inputs={self.inputs}, "
                f"outputs={self.outputs}")

    def layer(self, caffe_name: str):
        """A layer (its module, or its CaffeOp when it has no state) by its Caffe name."""
        try:
            return getattr(self, self.layer_names[caffe_name])
        except KeyError:
            raise GraftError(f"the net has no layer {caffe_name!r}") from None

    def _plan(self, outputs: tuple[str, ...]):
        """The layers needed for `outputs`, in order, with the inputs they need (cached)."""
        plan = self._plans.get(outputs)
        if plan is not None:
            return plan
        for o in outputs:
            if o not in self.blobs:
                raise GraftError(f"the net has no blob {o!r}",
                                 f"blobs are named by layer tops, e.g. {list(self.blobs)[-3:]}")
        need = {self.blobs[o] for o in outputs}
        steps = []
        for mname, ins, outs in reversed(self._steps):
            if need.intersection(outs):
                need.difference_update(outs)
                need.update(ins)
                steps.append((getattr(self, mname), ins, outs, len(outs) > 1))
        steps.reverse()
        names = {v: k for k, v in self.blobs.items()}
        plan = (steps, frozenset(names[i] for i in need), tuple(self.blobs[o] for o in outputs))
        self._plans[outputs] = plan
        return plan

    def _feeds(self, xs: tuple) -> dict[str, torch.Tensor]:
        if len(xs) == 1 and isinstance(xs[0], Mapping):
            feeds = dict(xs[0])
        else:
            if len(xs) > len(self.data_inputs) + len(self.inputs):
                raise GraftError(f"the net takes {len(self.data_inputs)} input(s) {self.data_inputs}, got {len(xs)}")
            order = self.data_inputs + [i for i in self.inputs if i not in self.data_inputs]
            feeds = dict(zip(order, xs))
        for k in feeds:
            if k not in self.inputs:
                raise GraftError(f"the net has no input {k!r}", f"its inputs: {self.inputs}")
        return feeds

    def run(self, inputs: torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
            outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Any blobs by name (default: the default outputs of the current mode)."""
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        elif isinstance(inputs, Mapping):
            inputs = (inputs,)
        feeds = self._feeds(tuple(inputs))
        if outputs is None:
            outputs = self.train_outputs if self.training else self.outputs
        elif isinstance(outputs, str):
            outputs = [outputs]
        steps, need, out_slots = self._plan(tuple(outputs))
        missing = need - set(feeds)
        if missing:
            raise GraftError(f"input {sorted(missing)} is needed for outputs {list(outputs)} but was not given",
                             f"pass it, e.g. net.run({{{sorted(missing)[0]!r}: x}})")
        slots: list[Any] = [None] * len(self.blobs)
        for k, v in feeds.items():
            slots[self.blobs[k]] = v
        for mod, ins, outs, multi in steps:
            y = mod(*[slots[i] for i in ins])
            if multi:
                for i, v in zip(outs, y):
                    slots[i] = v
            else:
                slots[outs[0]] = y
        return {o: slots[i] for o, i in zip(outputs, out_slots)}

    def forward(self, *xs):
        """net(x), net(x1, x2) or net({"data": x}): the default output, or a dict of them."""
        res = self.run(xs[0] if len(xs) == 1 and isinstance(xs[0], Mapping) else xs)
        return next(iter(res.values())) if len(res) == 1 else res


# ---------------------------------------------------------------- preprocessing metadata

def _preprocessing(layers: list[dict], graph: dict, prototxt: Path | None, mean_path: Path | None) -> dict:
    first = graph["inputs"][0] if graph["inputs"] else None
    for i in graph["inputs"]:
        if not i["label"]:
            first = i
            break
    shape = (first or {}).get("shape")
    src = next((lp for lp in layers if lp["type"] in DATA_LAYERS and first and first["name"] in
                [str(t) for t in all_of(lp, "top")]), None)
    tp = sub(src, "transform_param")
    channels = shape[1] if shape and len(shape) > 1 else 3
    pre: dict[str, Any] = {"input_size": list(shape[1:]) if shape else None,
                           "pixel_range": 255.0, "channel_order": "BGR" if channels == 3 else "gray"}
    notes = []
    mean = [float(m) for m in all_of(tp, "mean_value")]
    if len(mean) == 1:
        mean = mean * channels
    mean_file = one(tp, "mean_file")
    given = mean_path is not None
    if not given and mean_file:
        # The prototxt is untrusted data: its mean_file is looked up by name beside it, nowhere else.
        cand = (prototxt.parent if prototxt else Path()) / Path(str(mean_file).replace("\\", "/")).name
        if cand.is_file():
            mean_path = cand
        else:
            notes.append(f"mean_file {mean_file} not found beside the prototxt: pass the .binaryproto to convert")
    if mean_path is not None:
        from ..formats import caffe as caffe_file
        try:
            img = np.asarray(caffe_file.read_binaryproto_mean(mean_path), dtype=np.float64)
        except GraftError as e:
            if given:
                raise
            notes.append(f"mean_file {mean_path.name} unreadable ({e})")
        else:
            mean = [float(v) for v in img.mean(axis=(-2, -1)).reshape(-1)]
            pre["mean_file"] = mean_path.name
            notes.append("mean image reduced to per-channel means")
    if not mean:
        mean = [0.0] * channels
        if not tp:
            notes.append("the prototxt gives no transform_param: mean unknown (zeros); pass a train_val prototxt "
                         "or the mean .binaryproto")
    scale = float(one(tp, "scale", 1.0))
    pre["mean"] = mean
    pre["std"] = [1.0 / scale] * len(mean)
    crop = int(one(tp, "crop_size", 0))
    if crop:
        pre["crop"] = crop
    if "mirror" in tp:
        pre["mirror"] = as_bool(one(tp, "mirror"))
    if notes:
        pre["notes"] = notes
    return pre


# ---------------------------------------------------------------- public entry points

def _parse_prototxt(source: str | Path) -> dict:
    from ..formats import caffe_prototxt
    return caffe_prototxt.parse(source)


def convert(paths: Sequence[str | os.PathLike], phase: str | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None) -> CaffeNet:
    """A prototxt (+ caffemodel, + mean .binaryproto) -> a CaffeNet with its package metadata.
    Without a caffemodel the weights are initialised by the prototxt's fillers (PyTorch's default
    for weights that have none); without a prototxt the caffemodel's own net definition is used
    (parameter shapes then come from its blobs when it declares no input shape)."""
    proto, model, mean = _split_paths([Path(p) for p in paths])
    phase_given, phase = phase, (phase or "TEST").upper()
    if phase not in _PHASES:
        raise GraftError(f"phase {phase!r} is not TRAIN or TEST")
    if proto is not None:
        text = proto.read_text(encoding="utf-8", errors="replace")
        net = _parse_prototxt(proto)
        layers = select_layers(net, phase)
        check_supported(layers, str(proto))  # before reading any weights
        blobs = read_caffemodel_blobs(model) if model else None
    else:  # a caffemodel alone: it carries its own (usually train_val) net definition
        from ..formats import caffe as caffe_file
        text, net = None, caffe_file.read_net(model)
        if phase_given is None:  # a caffemodel is saved from one phase, recorded in its layers
            saved = [one(lp, "phase") for lp in all_of(net, "layer") or all_of(net, "layers")]
            phase = enum(next((p for p in saved if p is not None), "TRAIN"), _PHASES, "TRAIN")
        layers = select_layers(net, phase)
        check_supported(layers, str(model))
        blobs = caffemodel_blobs(net)
    graph, modules, checked = compile_graph(net, phase, blobs, input_shapes, layers)
    if model is not None and not checked and any(L["shapes"] for L in graph["layers"]):
        raise GraftError(f"{model}: none of its layers matches a layer of {proto} by name "
                         f"(it holds {some(blobs)})",
                         "Caffe pairs weights with layers by name: give the caffemodel trained with this prototxt")
    need = sum(4 * math.prod(s) for L in graph["layers"] if L["name"] not in checked for s in L["shapes"])
    if need > MAX_INIT_BYTES:
        raise GraftError(f"the layers without weights in the caffemodel need {need / 2**30:.1f} GiB of parameters, "
                         f"more than the {MAX_INIT_BYTES >> 30} GiB graftkit initialises",
                         "the prototxt's sizes are absurd or corrupt; or give the caffemodel that holds them")
    left = []
    for L, mod in zip(graph["layers"], modules):
        if L["name"] in checked:  # (built around the caffemodel's tensors)
            continue
        if L["shapes"]:
            mod.to_empty(device="cpu")
            mod.reset_parameters()
            left.append(L["name"])
        elif isinstance(mod, nn.Module) and (mod._parameters or mod._buffers):
            mod.to_empty(device="cpu")
    net_mod = CaffeNet(graph, modules)  # (ties shared parameters to their first user's loaded values)
    unused = sorted(set(blobs or {}) - set(checked))
    spec = {"converter": "caffe", "prototxt": text, "phase": phase, "graph": graph}
    if input_shapes:
        spec["input_shapes"] = {k: list(v) for k, v in input_shapes.items()}
    sources = [str(p) for p in (proto, model, mean) if p]
    report = {"converter": "caffe", "layers": len(graph["layers"]),
              "loaded": [L["name"] for L in graph["layers"] if L["name"] in checked],
              "initialised": left, "unused_caffemodel_layers": unused}
    attach(net_mod, make_meta(spec, preprocessing=_preprocessing(layers, graph, proto, mean),
                              provenance={"sources": sources, "converter": "caffe",
                                          "caffe_name": graph["name"]},
                              report=report))
    return net_mod.eval()


def caffe_blobs(net: CaffeNet) -> list[tuple[str, str, list[np.ndarray]]]:
    """The net's parameters as Caffe blobs, (layer name, type, [arrays in Caffe's shapes]), ready for
    formats.caffe.write_caffemodel: graftkit writes back what it reads."""
    out = []
    for L in net.graph["layers"]:
        if not L["shapes"]:
            continue
        mod = getattr(net, L["module"])
        if L["type"] == "BatchNorm":
            arrays = [mod.running_mean, mod.running_var, torch.ones(1)]
        else:
            arrays = [getattr(mod, role) for role in mod.blob_roles if getattr(mod, role, None) is not None]
            if L["type"] == "InnerProduct" and L["attrs"]["transpose"]:
                arrays[0] = arrays[0].t()
        out.append((L["name"], L["type"], [a.detach().cpu().float().contiguous().numpy().reshape(s)
                                           for a, s in zip(arrays, L["shapes"])]))
    return out


def check_graph(graph: Any) -> dict:
    """A package's compiled graph has the structure CaffeNet relies on (the package is untrusted data):
    typed fields, known layer types, bottoms that earlier layers or inputs produce, bounded shapes."""
    def bad(what: str) -> GraftError:
        return GraftError(f"the package's Caffe graph is corrupt ({what})", "convert the model again")

    def names(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    if not isinstance(graph, dict):
        raise bad("not an object")
    inputs, layers = graph.get("inputs"), graph.get("layers")
    if not isinstance(inputs, list) or not isinstance(layers, list):
        raise bad("no inputs or layers list")
    blobs = set()
    for i in inputs:
        if not isinstance(i, dict) or not isinstance(i.get("name"), str) or not (
                i.get("shape") is None or isinstance(i["shape"], list) and all(type(d) is int and 0 <= d < 2**31
                                                                               for d in i["shape"])):
            raise bad(f"input {short(i)}")
        blobs.add(i["name"])
    for L in layers:
        if not isinstance(L, dict) or L.get("type") not in LAYERS or not all(
                isinstance(L.get(k), str) for k in ("name", "module")) or not names(L.get("bottoms")) \
                or not names(L.get("tops")) or not isinstance(L.get("attrs"), dict) \
                or not isinstance(L.get("shapes"), list):
            raise bad(f"layer {short(L)}")
        for shape in L["shapes"]:
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) \
                    or math.prod(shape) > MAX_BLOB:
                raise bad(f"layer {L['name']!r} has a parameter of shape {short(shape)}")
        missing = [b for b in L["bottoms"] if b not in blobs]
        if missing:
            raise bad(f"layer {L['name']!r} reads {short(missing)}, which no earlier layer produces")
        lo, hi = _arity(LAYERS[L["type"]])
        if not lo <= len(L["bottoms"]) <= hi:
            raise bad(f"layer {L['name']!r} has {len(L['bottoms'])} bottoms")
        blobs.update(L["tops"])
    if not names(graph.get("outputs")) or not names(graph.get("train_outputs")) \
            or not set(graph["outputs"]) | set(graph["train_outputs"]) <= blobs:
        raise bad("outputs")
    if not isinstance(graph.get("loss_weights"), dict):
        raise bad("loss_weights")
    return graph


def build_loaded(spec: dict, tensors: Mapping[str, torch.Tensor]) -> CaffeNet | None:
    """The module of a package built straight around its tensors (package.load's fast path: no empty
    build, no load_state_dict); None when they do not fit the graph exactly, or the spec has no
    graph of this version (package.load then takes the general path, which says what differs)."""
    graph = spec.get("graph")
    if not isinstance(graph, dict) or graph.get("version") != GRAPH_VERSION:
        return None
    try:
        return CaffeNet(check_graph(graph), state=tensors)
    except GivenMismatch:
        return None


def build_from_spec(spec: dict, *, trust: bool = False) -> CaffeNet:
    """The architecture of a converted package (weights initialised; the package loads its tensors)."""
    graph = spec.get("graph")
    if not isinstance(graph, dict) or graph.get("version") != GRAPH_VERSION:
        if not isinstance(spec.get("prototxt"), str) or not spec["prototxt"]:
            raise GraftError("the Caffe package spec has neither a graph nor a prototxt",
                             "the package is corrupt; convert the model again")
        net = _parse_prototxt(spec["prototxt"])
        graph, _, _ = compile_graph(net, spec.get("phase", "TEST"), None, spec.get("input_shapes"))
    return CaffeNet(check_graph(graph))
