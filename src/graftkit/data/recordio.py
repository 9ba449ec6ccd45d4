"""MXNet/dmlc RecordIO (`.rec` + `.idx`), byte-compatible with im2rec, without MXNet.

On disk every record is written as one or more parts, each
    uint32 magic 0xced7230a | uint32 lrec | payload part | zero padding to 4 bytes
with lrec = cflag << 29 | length (little endian). A payload that contains the magic
at a 4-byte aligned offset is split there, the magic itself left out (cflag 1 =
first part, 2 = middle, 3 = last; 0 = whole record); a reader puts the magic back
between the parts. The `.idx` file has one `key<TAB>offset` line per record.

An image record's payload starts with the 24-byte IRHeader
    uint32 flag | float32 label | uint64 id | uint64 id2
where flag = 0 means one label (in `label`), flag = n > 0 means n float32 labels
follow the header (and `label` is 0). The image bytes (JPEG/PNG) come after.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import GraftError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEAD = struct.Struct("<II")
IRHEADER = struct.Struct("<IfQQ")
MAX_RECORD = 1 << 29


def encode_lrec(cflag: int, length: int) -> int:
    return (cflag << 29) | length


def decode_lrec(lrec: int) -> tuple[int, int]:
    return lrec >> 29, lrec & ((1 << 29) - 1)


@dataclass(frozen=True)
class ImageRecord:
    """A decoded IRHeader and the bytes after it."""
    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int
    image: bytes

    @property
    def label(self) -> float:
        return self.labels[0] if self.labels else 0.0


def pack_header(labels: float | Sequence[float], id: int, id2: int = 0, *, multi: bool | None = None) -> bytes:
    """IRHeader bytes (plus float32 labels for a multi-label record), as mxnet.recordio.pack writes them."""
    if isinstance(labels, (int, float, np.floating, np.integer)):
        labels = [float(labels)]
    labels = [float(v) for v in labels]
    if multi is None:
        multi = len(labels) != 1
    if not multi:
        return IRHEADER.pack(0, labels[0], int(id), int(id2))
    return IRHEADER.pack(len(labels), 0.0, int(id), int(id2)) + np.asarray(labels, dtype="<f4").tobytes()


def unpack_header(payload: bytes | memoryview) -> ImageRecord:
    """Split a record payload into its IRHeader fields and image bytes."""
    if len(payload) < IRHEADER.size:
        raise GraftError(f"record of {len(payload)} bytes is shorter than its 24-byte image header",
                         "the pack is corrupt; re-create it with `graft data pack`")
    flag, label, id_, id2 = IRHEADER.unpack_from(payload, 0)
    start = IRHEADER.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(payload):
            raise GraftError(f"record {id_} claims {flag} labels but is only {len(payload)} bytes long",
                             "the pack is corrupt; re-create it with `graft data pack`")
        labels = tuple(float(v) for v in np.frombuffer(payload[start:end], dtype="<f4"))
        start = end
    else:
        labels = (float(label),)
    return ImageRecord(flag, labels, id_, id2, bytes(payload[start:]))


def encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record: split at aligned magic words, padded to 4 bytes."""
    n = len(payload)
    if n >= MAX_RECORD:
        raise GraftError(f"record of {n} bytes is too large for RecordIO (limit 2^29 bytes)",
                         "store the image smaller (--resize) or re-encode it")
    out = []
    start = 0
    pos = payload.find(MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n >> 2) << 2:
        if pos % 4 == 0:
            out += [MAGIC_BYTES, struct.pack("<I", encode_lrec(1 if start == 0 else 2, pos - start)), payload[start:pos]]
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    out += [MAGIC_BYTES, struct.pack("<I", encode_lrec(3 if start else 0, n - start)), payload[start:]]
    pad = (-n) % 4  # the padding of the whole record (parts before the last are multiples of 4)
    out.append(b"\0" * pad)
    return b"".join(out)


def read_record_at(buf, offset: int, where: str = "pack") -> tuple[bytes, int]:
    """(payload, next offset) of the record starting at `offset` in a bytes-like/mmap buffer."""
    parts = []
    size = len(buf)
    while True:
        if offset < 0 or offset + 8 > size:
            raise GraftError(f"{where}: record header at byte {offset} runs past the end of the file",
                             "the pack is truncated; re-create it with `graft data pack`")
        magic, lrec = _HEAD.unpack_from(buf, offset)
        if magic != MAGIC:
            raise GraftError(f"{where}: no RecordIO magic at byte {offset} (found {magic:#010x})",
                             "this is not a RecordIO file, or its .idx does not belong to it")
        cflag, length = decode_lrec(lrec)
        start = offset + 8
        if start + length > size:
            raise GraftError(f"{where}: record at byte {offset} runs past the end of the file",
                             "the pack is truncated; re-create it with `graft data pack`")
        parts.append(buf[start:start + length])
        offset = start + ((length + 3) & ~3)
        if cflag in (0, 3):
            break
        parts.append(MAGIC_BYTES)
    return (bytes(parts[0]) if len(parts) == 1 else b"".join(bytes(p) for p in parts)), offset


def read_idx(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(key, offset) pairs of an `.idx` file, in file order."""
    path = Path(path)
    out = []
    with open(path, encoding="ascii", errors="replace") as f:  # (digits and tabs: anything else is damage)
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            try:
                key, offset = int(parts[0]), int(parts[1])
                if len(parts) != 2 or not 0 <= offset < 2**63 or not -2**63 <= key < 2**64:
                    raise ValueError
                out.append((key, offset))
            except (ValueError, IndexError):
                raise GraftError(f"{path}:{n}: expected `key<TAB>offset`, got {line[:60]!r}",
                                 "the .idx file is damaged; re-create the pack") from None
    return out


class RecordReader:
    """Read records of one `.rec` file by position (with its `.idx`) or in order.

    The file is memory-mapped lazily, per process, so a reader can be handed to
    DataLoader worker processes (it pickles as paths only).
    """

    def __init__(self, rec: str | os.PathLike, idx: str | os.PathLike | None = None):
        self.rec = Path(rec)
        if not self.rec.is_file():
            raise GraftError(f"{self.rec}: no such RecordIO file", "check the path or make a pack with `graft data pack`")
        if idx is None:
            cand = self.rec.with_suffix(".idx")
            idx = cand if cand.is_file() else None
        self.idx = Path(idx) if idx else None
        self._mm = None
        if self.idx is not None:
            pairs = read_idx(self.idx)
        else:
            pairs = list(self._scan())
        self.keys = [k for k, _ in pairs]
        self.offsets = [o for _, o in pairs]

    def _buf(self):
        if self._mm is None:
            with open(self.rec, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    self._mm = b""
                else:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_mm"] = None
        return d

    def _scan(self) -> Iterator[tuple[int, int]]:
        """Without an .idx: walk the file, keys are record positions (0, 1, ...)."""
        buf = self._buf()
        off, i = 0, 0
        while off < len(buf):
            _, nxt = read_record_at(buf, off, str(self.rec))
            yield i, off
            off, i = nxt, i + 1

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, i: int) -> bytes:
        """The payload of the i-th record (in .idx order)."""
        return read_record_at(self._buf(), self.offsets[i], str(self.rec))[0]

    def read_key(self, key: int) -> bytes:
        if not hasattr(self, "_pos"):
            self._pos = {k: i for i, k in enumerate(self.keys)}
        if key not in self._pos:
            raise GraftError(f"{self.rec}: no record with key {key}", "see `graft data inspect` for the keys")
        return self.read(self._pos[key])

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self.read(i)

    def close(self):
        if self._mm not in (None, b""):
            self._mm.close()
        self._mm = None


class RecordWriter:
    """Write a `.rec` + `.idx` pair atomically: both appear complete when the writer closes, or neither."""

    def __init__(self, rec: str | os.PathLike, idx: str | os.PathLike | None = None):
        self.rec_path = Path(rec)
        self.idx_path = Path(idx) if idx else self.rec_path.with_suffix(".idx")
        self._rec_ctx = atomic_path(self.rec_path)
        self._idx_ctx = atomic_path(self.idx_path)
        self._rec_tmp = self._rec_ctx.__enter__()
        self._idx_tmp = self._idx_ctx.__enter__()
        self._rec = open(self._rec_tmp, "wb")
        self._idx = open(self._idx_tmp, "w", encoding="utf-8", newline="\n")
        self.count = 0

    def tell(self) -> int:
        return self._rec.tell()

    def write(self, key: int, payload: bytes) -> None:
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(encode_record(payload))
        self.count += 1

    def close(self, ok: bool = True) -> None:
        if self._rec is None:
            return
        self._rec.close()
        self._idx.close()
        self._rec = None
        exc = (None, None, None) if ok else (RuntimeError, RuntimeError("aborted"), None)
        try:
            self._rec_ctx.__exit__(*exc)
        finally:
            self._idx_ctx.__exit__(*exc)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close(ok=et is None)
        return False


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
