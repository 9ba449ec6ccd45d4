"""ONNX models -> torch modules, through onnx2torch, checked against onnxruntime.

onnx2torch does the op-by-op conversion into a torch.fx GraphModule. It falls
short on things exporters commonly emit, which we normalise first:
  - weights reached through `Identity` nodes (torch.onnx.export deduplicates equal
    initializers, e.g. the zero biases of a fresh network, that way) and `Constant`
    nodes: onnx2torch requires Conv/Gemm weights and Clip bounds to be initializers,
    so both are folded into initializers;
  - omitted optional inputs written as '' (e.g. Clip without max): dropped when trailing;
  - an `If` whose condition does not depend on the inputs: replaced by the branch it takes;
  - ops onnx2torch lacks (GlobalMaxPool, LSTM, GRU, BatchNormalization of unknown rank): graftkit's
    own converters in nets/onnx_ops.py.
An op onnx2torch does not know is refused by name, with the nodes using it,
before anything is built. The converted module returns a dict by output name
when the graph has several outputs, and takes and returns NCHW even where the graph
was written for NHWC (its leading and trailing Transposes are dropped, see
`nchw_inputs` and `nchw_outputs`).
`convert(..., verify_with_onnxruntime=True)` (the default) runs onnxruntime and
the module on the same random input and refuses a mismatch. Dynamic dims take
`input_shapes` (`--input-shape`) or a representative size (`check_shapes`); the
provenance records the shapes checked, or why nothing was (and the CLI says so).

For packages the spec stores the graph with the large float initializers'
data removed (dims kept); `build_from_spec` zero-fills them, converts, and the
package's state_dict supplies the weights.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import GraftError
from ..formats.onnx_file import load_model, normalise  # noqa: F401 - normalise: one place, shared with the reader
from ..meta import attach, make_meta
from .registry import Unsupported

STRIP_ABOVE = 64  # float initializers with more elements than this leave the spec (the state_dict has them)


def claims(paths: list[Path]) -> bool:
    return any(Path(p).suffix.lower() == ".onnx" for p in paths)


def inline_constant_ifs(model) -> int:
    """Replace each top-level `If` whose condition does not depend on the graph's inputs (an initializer,
    or computed from initializers only) by the nodes of the branch it takes; returns how many. The
    branch's initializers join the graph and its outputs are renamed to the If's through Identity nodes."""
    import onnx
    g = model.graph
    done = 0
    while True:
        inits = {t.name: t for t in g.initializer}
        node = next((n for n in g.node if n.op_type == "If" and _constant_condition(model, n.input[0], inits)
                     is not None), None)
        if node is None:
            return done
        cond = _constant_condition(model, node.input[0], inits)
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
        g.initializer.extend(branch.initializer)
        new = list(branch.node) + [onnx.helper.make_node("Identity", [b.name], [o], name=f"{node.name or 'If'}/{o}")
                                   for b, o in zip(branch.output, node.output) if o]
        at = list(g.node).index(node)
        nodes = list(g.node[:at]) + new + list(g.node[at + 1:])
        del g.node[:]
        g.node.extend(nodes)
        done += 1


def _constant_condition(model, name: str, inits: dict) -> bool | None:
    """The value of an If's condition when it does not depend on the graph's inputs, else None."""
    from onnx import numpy_helper
    if name in inits:
        return bool(numpy_helper.to_array(inits[name]).reshape(-1)[0])
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, stack, seen = [], [name], set()
    while stack:  # the nodes computing `name`, if they start from initializers only
        v = stack.pop()
        if v in seen or v in inits or v == "":
            continue
        seen.add(v)
        n = producer.get(v)
        if n is None or n.op_type in ("If", "Loop", "Scan") or any(a.g.node for a in n.attribute if a.g):
            return None  # a graph input, or control flow: leave it to the converter
        needed.append(n)
        stack.extend(n.input)
    try:
        import onnx
        from onnx.reference import ReferenceEvaluator
        order = [n for n in model.graph.node if n in needed]
        used = {i: inits[i] for n in order for i in n.input if i in inits}
        sub = onnx.helper.make_graph(order, "cond", [], [onnx.helper.make_empty_tensor_value_info(name)],
                                     list(used.values()))
        m = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        (value,) = ReferenceEvaluator(m).run(None, {})
        return bool(value.reshape(-1)[0])
    except Exception:  # noqa: BLE001 - anything the reference runtime cannot evaluate stays an If
        return None


def _one_node_per_output(model) -> None:
    """Give each graph output its own Identity node where one node yields several (an LSTM's Y, Y_h, Y_c):
    onnx2torch returns such a node's tuple once, in the node's order, not one value per output."""
    import onnx
    g = model.graph
    outputs = {o.name for o in g.output}
    for n in list(g.node):
        mine = [k for k, o in enumerate(n.output) if o in outputs]
        if len(mine) < 2:
            continue
        for k in mine:
            name = n.output[k]
            n.output[k] = f"{name}__graftkit_out"
            g.node.append(onnx.helper.make_node("Identity", [n.output[k]], [name], name=f"{name}__identity"))


def _perm(node) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def nchw_inputs(model) -> list[str]:
    """Make NHWC graph inputs (tf2onnx and friends) NCHW, our modules' contract.

    Such graphs open with Transpose(perm=[0, 3, 1, 2]) on the input; we drop those
    transposes and declare the input NCHW. Returns the inputs changed."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    changed = []
    for inp in g.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in inits or len(dims) != 4:
            continue
        users = [n for n in g.node if inp.name in n.input]
        if not users or not all(n.op_type == "Transpose" and _perm(n) == [0, 3, 1, 2]
                                and n.output[0] not in outputs for n in users):
            continue
        for t in users:
            for n in g.node:
                for k, name in enumerate(n.input):
                    if name == t.output[0]:
                        n.input[k] = inp.name
            g.node.remove(t)
            stale = [v for v in g.value_info if v.name == t.output[0]]
            for v in stale:
                g.value_info.remove(v)
        _to_nchw(dims)
        changed.append(inp.name)
    return changed


def _to_nchw(dims) -> None:
    """Reorder a declared NHWC shape (a repeated Dimension field) to NCHW, in place."""
    import onnx
    old = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for o, d in zip(old, dims):
        o.CopyFrom(d)
    del dims[:]
    dims.extend(old[i] for i in (0, 3, 1, 2))


def nchw_outputs(model) -> list[str]:
    """Make 4-D graph outputs that the graph turns NHWC at its very end (Transpose(perm=[0, 2, 3, 1]))
    NCHW: that Transpose becomes an Identity, so the output keeps its name. Returns the outputs changed."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    changed = []
    for out in g.output:
        dims = out.type.tensor_type.shape.dim
        t = producer.get(out.name)
        if t is None or t.op_type != "Transpose" or _perm(t) != [0, 2, 3, 1]:
            continue
        t.op_type = "Identity"
        del t.attribute[:]
        if len(dims) == 4:
            _to_nchw(dims)
        changed.append(out.name)
    return changed


def check_ops(model, where: str) -> None:
    """Refuse ops onnx2torch cannot convert, naming them and the nodes that use them."""
    from onnx2torch.node_converters.registry import get_converter

    from . import onnx_ops  # noqa: F401 - registers graftkit's converters (GlobalMaxPool, LSTM, GRU, BatchNorm)
    opsets = {o.domain: o.version for o in model.opset_import}
    unknown: dict[str, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        domain = n.domain if n.domain not in ("", "ai.onnx") else ""
        try:
            get_converter(operation_type=n.op_type, version=opsets.get(n.domain, opsets.get("", 1)), domain=domain)
        except NotImplementedError:
            key = n.op_type if not domain else f"{domain}.{n.op_type}"
            unknown.setdefault(key, []).append(n.name or f"#{i}")
    if unknown:
        hint = f"the model is at opset {opsets.get('', '?')}: re-export with a different opset, or replace these ops"
        if "If" in unknown:
            hint = "an If converts when its condition does not depend on the inputs; " + hint
        raise Unsupported("ONNX", unknown, hint, where=where)


def _outputs_as_dict(gm, names: list[str]):
    """Make a multi-output GraphModule return {output name: tensor}."""
    if len(names) < 2:
        return gm
    out = next(n for n in gm.graph.nodes if n.op == "output")
    values = out.args[0]
    if not isinstance(values, (tuple, list)) or len(values) != len(names):
        return gm
    out.args = ({name: v for name, v in zip(names, values)},)
    gm.recompile()
    return gm


def to_module(model, where: str) -> nn.Module:
    from onnx2torch import convert as o2t
    model = normalise(model)
    if inline_constant_ifs(model):
        model = normalise(model)  # the inlined branch's own Constant nodes
    _one_node_per_output(model)
    check_ops(model, where)
    try:
        gm = o2t(model)
    except NotImplementedError as e:
        raise GraftError(f"{where}: onnx2torch cannot convert this model ({e})",
                         "re-export with a different opset, or simplify the graph") from None
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise GraftError(f"{where}: the ONNX graph could not be converted ({type(e).__name__}: {e})",
                         "check the model with onnx.checker, or re-export it") from None
    names = [o.name for o in model.graph.output]
    gm = _outputs_as_dict(gm, names)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    gm.inputs = [i.name for i in graph_inputs]
    gm.input_shapes = {i.name: [d.dim_value if d.HasField("dim_value") else None
                                for d in i.type.tensor_type.shape.dim] for i in graph_inputs}
    gm.outputs = gm.train_outputs = names
    return gm


def graph_spec(model) -> str:
    """The model without its large float weights (dims kept), base64, for the package spec."""
    import onnx
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in skeleton.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                           onnx.TensorProto.BFLOAT16) and n > STRIP_ABOVE:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("double_data")
            t.ClearField("int32_data")
            t.doc_string = "graftkit:stripped"
    return base64.b64encode(skeleton.SerializeToString()).decode("ascii")


def build_from_spec(spec: dict[str, Any], *, trust: bool = False) -> nn.Module:
    import onnx
    try:
        model = onnx.ModelProto()
        model.ParseFromString(base64.b64decode(spec["graph"]))
    except Exception as e:  # noqa: BLE001 - any decode failure means a damaged package
        raise GraftError(f"the package's ONNX spec is damaged ({e})") from None
    for t in model.graph.initializer:
        if t.doc_string == "graftkit:stripped":
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            t.raw_data = np.zeros(tuple(t.dims), dtype=dtype).tobytes()
            t.doc_string = ""
    # onnx2torch copies real arrays into its modules: build on the CPU even inside a meta-device context.
    with torch.device("cpu"):
        return to_module(model, "package ONNX graph")


class RuntimeRefused(Exception):
    """onnxruntime itself cannot run the model on the shape chosen for the check."""


SPATIAL, OTHER = 224, 16  # sizes for dynamic dims with no hint: an ImageNet image, a short sequence


def check_shapes(model, given: dict[str, list[int]] | None) -> tuple[dict[str, list[int]] | None, str]:
    """A concrete shape per graph input for the onnxruntime check, and what was chosen or why none:
    declared dims as they are; dynamic ones from `given` (--input-shape NAME=...), else a batch of 1,
    and SPATIAL for the last two dims of a 4-D (image) input, OTHER elsewhere."""
    import onnx
    inits = {t.name for t in model.graph.initializer}
    given = dict(given or {})
    shapes, guessed = {}, []
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if not np.issubdtype(dtype, np.floating):
            return None, f"input {i.name} is {np.dtype(dtype).name}, and graftkit checks with random floats only"
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        if i.name in given:
            if dims and len(given[i.name]) != len(dims):
                raise GraftError(f"--input-shape {i.name}={','.join(map(str, given[i.name]))} has "
                                 f"{len(given[i.name])} dims, the graph's input has {len(dims)}")
            shapes[i.name] = list(given.pop(i.name))
            continue
        if not tt.HasField("shape"):
            return None, f"input {i.name} has no declared rank; pass --input-shape {i.name}=..."
        concrete = []
        for k, d in enumerate(dims):
            if d is None:
                d = 1 if k == 0 else (SPATIAL if len(dims) == 4 and k >= 2 else OTHER)
                guessed.append(i.name)
            concrete.append(d)
        shapes[i.name] = concrete
    if given:
        raise GraftError(f"--input-shape names {', '.join(given)}, not an input of this graph",
                         f"its inputs: {', '.join(shapes) or 'none'}")
    how = "dynamic dims set to a representative size" if guessed else "the declared shape"
    return shapes, how


def verify(net: nn.Module, model, original: bytes, nhwc: list[str], path: Path,
           nhwc_out: list[str] = (), shapes: dict[str, list[int]] | None = None) -> float:
    """Max relative error of `net` against onnxruntime running the `original` model on the same random
    input of `shapes` (from check_shapes). Inputs in `nhwc` are fed to onnxruntime transposed, and its
    outputs in `nhwc_out` are transposed back."""
    import onnx
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    feeds = {k: rng.standard_normal(v).astype(types[k]) for k, v in shapes.items()}
    try:
        sess = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
        expected = sess.run(None, {k: v.transpose(0, 2, 3, 1) if k in nhwc else v for k, v in feeds.items()})
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: the size we picked does not suit the model
        raise RuntimeRefused(str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from None
    try:
        with torch.no_grad():
            ours = net(*[torch.from_numpy(v) for v in feeds.values()])
    except Exception as e:  # noqa: BLE001 - onnxruntime ran it: the conversion is at fault
        raise GraftError(f"{path}: the converted network fails on {shapes}, where onnxruntime runs "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                         "please report this model") from None
    if not isinstance(ours, dict):
        ours = {net.outputs[0]: ours} if torch.is_tensor(ours) else dict(zip(net.outputs, ours))
    worst = 0.0
    for name, exp in zip(net.outputs, expected):
        if name in nhwc_out:
            exp = exp.transpose(0, 3, 1, 2)
        got = ours[name].detach().numpy().astype(np.float64)
        if got.shape != exp.shape:
            raise GraftError(f"{path}: the converted network's output {name} has shape {list(got.shape)}, "
                             f"onnxruntime's {list(exp.shape)}", "please report this model")
        scale = max(float(np.abs(exp).max()), 1e-12) if exp.size else 1.0
        worst = max(worst, float(np.abs(got - exp).max()) / scale if exp.size else 0.0)
    if worst > 1e-4:
        raise GraftError(f"{path}: the converted network differs from onnxruntime (relative error {worst:.2e})",
                         "this model uses an op onnx2torch converts inexactly; please report it")
    return worst


def convert(paths: list[Path], *, verify_with_onnxruntime: bool = True,
            input_shapes: dict[str, list[int]] | None = None, **kwargs) -> nn.Module:
    path = next(Path(p) for p in paths if Path(p).suffix.lower() == ".onnx")
    model = load_model(path)
    original = model.SerializeToString() if verify_with_onnxruntime else b""
    nhwc, nhwc_out = nchw_inputs(model), nchw_outputs(model)
    net = to_module(model, str(path))
    spec = {"converter": "onnx", "graph": graph_spec(model), "inputs": net.inputs,
            "outputs": net.outputs}
    prov = {"sources": [str(path)], "converter": "onnx",
            "producer": f"{model.producer_name} {model.producer_version}".strip()}
    if nhwc:
        prov["nhwc_inputs_made_nchw"] = nhwc
    if nhwc_out:
        prov["nhwc_outputs_made_nchw"] = nhwc_out
    net.eval()
    if verify_with_onnxruntime:
        shapes, how = check_shapes(model, input_shapes)
        if shapes is None:
            prov["onnxruntime_not_checked"] = how
        else:
            try:
                prov["onnxruntime_max_rel_err"] = verify(net, model, original, nhwc, path, nhwc_out, shapes)
                prov["onnxruntime_checked_shapes"] = shapes
                prov["onnxruntime_checked_how"] = how
            except RuntimeRefused as e:
                if input_shapes:
                    raise GraftError(f"{path}: onnxruntime cannot run the model on {shapes} ({e})",
                                     "check the --input-shape") from None
                prov["onnxruntime_not_checked"] = (f"onnxruntime cannot run it on {shapes} ({how}): {e}; "
                                                   "pass --input-shape NAME=N,C,H,W")
    return attach(net, make_meta(spec, provenance=prov))
