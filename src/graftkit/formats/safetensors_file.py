"""safetensors files (and graftkit packages, which are safetensors files), read zero-copy
and written straight from the tensors' memory.

The format is an 8-byte little-endian header length, a JSON header mapping each
tensor name to {dtype, shape, data_offsets} (plus an optional "__metadata__" of
strings), then the raw little-endian data. We map the file copy-on-write and
wrap each tensor around its bytes with torch.frombuffer, so opening a file costs
a header parse whatever its size: pages are read only when a tensor is used.
Every offset is checked, because the file is untrusted data. Writing streams each
tensor's bytes to the file, where safetensors' save_file first copies every tensor into
a bytes object (measured by benchmarks/caffe_convert.py, "+save").
"""
from __future__ import annotations

import ctypes
import json
import math
import mmap
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from .. import fastjson
from ..atomic import start_writeback
from ..errors import GraftError, short
from ..meta import SPEC_TEXT_PREFIX, check_document, from_metadata
from .base import TensorRecord, TensorSet

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in DTYPES.items()}
CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024
MAX_DIMS = 64  # dimensions of one tensor
ALIGN = 64  # bytes: where written data starts (a CPU allocation's alignment)
WRITEBACK_EVERY = 4 << 20  # bytes written between two requests to start writing them to disk


def sniff(path: Path, head: bytes) -> bool:
    if path.suffix == ".safetensors":
        return True
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def open_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(name -> tensor backed by a private memory map, header metadata)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 8:
                raise GraftError(f"{path}: truncated safetensors file ({size} bytes)", "re-create or re-download it")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER or 8 + n > size:
                raise GraftError(f"{path}: corrupt safetensors header (length {n} > file size {size})",
                                 "the file is truncated or not safetensors")
            try:
                header = fastjson.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GraftError(f"{path}: corrupt safetensors header: {e}", "the file is damaged") from None
            data_len = size - 8 - n
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else b""
    except OSError as e:
        raise GraftError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(header, dict):
        raise GraftError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = _metadata(header.pop("__metadata__", None), path)
    tensors: dict[str, torch.Tensor] = {}
    base = 8 + n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        try:
            code = info["dtype"]
            dtype, shape, (start, end) = DTYPES[code], info["shape"], info["data_offsets"]
            if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(d) is int for d in shape):
                raise TypeError
            count = math.prod(shape)
        except (KeyError, TypeError, ValueError):
            raise GraftError(f"{path}: corrupt safetensors entry for {name!r}: {short(info, 200)}") from None
        if (type(count) is not int or type(start) is not int or type(end) is not int
                or not 0 <= start <= end <= data_len or end - start != count * ITEMSIZE[code]
                or (shape and min(shape) < 0)):
            raise GraftError(f"{path}: tensor {name!r} lies outside the file or has the wrong size",
                             "the file is truncated or corrupt")
        if end > start:
            spans.append((start, end, name))
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:  # (a 1-d tensor needs no view; view(*shape) parses faster than view(shape))
            flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + start)
            tensors[name] = flat if len(shape) == 1 else flat.view(*shape) if shape else flat.view(())
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:  # two tensors on the same bytes: writing one would change the other
            raise GraftError(f"{path}: tensors {a!r} and {b!r} overlap in the file", "the file is corrupt")
    return tensors, metadata


_MADV_POPULATE_READ = 22  # Linux >= 5.14
_madvise = ctypes.CDLL(None, use_errno=True).madvise if sys.platform == "linux" else None


def _page_in(t: torch.Tensor) -> None:
    """Map a tensor's pages in one call before writing it: a converted net's tensors view the
    source file's memory map, and a write that faults them in page by page is much slower.
    (Only a hint: an older kernel refuses it and nothing changes.)"""
    if _madvise is None:
        return
    start = t.data_ptr() & ~(mmap.PAGESIZE - 1)
    _madvise(ctypes.c_void_p(start), ctypes.c_size_t(t.data_ptr() + t.nbytes - start), _MADV_POPULATE_READ)


def write_safetensors(f, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (CPU, any dtype safetensors knows) to the open binary file `f`.

    The data starts 64-byte aligned (the header is padded with spaces, which the format allows)
    and tensors whose size is a multiple of 64 bytes come first, in their dict order: so most
    tensors lie as a fresh allocation would, and SIMD kernels compute the same results from a
    loaded package as from the module that was saved."""
    if sys.byteorder != "little":  # safetensors data is little-endian; torch tensors are native
        raise GraftError("writing safetensors needs a little-endian machine")
    sizes = {}
    for name, t in tensors.items():
        code = CODES.get(t.dtype)
        if code is None:
            raise GraftError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        sizes[name] = (code, t.numel() * ITEMSIZE[code])
    names = sorted(tensors, key=lambda k: sizes[k][1] % ALIGN != 0)  # (stable: dict order otherwise)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    end = 0
    for name in names:
        code, size = sizes[name]
        start, end = end, end + size
        header[name] = {"dtype": code, "shape": list(tensors[name].shape), "data_offsets": [start, end]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    f.write(struct.pack("<Q", len(raw)) + raw)
    written = synced = 8 + len(raw)
    for name in names:
        t = tensors[name].detach().contiguous()
        if t.numel():
            if t.nbytes >= 1 << 16:
                _page_in(t)
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            written += t.nbytes
            if written - synced >= WRITEBACK_EVERY:
                start_writeback(f, synced, written)
                synced = written


def read_metadata(path: str | Path) -> dict[str, str]:
    """Only the header's metadata strings (cheap: no tensor is touched)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise GraftError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise GraftError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = fastjson.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GraftError(f"{path}: corrupt safetensors header", "the file is damaged or not safetensors") from None
    return _metadata(header.get("__metadata__"), path) if isinstance(header, dict) else {}


def _metadata(value: Any, path: Path) -> dict[str, str]:
    """The header's "__metadata__": a map of strings to strings (the format's rule), else one clean error."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise GraftError(f"{path}: corrupt safetensors header (__metadata__ is not a map of strings)",
                         "the file is damaged")
    return value


def _kind_role(name: str, t: torch.Tensor) -> tuple[str, str, str]:
    """Guess (layer, kind, role) from a PyTorch-style state-dict name."""
    layer, _, leaf = name.rpartition(".")
    role = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
            "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}.get(leaf, "other")
    kind = "other"
    if role in ("running_mean", "running_var", "num_batches_tracked"):
        kind = "batchnorm"
    elif role == "weight" and t.ndim == 4:
        kind = "depthwise_conv" if t.shape[1] == 1 and t.shape[0] > 1 else "conv"
    elif role == "weight" and t.ndim == 2:
        kind = "linear"
    return layer or name, kind, role


def records_from_state_dict(state: dict[str, torch.Tensor]) -> list[TensorRecord]:
    """TensorRecords for a PyTorch state dict, layers numbered in key order."""
    records, positions = [], {}
    for name, t in state.items():
        layer, kind, role = _kind_role(name, t)
        positions.setdefault(layer, len(positions))
        records.append(TensorRecord(name, t, layer=layer, kind=kind, role=role, position=positions[layer]))
    # BatchNorm affine weights live beside the running stats: mark the whole layer batchnorm.
    bn_layers = {r.layer for r in records if r.kind == "batchnorm"}
    for r in records:
        if r.layer in bn_layers:
            r.kind = "batchnorm"
    return records


def read(path: Path, *, trust: bool = False) -> TensorSet:
    tensors, metadata = open_safetensors(path)
    meta: dict[str, Any] = {k: v for k, v in metadata.items()
                            if k != "graftkit" and not k.startswith(SPEC_TEXT_PREFIX)}
    fmt = "safetensors"
    try:
        package_meta = from_metadata(metadata)
    except json.JSONDecodeError:
        raise GraftError(f"{path}: the graftkit metadata in this package is corrupt") from None
    if package_meta is not None:
        fmt, meta["graftkit"] = "graftkit package", check_document(package_meta, str(path))
    order = (meta.get("graftkit") or {}).get("order") or []
    rank = {k: i for i, k in enumerate(order)}
    # Source order: the package's recorded module order, else the file's data order.
    names = sorted(tensors, key=lambda k: (rank.get(k, len(rank)), _data_offset(tensors[k])))
    return TensorSet(records_from_state_dict({k: tensors[k] for k in names}), format=fmt, source=str(path),
                     meta=meta)


def _data_offset(t: torch.Tensor) -> int:
    return t.data_ptr() if t.numel() else 0
