"""ONNX models (`.onnx`): the initializers, tagged by the node that consumes them.

ONNX keeps weights as graph initializers named freely by the exporter, so what a
tensor *is* comes from the node using it: Conv -> convolution weight/bias,
Gemm/MatMul -> linear (Gemm with transB=0 and MatMul store [in, out]: we
transpose to PyTorch's [out, in]), BatchNormalization -> scale/B/mean/var as
weight/bias/running_mean/running_var with its epsilon, PRelu -> slope.
A layer's position is the order of its first use in the graph.
Weights held in `Constant` nodes (paddle2onnx, some tf2onnx exports) are folded
into initializers first, by `normalise`, the same function the converter uses.
External data files are read only from inside the model's own folder: a model
is untrusted data and must not make us read arbitrary files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GraftError
from .base import TensorRecord, TensorSet

# op type -> (kind, roles of input slots 1..n)
OP_ROLES = {
    "Conv": ("conv", ("weight", "bias")),
    "ConvTranspose": ("conv_transpose", ("weight", "bias")),
    "Gemm": ("linear", ("weight", "bias")),
    "MatMul": ("linear", ("weight",)),
    "BatchNormalization": ("batchnorm", ("weight", "bias", "running_mean", "running_var")),
    "InstanceNormalization": ("norm", ("weight", "bias")),
    "LayerNormalization": ("norm", ("weight", "bias")),
    "PRelu": ("prelu", ("weight",)),
}


def sniff(path: Path, head: bytes) -> bool:
    return path.suffix.lower() == ".onnx"


def _attr(node, name: str, default: Any = None) -> Any:
    import onnx
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def load_model(path: str | Path, *, external: bool = True):
    """The ModelProto, with external data read from files inside the model's folder only."""
    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise GraftError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0] if str(e) else 'parse error'})",
                         "the file is truncated or corrupt; re-export or re-download it") from None
    except OSError as e:
        raise GraftError(f"{path}: cannot read: {e.strerror}") from None
    if not model.graph.node and not model.graph.initializer:
        raise GraftError(f"{path}: not a valid ONNX model (empty graph)", "the file is truncated or corrupt")
    if external:
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                _load_external(path, t)
    return model


def normalise(model, *, identities: bool = True) -> Any:
    """Fold Constant nodes (and, with `identities`, Identity-of-initializer nodes) into initializers;
    drop trailing '' inputs. Shared by the reader and the converter (nets/onnx.py), so that both see
    the same weights. The reader keeps Identity nodes (it aliases them to one record instead of copies)."""
    _normalise_graph(model.graph, identities)
    return model


def _subgraphs(node):
    """The graphs held in a node's attributes (If branches, Loop and Scan bodies)."""
    for a in node.attribute:
        if a.HasField("g"):
            yield a.name, a.g
        yield from ((a.name, g) for g in a.graphs)


def _normalise_graph(g, identities: bool) -> None:
    import onnx
    for n in g.node:  # weights inside If branches and loop bodies too
        for _, sub in _subgraphs(n):
            _normalise_graph(sub, identities)
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    changed = True
    while changed:
        changed = False
        keep = []
        for n in g.node:
            out = n.output[0] if n.output else ""
            source = None
            if n.op_type == "Constant" and out and out not in outputs and len(n.attribute) == 1:
                a = n.attribute[0]
                value = onnx.helper.get_attribute_value(a)
                if a.name == "value":
                    source = value
                elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    dtype = np.float32 if "float" in a.name else np.int64
                    source = onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype))
            elif identities and n.op_type == "Identity" and n.input and n.input[0] in inits \
                    and out not in outputs:
                source = inits[n.input[0]]
            if source is None:
                keep.append(n)
                continue
            t = onnx.TensorProto()
            t.CopyFrom(source)
            t.name = out
            g.initializer.append(t)
            inits[out] = t
            changed = True
        if changed:
            del g.node[:]
            g.node.extend(keep)
    for n in g.node:
        ins = list(n.input)
        while ins and ins[-1] == "":
            ins.pop()
        if len(ins) != len(n.input):
            del n.input[:]
            n.input.extend(ins)


def _load_external(path: Path, t) -> None:
    import onnx
    info = {e.key: e.value for e in t.external_data}
    folder = path.parent.resolve()
    location = info.get("location", "")
    if not isinstance(location, str) or "\0" in location:  # (protobuf gives bytes for invalid UTF-8; the OS
        # cannot name a file with a NUL, pathlib raises ValueError)
        raise GraftError(f"{path}: initializer {t.name!r} names external data {location!r}, not a file name (a NUL byte, or not UTF-8)",
                         "the model is corrupt; re-export it")
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
        raise GraftError(f"{path}: initializer {t.name!r} points outside the model's folder ({location!r})",
                         "external data must lie beside the .onnx file")
    try:
        offset, length = int(info.get("offset", 0)), info.get("length")
        size = target.stat().st_size
        length = size - offset if length is None else int(length)
        if offset < 0 or length < 0 or offset + length > size:  # checked before a buffer of `length` exists
            raise GraftError(f"{path}: external data {location!r} for {t.name!r} claims bytes {offset:,}.."
                             f"{offset + length:,} of a {size:,}-byte file", "re-copy the data file or re-export")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except (OSError, ValueError) as e:
        raise GraftError(f"{path}: cannot read external data {location!r} for {t.name!r} ({e})",
                         "keep the data file beside the model") from None
    if len(data) != length:
        raise GraftError(f"{path}: external data {location!r} is truncated ({len(data)} of {length} bytes for "
                         f"{t.name!r})", "re-copy the data file")
    t.raw_data = data
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT


def _to_tensor(path: Path, t) -> torch.Tensor:
    from onnx import numpy_helper
    try:
        arr = numpy_helper.to_array(t)
    except KeyError:  # onnx's table of element types: a data_type it does not know
        raise GraftError(f"{path}: initializer {t.name!r} has an unknown data type {t.data_type}",
                         "the model is corrupt or newer than this onnx package; re-export it") from None
    except (ValueError, TypeError) as e:
        raise GraftError(f"{path}: initializer {t.name!r} is corrupt ({e})", "re-export the model") from None
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr.copy())


def _walk(graph):
    """The graph's nodes, each followed by the nodes of its subgraphs (If branches list their weights)."""
    for n in graph.node:
        yield n
        for _, sub in _subgraphs(n):
            yield from _walk(sub)


def read(path: Path, *, trust: bool = False) -> TensorSet:
    path = Path(path)
    model = normalise(load_model(path), identities=False)
    graph = model.graph
    nodes = list(_walk(graph))
    inits = {}
    for g in [graph] + [sub for n in nodes for _, sub in _subgraphs(n)]:
        for t in g.initializer:
            inits.setdefault(t.name, t)
    # Initializer name -> (position, layer, kind, role, meta) from its first consumer.
    use: dict[str, tuple[int, str, str, str, dict]] = {}
    producers = {}  # output name -> (node, index) for MatMul + Add bias detection
    positions: dict[str, int] = {}
    alias: dict[str, str] = {}  # exporters share equal initializers through Identity nodes
    for i, node in enumerate(nodes):
        layer = node.name or f"{node.op_type}_{i}"
        if node.op_type == "Identity" and node.input and alias.get(node.input[0], node.input[0]) in inits:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
            continue
        for out in node.output:
            producers[out] = (node, layer)
        kind, roles = OP_ROLES.get(node.op_type, ("other", ()))
        for slot, name in enumerate(node.input):
            name = alias.get(name, name)
            if name not in inits or name in use:
                continue
            meta: dict[str, Any] = {"op": node.op_type, "node": layer}
            role = roles[slot - 1] if 1 <= slot <= len(roles) else "other"
            k, lyr = (kind if role != "other" else "other"), layer
            if node.op_type == "BatchNormalization":
                # ONNX stores float32 attributes: keep the value the exporter wrote (1e-3, not 0.0010000000475).
                meta["eps"] = float(str(np.float32(_attr(node, "epsilon", 1e-5))))
            if node.op_type == "Gemm":
                meta.update(transB=int(_attr(node, "transB", 0)), alpha=float(_attr(node, "alpha", 1.0)),
                            beta=float(_attr(node, "beta", 1.0)))
            if node.op_type == "Conv" and int(_attr(node, "group", 1)) > 1:
                meta["groups"] = int(_attr(node, "group", 1))
            if node.op_type == "Add" and slot == 1 and node.input[0] in producers:
                src, src_layer = producers[node.input[0]]
                if src.op_type == "MatMul" and any(alias.get(x, x) in inits for x in src.input[1:]):
                    k, lyr, role = "linear", src_layer, "bias"  # MatMul + Add is a linear layer with bias
                    meta["node"] = src_layer
            positions.setdefault(lyr, len(positions))
            use[name] = (positions[lyr], lyr, k, role, meta)
    records = []
    for name, t in inits.items():
        tensor = _to_tensor(path, t)
        if name in use:
            position, layer, kind, role, meta = use[name]
        else:
            position, layer, kind, role, meta = len(positions) + len(records), name, "other", "other", {"unused": True}
        meta = dict(meta)
        if kind == "linear" and role == "weight" and tensor.ndim == 2 and (
                meta["op"] == "MatMul" or meta.get("transB") == 0):
            tensor = tensor.t().contiguous()  # stored [in, out]
            meta["source_layout"] = "[in, out]"
        if kind == "conv" and role == "weight" and meta.get("groups", 1) > 1 and tensor.ndim >= 3 \
                and tensor.shape[1] == 1:
            kind = "depthwise_conv"
        if kind == "prelu" and tensor.ndim > 1 and tensor.numel() == tensor.shape[0]:
            meta["source_shape"] = list(tensor.shape)
            tensor = tensor.reshape(-1)
        records.append(TensorRecord(name, tensor, layer=layer, kind=kind, role=role, position=position,
                                    meta=meta))
    # Biases and running statistics share their layer's kind (depthwise included).
    kinds = {r.layer: r.kind for r in records if r.role == "weight"}
    for r in records:
        if r.kind in ("conv", "depthwise_conv") and r.layer in kinds:
            r.kind = kinds[r.layer]
    order = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
    records.sort(key=lambda r: (r.position, order.get(r.role, 9)))
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    meta = {"framework": "onnx", "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "ir_version": model.ir_version, "opset": opsets.get("ai.onnx")}
    return TensorSet(records, format="onnx", source=str(path), meta=meta)
