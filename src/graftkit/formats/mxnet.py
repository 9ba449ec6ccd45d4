"""MXNet `.params` files (the binary NDArray list of `nd.save`), read without MXNet.

Layout (little-endian), as written by MXNet's NDArray::Save:
    uint64 0x112 (list magic), uint64 reserved,
    uint64 count, then `count` NDArrays, each:
        uint32 magic: 0xF993FAC9 (V2) / 0xF993FACA (V3, NumPy shape semantics) /
                      0xF993FAC8 (V1, no storage type) / anything else: legacy, the value is ndim
        [V2/V3] int32 storage type (0 dense, 1 row_sparse, 2 csr); sparse: storage shape
        shape: int32 ndim + int64 dims (legacy: uint32 dims); an unknown shape ends the entry
        int32 dev_type, int32 dev_id (the context it was saved from), int32 type flag
        [sparse] per aux array: int32 type + shape
        raw data (storage shape), then [sparse] the aux arrays (indices/indptr)
    uint64 count, then `count` names, each uint64 length + UTF-8 bytes.
Module-API checkpoints prefix names with `arg:`/`aux:`; Gluon exports do not.
Names `<layer>_<role>` become `<layer>.<role>` with BatchNorm's gamma/beta/
moving_mean/moving_var renamed to weight/bias/running_mean/running_var.
Convolution weights are OIHW and FullyConnected weights [out, in] already.
When `PREFIX-symbol.json` lies beside `PREFIX-NNNN.params`, layer kinds, graph
order and BatchNorm eps/fix_gamma come from the symbol.
"""
from __future__ import annotations

import json
import math
import mmap
import re
import struct
from pathlib import Path
from typing import Any

import torch

from ..errors import GraftError, short
from .base import TensorRecord, TensorSet

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# mshadow type flags.
DTYPES = {0: torch.float32, 1: torch.float64, 2: torch.float16, 3: torch.uint8, 4: torch.int32, 5: torch.int8,
          6: torch.int64, 7: torch.bool, 8: torch.int16, 9: torch.uint16, 10: torch.uint32, 11: torch.uint64,
          12: torch.bfloat16}
N_AUX = {0: 0, 1: 1, 2: 2}  # storage type -> number of aux arrays (row_sparse: indices; csr: indptr, indices)
MAX_DIMS = 32

# Parameter-name suffixes -> PyTorch roles.
SUFFIX_ROLES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                "moving_mean": "running_mean", "moving_var": "running_var",
                "running_mean": "running_mean", "running_var": "running_var", "alpha": "weight"}
_SPLIT = re.compile(r"^(?P<layer>.*?)[_.]?(?P<suffix>" + "|".join(sorted(SUFFIX_ROLES, key=len, reverse=True))
                    + r")$")
# Which input slot of an op is which role.
OP_SLOTS = {"Convolution": ("weight", "bias"), "Deconvolution": ("weight", "bias"),
            "FullyConnected": ("weight", "bias"), "BatchNorm": ("weight", "bias", "running_mean", "running_var"),
            "LeakyReLU": ("weight",), "Embedding": ("weight",), "InstanceNorm": ("weight", "bias"),
            "LayerNorm": ("weight", "bias")}
OP_KINDS = {"Convolution": "conv", "Deconvolution": "conv_transpose", "FullyConnected": "linear",
            "BatchNorm": "batchnorm", "LeakyReLU": "prelu", "Embedding": "embedding", "InstanceNorm": "norm",
            "LayerNorm": "norm"}


def sniff(path: Path, head: bytes) -> bool:
    return len(head) >= 16 and struct.unpack_from("<QQ", head) == (LIST_MAGIC, 0) or (
        path.suffix == ".params" and len(head) >= 8 and struct.unpack_from("<Q", head)[0] == LIST_MAGIC)


class _Reader:
    """Bounds-checked little-endian reads from the file's bytes; errors name the byte offset."""

    def __init__(self, path: Path, buf):
        self.path, self.buf, self.pos = path, buf, 0

    def fail(self, what: str, at: int | None = None) -> GraftError:
        return GraftError(f"{self.path}: corrupt MXNet .params file: {what} at byte {self.pos if at is None else at}",
                          "the file is truncated or damaged; re-download or re-save it")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"{what} needs {n} bytes but the file ends ({len(self.buf)} bytes)")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(size, what))

    def shape(self, legacy_ndim: int | None = None, wide: bool = True) -> tuple[int, ...] | None:
        """A TShape; None for an unknown shape (an empty NDArray)."""
        at = self.pos
        if legacy_ndim is None:
            (ndim,) = self.unpack("i", "shape rank")
        else:
            ndim = legacy_ndim
        if ndim == -1:
            return None
        if not 0 <= ndim <= MAX_DIMS:
            raise self.fail(f"impossible tensor rank {ndim}", at)
        dims = self.unpack(f"{ndim}{'q' if wide else 'I'}", "shape")
        if any(d < 0 for d in dims):
            return None
        return tuple(dims)


def _read_array(r: _Reader, index: int) -> torch.Tensor | None:
    start = r.pos
    (magic,) = r.unpack("I", f"array {index} header")
    stype, sshape = 0, None
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = r.unpack("i", f"array {index} storage type")
        if stype not in N_AUX:
            raise r.fail(f"array {index} has unknown storage type {stype}", start + 4)
        if N_AUX[stype]:
            sshape = r.shape()
        shape = r.shape()
        if shape is None or (magic == V2_MAGIC and len(shape) == 0):
            return None
    elif magic == V1_MAGIC:
        shape = r.shape()
        if not shape:
            return None
    else:  # legacy: the "magic" is the rank, dims are uint32
        if magic > MAX_DIMS:
            raise r.fail(f"array {index} does not start with an NDArray header (0x{magic:08x})", start)
        shape = r.shape(legacy_ndim=magic, wide=False)
        if not shape:
            return None
    dev_type, _dev_id, type_flag = r.unpack("iii", f"array {index} context and type")
    if type_flag not in DTYPES:
        raise r.fail(f"array {index} has unknown data type flag {type_flag}", r.pos - 4)
    dtype = DTYPES[type_flag]
    aux = []
    for _ in range(N_AUX[stype]):
        (aux_type,) = r.unpack("i", f"array {index} aux type")
        if aux_type not in DTYPES:
            raise r.fail(f"array {index} has unknown index type flag {aux_type}", r.pos - 4)
        aux.append((DTYPES[aux_type], r.shape()))
    data = _tensor(r, dtype, sshape if N_AUX[stype] else shape, f"array {index} data")
    aux_data = [_tensor(r, t, s, f"array {index} sparse indices") for t, s in aux]
    if stype == 0:
        return data
    return _densify(r, stype, shape, data, aux_data, index)


def _tensor(r: _Reader, dtype: torch.dtype, shape, what: str) -> torch.Tensor:
    if shape is None:
        raise r.fail(f"{what} has no shape")
    count = math.prod(shape)
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    raw = r.take(nbytes, what)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    # One copy out of the map: the data offsets in this format are not aligned.
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


MAX_DENSE = 512 << 20  # bytes: the largest array a sparse one may densify to


def _densify(r: _Reader, stype: int, shape, data, aux, index) -> torch.Tensor:
    # the dense shape is checked against the stored one before the dense array exists: a few bytes of
    # row_sparse may claim a dense shape of GiBs
    nbytes = math.prod(shape) * data.element_size()
    if nbytes > MAX_DENSE:
        raise r.fail(f"sparse array {index} would densify to shape {list(shape)} ({nbytes:,} bytes, more than "
                     f"{MAX_DENSE >> 20} MiB)")
    ok = (len(shape) == data.dim() and tuple(data.shape[1:]) == tuple(shape[1:]) and data.shape[0] <= shape[0]
          and aux[0].shape == (data.shape[0],)) if stype == 1 else (
        len(shape) == 2 and data.dim() == 1 and aux[0].shape == (shape[0] + 1,) and aux[1].shape == data.shape)
    if not ok:
        raise r.fail(f"sparse array {index}: stored shapes {[list(data.shape)] + [list(a.shape) for a in aux]} do "
                     f"not fit its shape {list(shape)}")
    try:
        if stype == 1:  # row_sparse: the listed rows of a dense array
            dense = torch.zeros(shape, dtype=data.dtype)
            dense[aux[0].long()] = data
            return dense
        indptr, indices = (a.long() for a in aux)
        return torch.sparse_csr_tensor(indptr, indices, data, size=shape).to_dense()
    except (RuntimeError, IndexError, ValueError) as e:
        raise r.fail(f"array {index} has inconsistent sparse indices ({e})") from None


def load_params(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw name -> tensor list of a .params file, names exactly as stored (`arg:` kept)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as e:
        raise GraftError(f"{path}: cannot read: {e.strerror}") from None
    r = _Reader(path, buf)
    magic, _reserved = r.unpack("QQ", "the list header")
    if magic != LIST_MAGIC:
        raise r.fail(f"not an NDArray list (magic 0x{magic:x}, expected 0x112)", 0)
    (count,) = r.unpack("Q", "the array count")
    if count > len(buf) // 4:
        raise r.fail(f"impossible array count {count}", 16)
    arrays = [_read_array(r, i) for i in range(count)]
    (n_names,) = r.unpack("Q", "the name count")
    if n_names not in (0, count):
        raise r.fail(f"{n_names} names for {count} arrays", r.pos - 8)
    names = []
    for i in range(n_names):
        (length,) = r.unpack("Q", f"name {i} length")
        try:
            names.append(bytes(r.take(length, f"name {i}")).decode("utf-8"))
        except UnicodeDecodeError:
            raise r.fail(f"name {i} is not UTF-8", r.pos - length) from None
    if r.pos != len(buf):
        raise r.fail(f"{len(buf) - r.pos} unexpected bytes after the name list")
    if not names:
        names = [str(i) for i in range(count)]
    if len(set(names)) != len(names):
        raise GraftError(f"{path}: the .params file repeats a tensor name")
    return {n: a for n, a in zip(names, arrays) if a is not None}


def symbol_path(params: Path) -> Path | None:
    """`PREFIX-symbol.json` for `PREFIX-0001.params` (Module checkpoints and Gluon exports)."""
    m = re.match(r"^(?P<prefix>.+)-\d+\.params$", params.name)
    candidates = [params.with_name(f"{m['prefix']}-symbol.json")] if m else []
    candidates.append(params.with_name(f"{params.stem}-symbol.json"))
    return next((c for c in candidates if c.is_file()), None)


def load_symbol(path: Path) -> dict[str, Any]:
    try:
        graph = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GraftError(f"{path}: not a readable MXNet symbol JSON ({e})") from None
    except RecursionError:
        raise GraftError(f"{path}: the MXNet symbol JSON nests too deeply", "the file is corrupt") from None
    return check_symbol(graph, str(path))


MAX_ATTR = 4096  # characters of one attribute value: a kernel tuple is a few


def _entry(e: Any, n_nodes: int, before: int, what: str, fail) -> None:
    """A node entry [node, output(, version)] naming an existing node earlier than `before`."""
    if not isinstance(e, list) or not 2 <= len(e) <= 3 or not all(type(x) is int for x in e):
        raise fail(f"{what} {short(e)} is not [node, output, version]")
    if not 0 <= e[0] < min(before, n_nodes) or not 0 <= e[1] < 2**16:
        raise fail(f"{what} {e} names node {e[0]}, which is not an earlier node of the {n_nodes}"
                   if before <= n_nodes else f"{what} {e} names node {e[0]} of {n_nodes}")


def check_symbol(graph: Any, where: str) -> dict[str, Any]:
    """The symbol's structure checked before anything uses it: a dict of nodes, each a dict with a string
    op and name, string attributes, and inputs that name earlier nodes only (so no cycle and no index out
    of range); heads and arg_nodes in range. Pre-1.0 `attr`/`param` become `attrs`."""
    def fail(what: str) -> GraftError:
        return GraftError(f"{where}: not a valid MXNet symbol: {what}", "the symbol file is corrupt")

    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise GraftError(f"{where}: not an MXNet symbol file (no 'nodes' list)")
    nodes = graph["nodes"]
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise fail(f"node {i} is a {type(node).__name__}, not an object")
        if not isinstance(node.get("op"), str) or not isinstance(node.get("name"), str):
            raise fail(f"node {i} has no string 'op' and 'name'")
        attrs = node.pop("attrs", None) or node.pop("attr", None) or node.pop("param", None) or {}  # pre-1.0
        if not isinstance(attrs, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                                  and len(str(v)) <= MAX_ATTR for k, v in attrs.items()):
            raise fail(f"node {i} ({node['name']!r}) has attributes that are not short strings")
        node["attrs"] = attrs
        inputs = node.setdefault("inputs", [])
        if not isinstance(inputs, list):
            raise fail(f"node {i} ({node['name']!r}) has inputs that are not a list")
        for e in inputs:
            _entry(e, len(nodes), i, f"input of node {i} ({node['name']!r})", fail)
    heads = graph.setdefault("heads", [])
    if not isinstance(heads, list):
        raise fail("'heads' is not a list")
    for e in heads:
        _entry(e, len(nodes), len(nodes), "head", fail)
    args = graph.get("arg_nodes", [])
    if not isinstance(args, list) or not all(type(a) is int and 0 <= a < len(nodes) for a in args):
        raise fail("'arg_nodes' are not node indices")
    return graph


def strip_prefix(name: str) -> tuple[str, str]:
    """('arg'|'aux'|'', name without it)."""
    head, sep, rest = name.partition(":")
    return (head, rest) if sep and head in ("arg", "aux") else ("", name)


def split_name(name: str) -> tuple[str, str]:
    """'conv1_1_weight' -> ('conv1_1', 'weight'); unknown suffixes keep the whole name as the layer."""
    m = _SPLIT.match(name)
    if not m or not m["layer"]:
        return name, ""
    return m["layer"], m["suffix"]


def param_users(graph: dict[str, Any]) -> dict[str, tuple[int, dict, int]]:
    """Parameter (null node) name -> (op position, op node, input slot) of its first consumer."""
    nodes = graph["nodes"]
    users: dict[str, tuple[int, dict, int]] = {}
    position = 0
    for node in nodes:
        if node["op"] == "null":
            continue
        for slot, (src, *_rest) in enumerate(node.get("inputs", [])):
            if 0 <= src < len(nodes) and nodes[src]["op"] == "null":
                users.setdefault(nodes[src]["name"], (position, node, slot))
        position += 1
    return users


def _bool(v: Any, default: bool) -> bool:
    return default if v is None else str(v).strip().lower() in ("true", "1")


def read(path: Path, *, trust: bool = False) -> TensorSet:
    path = Path(path)
    raw = load_params(path)
    sym = symbol_path(path)
    graph = load_symbol(sym) if sym else None
    users = param_users(graph) if graph else {}
    records, layer_pos = [], {}
    for full, t in raw.items():
        prefix, name = strip_prefix(full)
        layer, suffix = split_name(name)
        role = SUFFIX_ROLES.get(suffix, "other")
        meta: dict[str, Any] = {"source_name": full}
        if prefix:
            meta["mxnet_prefix"] = prefix
        kind = "other"
        if name in users:
            position, node, slot = users[name]
            op, attrs = node["op"], node.get("attrs") or {}
            meta.update(node=node["name"], op=op)
            slots = OP_SLOTS.get(op, ())
            if 1 <= slot <= len(slots):
                role = slots[slot - 1]
            kind = OP_KINDS.get(op, "other")
            if op == "Convolution" and int(attrs.get("num_group", 1)) > 1 and t.ndim >= 3 and t.shape[1] == 1:
                kind = "depthwise_conv"
            if op == "LeakyReLU" and attrs.get("act_type", "leaky") != "prelu":
                kind = "other"
            if op == "BatchNorm":
                meta.update(eps=float(attrs.get("eps", 1e-3)), fix_gamma=_bool(attrs.get("fix_gamma"), True),
                            use_global_stats=_bool(attrs.get("use_global_stats"), False))
                if meta["fix_gamma"] and role == "weight":
                    # MXNet ignores a fixed gamma and computes with 1: so must we.
                    t = torch.ones_like(t)
                    meta["note"] = "fix_gamma: MXNet uses 1 whatever the file holds"
        else:
            position = layer_pos.setdefault(layer, len(layer_pos) + len(users))
            if role in ("running_mean", "running_var") or suffix in ("gamma", "beta"):
                kind = "batchnorm"
            elif role == "weight" and t.ndim == 4:
                kind = "conv"
            elif role == "weight" and t.ndim == 2:
                kind = "linear"
        records.append(TensorRecord(f"{layer}.{role if role != 'other' else suffix or 'value'}"
                                    if suffix else name, t, layer=layer, kind=kind, role=role,
                                    position=position, meta=meta))
    # Without a symbol, a layer's kind follows its BatchNorm statistics.
    bn = {r.layer for r in records if r.kind == "batchnorm"}
    for r in records:
        if r.layer in bn and r.kind == "other":
            r.kind = "batchnorm"
    records.sort(key=lambda r: (r.position, ROLE_ORDER.get(r.role, 9)))
    meta: dict[str, Any] = {"framework": "mxnet"}
    if sym:
        meta["symbol"] = sym.name
        version = (graph.get("attrs") or {}).get("mxnet_version")
        if version:
            meta["mxnet_version"] = version[-1] if isinstance(version, list) else version
    try:
        return TensorSet(records, format="mxnet", source=str(path), meta=meta, graph=graph)
    except ValueError as e:
        raise GraftError(f"{path}: two parameters map to one name ({e})") from None


ROLE_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
