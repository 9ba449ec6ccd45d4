"""What a RecordIO pack holds, record by record (`graft data inspect`), so it can be checked without code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..errors import GraftError
from .dataset import find_shards
from .decode import DecodeError, decode
from .recordio import RecordReader, sha256, unpack_header


def pack_shards(pack: str | os.PathLike) -> list[Path]:
    shards = find_shards(pack)
    if not shards:
        raise GraftError(f"{pack}: no RecordIO pack here (no .rec file or -00000.rec shards)",
                         "give a .rec file or the prefix used with `graft data pack`")
    return shards


def inspect_records(pack: str | os.PathLike, decode_images: bool = True) -> Iterator[dict]:
    """One dict per record: shard, key, offset, flag, labels, id, id2, payload length and SHA-256, decoded size."""
    for shard in pack_shards(pack):
        reader = RecordReader(shard)
        try:
            for i, key in enumerate(reader.keys):
                rec = unpack_header(reader.read(i))
                row = {"shard": shard.name, "key": key, "offset": reader.offsets[i], "flag": rec.flag,
                       "labels": list(rec.labels), "id": rec.id, "id2": rec.id2, "length": len(rec.image),
                       "sha256": sha256(rec.image)}
                if decode_images:
                    try:
                        a = decode(rec.image, exif=False, mode="RGB")
                        row["decoded"] = [int(a.shape[0]), int(a.shape[1])]
                        row["error"] = None
                    except DecodeError as e:
                        row["decoded"] = None
                        row["error"] = str(e)
                yield row
        finally:
            reader.close()
