"""Protocol-buffer wire format, decoded to plain dicts and encoded back, driven by a schema.

The schema is a `caffe_proto.Message` (any proto2 message described that way).
Decoding follows protobuf's rules (unknown fields and fields of an unexpected
wire type are skipped, a singular field given twice keeps the last value,
packed and unpacked repeated scalars are both accepted) and checks every
length against the bytes that are really there, so a truncated or corrupt
file stops with a GraftError naming the file and the byte offset.

Speed: a weights file is a few hundred small messages wrapped around a few
large packed float arrays. The small messages are walked in Python; packed
float/double data becomes a numpy view of the buffer (`np.frombuffer`, no
copy, no Python float per value), and runs of unpacked floats written by old
protobuf versions are picked out with one strided numpy view as well.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ..errors import GraftError
from .caffe_proto import FIXED32, FIXED64, LEN, VARINT, Field, Message

_U64 = 1 << 64
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_DTYPES = {"float": np.dtype("<f4"), "double": np.dtype("<f8"), "fixed32": np.dtype("<u4"),
           "sfixed32": np.dtype("<i4"), "fixed64": np.dtype("<u8"), "sfixed64": np.dtype("<i8")}


class _Corrupt(Exception):
    def __init__(self, offset: int, what: str):
        self.offset, self.what = offset, what


# ---------------------------------------------------------------------------------------------- decoding

def decode(buf, msg: Message, *, start: int = 0, end: int | None = None, source: str = "") -> dict[str, Any]:
    """Decode the message `msg` from `buf[start:end]` (bytes, bytearray, mmap or memoryview).

    Byte offsets in errors are offsets into `buf`, i.e. into the file when `buf` is the file.
    """
    end = len(buf) if end is None else end
    try:
        return _message(buf, start, end, msg)
    except _Corrupt as e:
        raise GraftError(f"{source or 'input'}: corrupt or truncated {msg.name} data: {e.what} at byte offset "
                         f"{e.offset}", "the file is damaged or incomplete; re-download or re-create it") from None


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt(pos, "a number runs past the end of its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt(pos, "a number longer than 10 bytes")


def _convert(f: Field, v: int):
    """A decoded varint as the field's Python value."""
    t = f.type
    if f.enum is not None:
        v = ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
        return f.enum.names.get(v, v)   # unknown enum numbers stay numbers
    if t == "bool":
        return v != 0
    if t == "int64":
        return v - _U64 if v >> 63 else v
    if t == "int32":
        return ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
    if t == "uint32":
        return v & 0xFFFFFFFF
    if t in ("sint32", "sint64"):
        return (v >> 1) ^ -(v & 1)
    return v   # uint64


def _skip(buf, pos: int, end: int, wt: int, field_start: int) -> int:
    if wt == VARINT:
        return _varint(buf, pos, end)[1]
    if wt == FIXED64:
        pos += 8
    elif wt == FIXED32:
        pos += 4
    elif wt == LEN:
        n, pos = _varint(buf, pos, end)
        pos += n
    else:
        raise _Corrupt(field_start, f"invalid wire type {wt}")
    if pos > end:
        raise _Corrupt(field_start, "a field runs past the end of its message")
    return pos


def _fixed32_run(buf, field_start: int, pos: int, end: int, dtype) -> tuple[np.ndarray, int]:
    """Values of consecutive unpacked fixed32 records with the same tag, read at once."""
    tag = bytes(buf[field_start:pos])
    rec = len(tag) + 4
    n_max = (end - field_start) // rec
    recs = np.frombuffer(buf, np.uint8, count=n_max * rec, offset=field_start).reshape(n_max, rec)
    same = (recs[:, :len(tag)] == np.frombuffer(tag, np.uint8)).all(axis=1)
    n = n_max if same.all() else int(same.argmin())
    values = np.ascontiguousarray(recs[:n, len(tag):]).view(dtype).reshape(n)
    return values, field_start + n * rec


def _message(buf, pos: int, end: int, msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    arrays: dict[str, list[np.ndarray]] | None = None
    fields = msg.by_number
    while pos < end:
        field_start = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        wt = key & 7
        f = fields.get(key >> 3)
        if f is None:
            pos = _skip(buf, pos, end, wt, field_start)
            continue
        fw = f.wire
        if wt == LEN:
            n, pos = _varint(buf, pos, end)
            stop = pos + n
            if stop > end:
                raise _Corrupt(field_start, f"field '{f.name}' of {msg.name} ({n} bytes) runs past the end "
                                            f"of its message (byte {end})")
            if f.message is not None:
                value = _message(buf, pos, stop, f.message)
            elif f.type == "string":
                try:
                    value = bytes(buf[pos:stop]).decode("utf-8")
                except UnicodeDecodeError:
                    raise _Corrupt(pos, f"text field '{f.name}' of {msg.name} is not valid UTF-8") from None
            elif f.type == "bytes":
                value = bytes(buf[pos:stop])
            elif f.repeated and fw != LEN:   # packed repeated scalars
                if fw == VARINT:
                    vals, p = [], pos
                    while p < stop:
                        b = buf[p]
                        if b < 0x80:
                            p += 1
                        else:
                            b, p = _varint(buf, p, stop)
                        vals.append(_convert(f, b))
                    out.setdefault(f.name, []).extend(vals)
                else:
                    size = 4 if fw == FIXED32 else 8
                    if n % size:
                        raise _Corrupt(field_start, f"packed field '{f.name}' of {msg.name} has {n} bytes, "
                                                    f"not a multiple of {size}")
                    arr = np.frombuffer(buf, _DTYPES.get(f.type, _DTYPES["float"]), count=n // size, offset=pos)
                    if f.is_array:
                        if arrays is None:
                            arrays = {}
                        arrays.setdefault(f.name, []).append(arr)
                    else:
                        out.setdefault(f.name, []).extend(arr.tolist())
                pos = stop
                continue
            else:   # declared with another wire type: unknown to us, as protobuf treats it
                pos = stop
                continue
            pos = stop
        elif wt == fw:
            if wt == VARINT:
                b = buf[pos] if pos < end else 0x80
                if b < 0x80:
                    pos += 1
                else:
                    b, pos = _varint(buf, pos, end)
                value = _convert(f, b)
            elif wt == FIXED32:
                if pos + 4 > end:
                    raise _Corrupt(field_start, f"field '{f.name}' of {msg.name} runs past the end of its message")
                if f.is_array:
                    arr, pos = _fixed32_run(buf, field_start, pos, end, _DTYPES[f.type])
                    if arrays is None:
                        arrays = {}
                    arrays.setdefault(f.name, []).append(arr)
                    continue
                value = (_F32.unpack_from(buf, pos)[0] if f.type == "float"
                         else np.frombuffer(buf, _DTYPES[f.type], 1, pos).item())
                pos += 4
            else:   # FIXED64
                if pos + 8 > end:
                    raise _Corrupt(field_start, f"field '{f.name}' of {msg.name} runs past the end of its message")
                value = (_F64.unpack_from(buf, pos)[0] if f.type == "double"
                         else np.frombuffer(buf, _DTYPES[f.type], 1, pos).item())
                pos += 8
                if f.is_array:
                    if arrays is None:
                        arrays = {}
                    arrays.setdefault(f.name, []).append(np.array([value], _DTYPES[f.type]))
                    continue
        else:
            pos = _skip(buf, pos, end, wt, field_start)
            continue
        if f.repeated:
            lst = out.get(f.name)
            if lst is None:
                out[f.name] = [value]
            else:
                lst.append(value)
        elif f.message is not None and f.name in out:
            out[f.name].update(value)   # a singular message given twice is merged
        else:
            out[f.name] = value
    if arrays:
        for name, chunks in arrays.items():
            out[name] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return out


# ---------------------------------------------------------------------------------------------- encoding

def _varint_bytes(v: int) -> bytes:
    if v < 0:
        v += _U64
    if v < 0x80:
        return bytes((v,))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _scalar_bytes(f: Field, v) -> bytes:
    t = f.type
    if f.enum is not None:
        if isinstance(v, str):
            if v not in f.enum.values:
                raise GraftError(f"cannot encode {v!r} as {f.enum.name}",
                                 f"one of {', '.join(f.enum.values)}")
            v = f.enum.values[v]
        return _varint_bytes(int(v))
    if t == "float":
        return _F32.pack(float(v))
    if t == "double":
        return _F64.pack(float(v))
    if t == "string":
        return str(v).encode("utf-8")
    if t == "bytes":
        return bytes(v)
    if t in ("sint32", "sint64"):
        v = int(v)
        return _varint_bytes((v << 1) ^ (v >> 63))
    if t in _DTYPES:
        return np.array([v], _DTYPES[t]).tobytes()
    return _varint_bytes(int(bool(v)) if t == "bool" else int(v))


def encode_chunks(value: dict[str, Any], msg: Message) -> tuple[list, int]:
    """`value` encoded as `msg`: (list of bytes/memoryview chunks, total size).

    Large float arrays are not copied: their chunks are memoryviews of the
    (contiguous, little-endian) arrays, ready for `file.writelines`.
    """
    out: list = []
    return out, _encode(value, msg, out)


def encode(value: dict[str, Any], msg: Message) -> bytes:
    chunks, _ = encode_chunks(value, msg)
    return b"".join(chunks)


def _encode(value: dict[str, Any], msg: Message, out: list) -> int:
    size = 0
    try:
        fields = sorted(((msg.fields[k], v) for k, v in value.items() if v is not None), key=lambda fv: fv[0].number)
    except KeyError as e:
        raise GraftError(f"cannot encode a {msg.name}: it has no field {e.args[0]!r}") from None
    for f, v in fields:
        if f.message is not None:
            tag = _varint_bytes(f.number << 3 | LEN)
            for item in (v if f.repeated else [v]):
                sub: list = []
                n = _encode(item, f.message, sub)
                head = tag + _varint_bytes(n)
                out.append(head)
                out.extend(sub)
                size += len(head) + n
        elif f.repeated and f.packed:
            if len(v) == 0:
                continue
            if f.type in _DTYPES:
                arr = np.ascontiguousarray(v, dtype=_DTYPES[f.type]).reshape(-1)
                body = memoryview(arr).cast("B")
                n = body.nbytes
            else:
                body = b"".join(_scalar_bytes(f, x) for x in v)
                n = len(body)
            head = _varint_bytes(f.number << 3 | LEN) + _varint_bytes(n)
            out.append(head)
            out.append(body)
            size += len(head) + n
        else:
            tag = _varint_bytes(f.number << 3 | f.wire)
            for item in (v if f.repeated else [v]):
                body = _scalar_bytes(f, item)
                if f.wire == LEN:
                    body = _varint_bytes(len(body)) + body
                out.append(tag)
                out.append(body)
                size += len(tag) + len(body)
    return size
