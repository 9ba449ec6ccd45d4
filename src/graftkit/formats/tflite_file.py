"""TensorFlow Lite models (`.tflite`): a flatbuffer holding one graph, its operators and its weights.

Read with a small flatbuffer walker of our own (the schema subset below, every offset bounds-checked:
a model file is untrusted data), so that neither TensorFlow nor the `flatbuffers`/`tflite` packages are
needed. Weights are the constant tensors the operators use, tagged by their consumer, in PyTorch layout:
    CONV_2D            (O, H, W, I)     -> (O, I, H, W)
    DEPTHWISE_CONV_2D  (1, H, W, C*M)   -> (C*M, 1, H, W)
    TRANSPOSE_CONV     (O, H, W, I)     -> (I, O, H, W)   (ConvTranspose2d's in, out)
    FULLY_CONNECTED    (out, in)           as it is
    PRELU              (1, 1, C) / (C)  -> (C,)
Quantised weights (float16; int8/uint8 with per-tensor or per-channel scales and zero points; the int32
biases of fully integer models, whose scale is input scale x weight scale) are dequantised to float32,
and each record says so (`meta["quantized"]`). A weight reached through a
DEQUANTIZE op (float16 models) is tagged by the op that uses the dequantised value.
"""
from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GraftError
from .base import TensorRecord, TensorSet

IDENT = b"TFL3"
# BuiltinOperator codes (schema.fbs) graftkit knows by name.
OPS = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
       6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
       21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 34: "PAD", 40: "MEAN", 41: "SUB",
       54: "PRELU", 60: "PADV2", 67: "TRANSPOSE_CONV", 97: "RESIZE_NEAREST_NEIGHBOR", 114: "QUANTIZE",
       117: "HARD_SWISH", 39: "TRANSPOSE", 49: "SPLIT", 42: "STRIDED_SLICE", 98: "LEAKY_RELU"}
# TensorType -> numpy dtype.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
          9: np.int8, 10: np.float64}
# op -> (kind, roles of input slots 1..n)
OP_ROLES = {"CONV_2D": ("conv", ("weight", "bias")), "DEPTHWISE_CONV_2D": ("depthwise_conv", ("weight", "bias")),
            "FULLY_CONNECTED": ("linear", ("weight", "bias")), "PRELU": ("prelu", ("weight",)),
            "TRANSPOSE_CONV": ("conv_transpose", ("other", "weight", "other", "bias"))}


def sniff(path: Path, head: bytes) -> bool:
    return path.suffix.lower() == ".tflite" or head[4:8] == IDENT


class Flat:
    """Read-only access to a flatbuffer's tables, vectors and strings, every read bounds-checked."""

    def __init__(self, buf: bytes, where: str):
        self.buf, self.where = buf, where

    def _u(self, fmt: str, pos: int):
        try:
            return struct.unpack_from("<" + fmt, self.buf, pos)[0]
        except struct.error:
            raise GraftError(f"{self.where}: the flatbuffer points outside the file (offset {pos:,})",
                             "the file is truncated or corrupt; re-download it") from None

    def root(self) -> int:
        return self._u("I", 0)

    def field(self, table: int, i: int) -> int | None:
        """Position of field i of the table at `table`, or None when absent."""
        vtable = table - self._u("i", table)
        vsize = self._u("H", vtable)
        if 4 + 2 * i >= vsize:
            return None
        off = self._u("H", vtable + 4 + 2 * i)
        return table + off if off else None

    def scalar(self, table: int, i: int, fmt: str, default=0):
        pos = self.field(table, i)
        return default if pos is None else self._u(fmt, pos)

    def ref(self, table: int, i: int) -> int | None:
        pos = self.field(table, i)
        return None if pos is None else pos + self._u("I", pos)

    def vector(self, table: int, i: int, itemsize: int = 1) -> tuple[int, int] | None:
        """(position of the first element, length) of a vector field, checked to lie inside the file
        (before anything of that length is allocated)."""
        pos = self.ref(table, i)
        if pos is None:
            return None
        n = self._u("I", pos)
        if pos + 4 + n * itemsize > len(self.buf):
            raise GraftError(f"{self.where}: a vector of {n:,} elements runs past the end of the file",
                             "the file is truncated or corrupt; re-download it")
        return pos + 4, n

    def tables(self, table: int, i: int) -> list[int]:
        v = self.vector(table, i, 4)
        if v is None:
            return []
        start, n = v
        return [start + 4 * k + self._u("I", start + 4 * k) for k in range(n)]

    def array(self, table: int, i: int, dtype) -> np.ndarray:
        v = self.vector(table, i, np.dtype(dtype).itemsize)
        if v is None:
            return np.zeros(0, dtype)
        start, n = v
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n, offset=start)

    def string(self, table: int, i: int) -> str:
        a = self.array(table, i, np.uint8)
        return a.tobytes().decode("utf-8", "replace")


def parse(path: Path) -> dict[str, Any]:
    """The model's first subgraph as plain data: tensors (with constant values), operators (with their
    options table position), inputs and outputs."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise GraftError(f"{path}: cannot read: {e.strerror}") from None
    if len(buf) < 8 or buf[4:8] != IDENT:
        raise GraftError(f"{path}: not a TensorFlow Lite model (no 'TFL3' identifier)",
                         "give a .tflite file written by the TFLite converter")
    fb = Flat(buf, str(path))
    model = fb.root()
    codes = []
    for oc in fb.tables(model, 1):
        code = max(fb.scalar(oc, 0, "b"), fb.scalar(oc, 3, "i"))  # deprecated byte code, or the int one
        codes.append(OPS.get(code, f"BUILTIN_{code}") if not fb.field(oc, 1) else f"CUSTOM:{fb.string(oc, 1)}")
    buffers = []
    for b in fb.tables(model, 4):
        offset, size = fb.scalar(b, 1, "Q"), fb.scalar(b, 2, "Q")
        if offset > 1:  # large models keep buffers after the flatbuffer
            if offset + size > len(buf):
                raise GraftError(f"{path}: a weight buffer claims bytes {offset:,}..{offset + size:,} of a "
                                 f"{len(buf):,}-byte file", "the file is truncated")
            buffers.append(buf[offset:offset + size])
        else:
            buffers.append(fb.array(b, 0, np.uint8).tobytes())
    subgraphs = fb.tables(model, 2)
    if not subgraphs:
        raise GraftError(f"{path}: the model has no subgraph", "the file is corrupt")
    sg = subgraphs[0]
    tensors = []
    for t in fb.tables(sg, 0):
        shape = [int(d) for d in fb.array(t, 0, np.int32)]
        ttype = fb.scalar(t, 1, "b")
        bidx = fb.scalar(t, 2, "I")
        q = fb.ref(t, 4)
        quant = None
        if q is not None:
            scale = fb.array(q, 2, np.float32)
            if scale.size:
                quant = {"scale": scale.astype(np.float32), "zero_point": fb.array(q, 3, np.int64).astype(np.int64),
                         "axis": fb.scalar(q, 6, "i")}
        data = buffers[bidx] if 0 < bidx < len(buffers) and buffers[bidx] else None
        if data is not None and fb.field(t, 6) is not None:
            raise GraftError(f"{path}: tensor {fb.string(t, 3)!r} is stored sparse (TFLite sparsity), which "
                             "graftkit does not read", "use the dense version of the model")
        value = None
        if data is not None:
            dtype = DTYPES.get(ttype)
            if dtype is None:
                raise GraftError(f"{path}: tensor {fb.string(t, 3)!r} has a type graftkit cannot read ({ttype})")
            count = math.prod(shape) if shape else 1  # (Python ints: no overflow)
            if count * np.dtype(dtype).itemsize != len(data):
                raise GraftError(f"{path}: tensor {fb.string(t, 3)!r} holds {len(data):,} bytes for shape {shape}",
                                 "the file is corrupt")
            value = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)
        tensors.append({"name": fb.string(t, 3), "shape": shape, "type": ttype, "quant": quant, "value": value})
    ops = []
    for op in fb.tables(sg, 3):
        idx = fb.scalar(op, 0, "I")
        if idx >= len(codes):
            raise GraftError(f"{path}: an operator uses opcode {idx} of {len(codes)}", "the file is corrupt")
        ops.append({"op": codes[idx], "inputs": [int(i) for i in fb.array(op, 1, np.int32)],
                    "outputs": [int(i) for i in fb.array(op, 2, np.int32)], "options": fb.ref(op, 4)})
    for op in ops:
        for i in op["inputs"] + op["outputs"]:
            if i >= len(tensors):
                raise GraftError(f"{path}: an operator uses tensor {i} of {len(tensors)}", "the file is corrupt")
    return {"flat": fb, "tensors": tensors, "ops": ops, "inputs": [int(i) for i in fb.array(sg, 1, np.int32)],
            "outputs": [int(i) for i in fb.array(sg, 2, np.int32)]}


def dequantize(t: dict) -> tuple[np.ndarray, dict | None]:
    """A constant tensor as float32, and how it was stored when quantised."""
    v = t["value"]
    if v.dtype == np.float16:
        return v.astype(np.float32), {"dtype": "float16"}
    if v.dtype in (np.int8, np.uint8, np.int16, np.int32) and t["quant"] is not None:
        q = t["quant"]
        scale, zero = q["scale"], q["zero_point"]
        shape = [1] * v.ndim
        if scale.size > 1:
            shape[q["axis"]] = -1
        zero = zero if zero.size else np.zeros(1, np.int64)
        out = (v.astype(np.float32) - zero.reshape(shape if zero.size > 1 else [1] * v.ndim)) * scale.reshape(shape)
        return out.astype(np.float32), {"dtype": np.dtype(v.dtype).name, "per_channel": bool(scale.size > 1)}
    return v, None


def constants(graph: dict) -> dict[int, tuple[int, np.ndarray, dict | None]]:
    """Tensor index a float value flows into -> (source tensor index, float32 value, quantisation): the
    constant itself, and the output of a DEQUANTIZE of a constant."""
    out = {}
    for i, t in enumerate(graph["tensors"]):
        if t["value"] is not None and (np.issubdtype(t["value"].dtype, np.floating) or t["quant"] is not None):
            out[i] = (i, *dequantize(t))
    for op in graph["ops"]:
        if op["op"] == "DEQUANTIZE" and op["inputs"] and op["inputs"][0] in out:
            out[op["outputs"][0]] = out[op["inputs"][0]]
    return out


def torch_layout(op: str, role: str, a: np.ndarray) -> tuple[np.ndarray, str | None]:
    if role == "weight" and op in ("CONV_2D", "TRANSPOSE_CONV") and a.ndim == 4:
        perm = (0, 3, 1, 2) if op == "CONV_2D" else (3, 0, 1, 2)
        return np.ascontiguousarray(a.transpose(perm)), "OHWI"
    if role == "weight" and op == "DEPTHWISE_CONV_2D" and a.ndim == 4:
        return np.ascontiguousarray(a[0].transpose(2, 0, 1)[:, None]), "1HW(C*M)"
    if role == "weight" and op == "PRELU":
        return np.ascontiguousarray(a.reshape(-1, a.shape[-1])[0] if a.ndim > 1 else a), "HWC"
    return a, None


MAX_LABELS_BYTES = 1 << 20


def labels(path: Path, count: int) -> list[str] | None:
    """Class names from the zip of associated files the TFLite Support metadata writers append to a model
    (e.g. `labels.txt`): the one text file with `count` non-empty lines, or None. The file is untrusted:
    a member is read to at most 1 MiB, and anything unreadable just means no labels."""
    try:
        data = Path(path).read_bytes()
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        return None
    found = []
    for info in infos[:64]:
        if info.is_dir() or not info.filename.lower().endswith(".txt") or info.file_size > MAX_LABELS_BYTES:
            continue
        try:
            with zf.open(info) as f:
                raw = f.read(MAX_LABELS_BYTES + 1)
            lines = [ln.strip() for ln in raw.decode("utf-8").splitlines() if ln.strip()]
        except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError, zlib.error):
            continue
        if len(raw) <= MAX_LABELS_BYTES and len(lines) == count:
            found.append(lines)
    return found[0] if len(found) == 1 else None


def read(path: Path, *, trust: bool = False) -> TensorSet:
    graph = parse(path)
    tensors = graph["tensors"]
    consts = constants(graph)
    records, seen, positions = [], set(), {}
    for k, op in enumerate(graph["ops"]):
        kind, roles = OP_ROLES.get(op["op"], ("other", ()))
        layer = tensors[op["outputs"][0]]["name"] if op["outputs"] else f"{op['op']}_{k}"
        for slot, ti in enumerate(op["inputs"]):
            if ti < 0 or ti not in consts or op["op"] == "DEQUANTIZE":
                continue
            src, value, quant = consts[ti]
            if src in seen:
                continue
            seen.add(src)
            role = roles[slot - 1] if 1 <= slot <= len(roles) else "other"
            if op["op"] == "TRANSPOSE_CONV":
                role = {1: "weight", 3: "bias"}.get(slot, "other")
            value, layout = torch_layout(op["op"], role, value)
            positions.setdefault(layer, len(positions))
            meta: dict[str, Any] = {"op": op["op"]}
            if layout:
                meta["source_layout"] = layout
            if quant:
                meta["quantized"] = quant
            records.append(TensorRecord(tensors[src]["name"] or f"tensor_{src}", torch.from_numpy(np.array(value)),
                                        layer=layer, kind=kind if role != "other" else "other", role=role,
                                        position=positions[layer], meta=meta))
    order = {"weight": 0, "bias": 1}
    records.sort(key=lambda r: (r.position, order.get(r.role, 9)))
    ops = sorted({op["op"] for op in graph["ops"]})
    return TensorSet(_unique(records), format="tflite", source=str(path),
                     meta={"framework": "tflite", "ops": ops,
                           "quantized": sorted({r.meta["quantized"]["dtype"] for r in records
                                                if "quantized" in r.meta})})


def _unique(records: list[TensorRecord]) -> list[TensorRecord]:
    """TFLite tensor names need not be unique: later duplicates get a #N suffix."""
    seen: dict[str, int] = {}
    for r in records:
        n = seen.get(r.name, 0)
        seen[r.name] = n + 1
        if n:
            r.name = f"{r.name}#{n}"
    return records
