"""Atomic writes: an output file is either complete or absent, never half-written.

Everything graftkit writes for the user (packages, lists, packs, checkpoints)
goes through here, so an interrupted run never leaves a truncated file and never
destroys the previous version of the file.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range if sys.platform == "linux" else None


def start_writeback(f, start: int, end: int) -> None:
    """Ask the kernel to start writing bytes [start, end) of the open file `f` to disk now (Linux;
    elsewhere nothing): a large file's disk writes then overlap with producing the rest of it,
    and the fsync that ends an atomic write waits for little (benchmarks/caffe_convert.py, "+save")."""
    if _sync_file_range is None or end <= start:
        return
    f.flush()
    _sync_file_range(f.fileno(), ctypes.c_longlong(start), ctypes.c_longlong(end - start), _SYNC_FILE_RANGE_WRITE)


def mode_for(path: Path, directory: bool = False) -> int:
    """Permissions for what replaces `path` (mkstemp/mkdtemp create private 0600/0700 ones): those of
    the file being replaced, else what a plain open() or mkdir() would give under the umask."""
    try:
        if not directory:
            return path.stat().st_mode & 0o7777
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs):
    """Open a temporary file beside `path` for writing; it replaces `path` on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
