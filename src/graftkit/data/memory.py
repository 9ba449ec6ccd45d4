"""Small data is decoded once: an ImageDataset's images, decoded and pre-resized, kept in RAM.

`ImageDataset.cache(budget)` decodes every image once, exactly as the streamed path
decodes it (same decoder, same JPEG DCT downscaling, then the shorter side brought down
to the pipeline's `presize`, the size it resizes to before cropping), and stores the
uint8 pixels in ONE flat tensor in shared memory, with offsets and shapes. Augmentation
then runs on the cached pixels, so a sample is the same tensor, bit for bit, cached or
streamed, for the same (seed, epoch, index): resume and worker-count independence hold.

DataLoader worker processes share the cache instead of copying it: forked workers see
the parent's pages (one big tensor: no per-image Python objects whose reference counts
would touch, and so copy, every page), and spawned workers receive the shared-memory
handle through torch.multiprocessing's pickling.

When the estimated (from a sample) or actual size passes the budget, nothing is kept
and the data streams as before. Budgets: "25%" (of MemAvailable), "2G", "512M",
a number of bytes, or "0"/"off" (always stream).
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import GraftError
from .decode import DecodeError

# `ds` below is an ImageDataset, typed as a torch Dataset: dataset.py imports this module, not the reverse

log = logging.getLogger("graftkit.data")
DEFAULT_BUDGET = "25%"
SAMPLE = 32  # images decoded to estimate the cache's size before deciding
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40,
          "tb": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable; cgroup limit if lower)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2**30
    for path, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = open(path).read().strip()
            if limit.isdigit() and int(limit) < 2**60:
                avail = min(avail, int(limit) - int(open(used).read().strip()))
                break
        except OSError:
            continue
    return max(0, avail)


def parse_budget(spec: Any) -> int:
    """Bytes from a budget: '25%' (of available RAM), '2G', '512MB', 1e9, '0'/'off'/'none' (no cache)."""
    if spec is None or spec is False:
        return 0
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if spec < 0:
            raise GraftError(f"memory budget {spec!r} is negative", "give e.g. 25%, 2G or 0")
        return int(spec)
    s = str(spec).strip().lower()
    if s in ("off", "none", "no", "false", "0", "stream"):
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", s)
    if m:
        frac = float(m.group(1)) / 100
        if frac > 1:
            raise GraftError(f"memory budget {spec!r} is over 100%", "give a share of RAM such as 25%")
        return int(frac * available_memory())
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", s)
    if not m or m.group(2) not in _UNITS:
        raise GraftError(f"memory budget {spec!r} is not understood", "give e.g. 25% (of free RAM), 2G, 512M or 0 (off)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class MemoryCache:
    """Decoded uint8 CHW images in one flat shared-memory tensor; failed decodes kept as their reason."""

    def __init__(self, data: torch.Tensor, offsets: torch.Tensor, shapes: torch.Tensor, reasons: dict[int, str]):
        self.data, self.offsets, self.shapes, self.reasons = data, offsets, shapes, reasons
        self.key: tuple = ()  # the decode settings it was made with (ImageDataset._decode_key)

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())

    def get(self, i: int) -> torch.Tensor:
        off = int(self.offsets[i])
        if off < 0:
            reason = self.reasons.get(i, "could not be decoded")
            raise DecodeError(f"image {i}: {reason}", "check the file", reason)
        c, h, w = (int(v) for v in self.shapes[i])
        # a copy: the pipeline may hand back its input (e.g. an eval crop of the exact size) and a caller may write
        # into what it gets; the cache must stay as decoded
        return self.data[off:off + c * h * w].view(c, h, w).clone()


class _Decoded(Dataset):
    """(index, presized uint8 image or the reason it failed), for filling the cache (in worker processes too)."""

    def __init__(self, ds: Dataset, indices):
        self.ds, self.indices = ds, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = self.indices[k]
        try:
            return i, self.ds.decode(i), None
        except DecodeError as e:
            return i, None, getattr(e, "reason", str(e))


def _batches(items):
    return items


def decode_workers(n: int) -> int:
    """Processes for the one decoding pass: nothing else runs meanwhile, so every CPU (at most 8), but none for a
    few hundred small images, where starting the processes costs more than it saves."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    return 0 if n < 256 or cpus < 2 else min(cpus, 8)


def build(ds: Dataset, budget: int, *, workers: int | None = None, progress: bool | None = None,
          description: str = "") -> tuple[MemoryCache | None, dict[str, Any]]:
    """Decode `ds` once into a MemoryCache if it fits `budget` bytes; else (None, why)."""
    from ..progress import make_progress

    n = len(ds)
    info: dict[str, Any] = {"cached": False, "budget_bytes": int(budget), "images": n}
    if budget <= 0:
        info["reason"] = "memory cache turned off"
        return None, info
    t0 = time.perf_counter()
    # estimate from an even sample, with a margin for the variation in image sizes
    step = max(1, n // SAMPLE)
    sample = [_Decoded(ds, [i])[0] for i in range(0, n, step)[:SAMPLE]]
    sizes = [img.numel() for _, img, _ in sample if img is not None]
    estimate = int((sum(sizes) / len(sizes) if sizes else 0) * n * 1.1)
    info["estimate_bytes"] = estimate
    if estimate > budget:
        info["reason"] = f"about {human(estimate)} decoded, over the memory budget of {human(budget)}"
        return None, info
    workers = decode_workers(n) if workers is None else workers
    # its own generator: the caller's RNG (a training run's dropout draws) must not move
    loader = DataLoader(_Decoded(ds, range(n)), batch_size=16, num_workers=workers, collate_fn=_batches,
                        generator=torch.Generator(),
                        multiprocessing_context="fork" if workers and "fork" in torch.multiprocessing.get_all_start_methods()
                        and not torch.cuda.is_initialized() else ("spawn" if workers else None))
    images: list[torch.Tensor | None] = [None] * n
    reasons: dict[int, str] = {}
    total = 0
    with make_progress("img", disable=None if progress is None else not progress) as bar:
        task = bar.add_task(f"decoding {description or 'images'} into memory", total=n, rate="")
        for batch in loader:
            for i, img, why in batch:
                if img is None:
                    reasons[i] = why
                    if not ds._failed[i]:  # as the streamed path reports it, once
                        ds._failed[i] = 1
                        log.warning("skipping %s: %s", ds.name(i), why)
                    continue
                images[i] = img
                total += img.numel()
            if total > budget:
                del loader
                info["reason"] = f"over {human(total)} decoded, over the memory budget of {human(budget)}"
                return None, info
            speed = bar.tasks[-1].speed
            bar.update(task, advance=len(batch), rate=f"{speed:.0f} img/s {human(total)}" if speed else human(total))
    data = torch.empty(total, dtype=torch.uint8).share_memory_()
    offsets = torch.full((n,), -1, dtype=torch.int64)
    shapes = torch.zeros((n, 3), dtype=torch.int32)
    off = 0
    for i in range(n):
        img = images[i]
        if img is None:
            continue
        k = img.numel()
        data[off:off + k].view(img.shape).copy_(img)  # CHW order, contiguous
        offsets[i], shapes[i] = off, torch.tensor(img.shape, dtype=torch.int32)
        off += k
        images[i] = None
    info.update(cached=True, bytes=total, seconds=round(time.perf_counter() - t0, 2), failed=len(reasons),
                decode_workers=workers)
    return MemoryCache(data, offsets.share_memory_(), shapes.share_memory_(), reasons), info
