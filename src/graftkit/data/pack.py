"""List -> RecordIO pack (`PREFIX.rec/.idx`, or shards `PREFIX-00000.rec/.idx`, ...), like im2rec.

Each list entry becomes one image record (IRHeader id = the entry's index, id2 = 0,
key = the index, label = the first label, or all labels with `pack_label`), in list
order, with the image optionally centre-cropped to a square, resized so its shorter
side is `resize` (antialiased, im2rec's integer size arithmetic) and re-encoded as
JPEG or PNG - or stored as the file's own bytes (`pass_through`). Workers decode and
encode in parallel; the parent writes. Images that cannot be used (unreadable,
corrupt, truncated, empty, outside the root) are skipped and reported with the reason.
Outputs are atomic: all shards and `PREFIX.classes.json` appear together when the
pack is complete, and shards of an older pack with the same prefix are removed.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..errors import GraftError
from ..progress import track
from .decode import DecodeError, decode_tensor
from .lists import Entry, ImageList, classes_path, open_list, resolve_in_root, save_classes
from .recordio import RecordWriter, pack_header


@dataclass(frozen=True)
class PackOptions:
    resize: int = 0            # shorter side in pixels (0: keep)
    center_crop: bool = False  # crop the centre square first (im2rec --center-crop)
    quality: int = 95          # JPEG quality 1-100; for PNG a compression level 0-9 (else 3)
    encoding: str = ".jpg"     # .jpg or .png
    pass_through: bool = False  # store the file's bytes unchanged (checked to decode)
    pack_label: bool = False   # store every label of multi-label entries (IRHeader flag = count)
    color: int = 1             # 1: RGB, 0: grayscale


@dataclass
class PackReport:
    prefix: str
    shards: list[str] = field(default_factory=list)
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "shards": self.shards, "records": self.records, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "images_per_s": round(self.records / self.seconds, 1) if self.seconds else None,
                "skipped": self.skipped}


def _resize_size(w: int, h: int, short: int) -> tuple[int, int]:
    """im2rec's arithmetic: the shorter side becomes `short`, the longer one scales by integer division."""
    if h > w:
        return short, h * short // w
    return w * short // h, short


def encode_image(data: bytes, opts: PackOptions) -> bytes:
    """The image bytes stored for one file (raises DecodeError if it cannot be used).

    Resizing uses torch's antialiased bilinear kernel on uint8 (several times faster than
    Pillow's resize, and unlike im2rec's cv2.resize it does not alias when shrinking);
    JPEGs are encoded by torchvision's libjpeg-turbo (the same bytes as Pillow's, faster)."""
    if opts.pass_through:
        decode_tensor(data, opts.resize or None)  # must decode: a pack never holds unusable images
        return data
    img = decode_tensor(data, opts.resize or None, "L" if opts.color == 0 else "RGB")
    h, w = img.shape[-2:]
    if opts.center_crop and w != h:
        m = min(w, h)
        top, left = (h - m) // 2, (w - m) // 2
        img = img[:, top:top + m, left:left + m]
        h, w = m, m
    if opts.resize and min(w, h) != opts.resize:
        nw, nh = _resize_size(w, h, opts.resize)
        img = F.resize(img, [nh, nw], antialias=True)
    if opts.encoding != ".png":  # libjpeg-turbo straight from the tensor: Pillow's bytes, no Image object
        return tvio.encode_jpeg(img, quality=opts.quality).numpy().tobytes()
    arr = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(
        buf, "PNG", compress_level=opts.quality if 0 <= opts.quality <= 9 else 3)
    return buf.getvalue()


def _work(job):
    """Worker: (position, path or reason, entry, options) -> (position, payload or None, reason)."""
    pos, path, entry, opts = job
    if path is None:
        return pos, None, "points outside the root folder"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return pos, None, f"cannot read ({e.strerror})"
    if not data:
        return pos, None, "zero-byte file"
    try:
        img = encode_image(data, opts)
    except DecodeError as e:
        return pos, None, e.reason
    labels = entry.labels if opts.pack_label else entry.labels[:1]
    return pos, pack_header(labels, entry.index, 0) + img, ""


def _serve(jobs, conn):
    """Worker process: encode its share of the jobs, sending each result as soon as it is ready."""
    torch.set_num_threads(1)  # one process per core already
    try:
        for job in jobs:
            conn.send(_work(job))
    except Exception:  # a bug, not a bad image (_work reports those): the parent raises it
        conn.send((-1, None, traceback.format_exc()))
    finally:
        conn.close()


def _parallel(jobs: list, workers: int):
    """_work over `jobs` in `workers` processes, yielding the results in list order.

    Worker k takes jobs k, k+workers, ... (im2rec's round-robin) and streams results back on
    its own pipe; the parent waits on the pipes and reorders. multiprocessing.Pool instead
    costs its parent ~1 ms of CPU per task (helper threads, locks, wake-ups), which on a
    2-core machine is taken from the workers."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs, conns = [], []
    try:
        for k in range(workers):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_serve, args=(jobs[k::workers], send), daemon=True)
            proc.start()
            send.close()
            procs.append(proc)
            conns.append(recv)
        pending, nxt, live = {}, 0, list(conns)
        while nxt < len(jobs):
            while nxt not in pending:
                if not live:
                    raise GraftError("a packing worker process stopped unexpectedly",
                                     "run again with --workers 1 to see the error")
                for conn in mp_wait(live):
                    try:
                        res = conn.recv()
                    except EOFError:
                        live.remove(conn)
                        continue
                    if res[0] == -1:
                        raise RuntimeError(f"packing worker failed:\n{res[2]}")
                    pending[res[0]] = res
            yield pending.pop(nxt)
            nxt += 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for conn in conns:
            conn.close()


def shard_paths(prefix: Path, n_shards: int) -> list[Path]:
    if n_shards <= 1:
        return [prefix.with_name(prefix.name + ".rec")]
    return [prefix.with_name(f"{prefix.name}-{i:05d}.rec") for i in range(n_shards)]


def _old_shards(prefix: Path) -> list[Path]:
    from .dataset import find_shards
    old = find_shards(prefix)
    single = prefix.with_name(prefix.name + ".rec")
    if single.exists() and single not in old:
        old.append(single)
    return old


def pack(source: str | os.PathLike | ImageList, prefix: str | os.PathLike, *, root=None,
         options: PackOptions | None = None, shard_size: int = 0, workers: int = 2,
         progress: bool | None = None) -> PackReport:
    """Pack a list (`.lst` path or ImageList) into RecordIO; see the module docstring."""
    opts = options or PackOptions()
    if opts.encoding not in (".jpg", ".jpeg", ".png"):
        raise GraftError(f"encoding {opts.encoding!r} is not supported", "use .jpg or .png")
    if not opts.pass_through and opts.encoding != ".png" and not 1 <= opts.quality <= 100:
        raise GraftError(f"JPEG quality {opts.quality} is outside 1..100", "use e.g. --quality 95")
    if opts.resize < 0 or shard_size < 0:
        raise GraftError("--resize and --shard-size must not be negative", "use 0 to turn them off")
    lst = source if isinstance(source, ImageList) else open_list(source, root)
    if not lst.entries:
        raise GraftError(f"{lst.source}: the list is empty", "index some images first with `graft data index`")
    prefix = Path(str(prefix)[:-4] if str(prefix).endswith(".rec") else prefix)
    entries: list[Entry] = lst.entries
    jobs = [(i, resolve_in_root(lst.root, e.path), e, opts) for i, e in enumerate(entries)]
    n_shards = max(1, -(-len(entries) // shard_size)) if shard_size else 1
    paths = shard_paths(prefix, n_shards)
    report = PackReport(str(prefix), [str(p) for p in paths])
    t0 = time.perf_counter()
    writers: list[RecordWriter] = []
    ok = False
    workers = max(1, min(int(workers), len(jobs)))
    source = _parallel(jobs, workers) if workers > 1 else map(_work, jobs)
    try:
        results = source
        written = 0
        if progress or (progress is None and sys.stderr.isatty()):  # a hidden bar still costs ~0.1 ms/image
            results = track(results, f"packing {prefix.name}", total=len(jobs), unit="img", disable=False)
        for pos, payload, reason in results:
            if payload is None:
                report.skipped.append({"index": entries[pos].index, "path": entries[pos].path, "reason": reason})
                continue
            shard = written // shard_size if shard_size else 0
            while len(writers) <= shard:
                writers.append(RecordWriter(paths[len(writers)]))
            writers[shard].write(entries[pos].index, payload)
            report.bytes += len(payload)
            written += 1
        report.records = written
        if written == 0:
            raise GraftError(f"{lst.source}: none of the {len(entries)} images could be packed "
                             f"(first problem: {report.skipped[0]['path']}: {report.skipped[0]['reason']})",
                             "run `graft data check` on the list")
        report.shards = [str(p) for p in paths[:len(writers)]]
        ok = True
    finally:
        if hasattr(source, "close"):
            source.close()  # stops the worker processes
        stale = _old_shards(prefix) if ok else []
        for w in writers:
            w.close(ok)
    for old in stale:
        if str(old) not in report.shards:
            old.unlink(missing_ok=True)
            old.with_suffix(".idx").unlink(missing_ok=True)
    # same file name as a list NAME.lst's map: keep its root so the list stays usable
    save_classes(classes_path(prefix.with_name(prefix.name + ".rec")), lst.classes, lst.root,
                 shards=[Path(s).name for s in report.shards], records=report.records, skipped=report.skipped)
    report.seconds = time.perf_counter() - t0
    return report
