"""Per-channel mean and std of the user's own images, and a Caffe mean image (`.binaryproto`).

Statistics are exact over every pixel of every decodable image (float64 sums,
computed in DataLoader workers), reported in RGB order in 0..255 and 0..1 units,
ready for a preprocessing dict. The Caffe mean is what Caffe's `compute_image_mean`
writes: a BlobProto (num=1, channels, height, width, float data) of the mean image
in BGR order and 0..255, after resizing every image to height x width.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from ..atomic import atomic_open
from ..errors import GraftError
from ..progress import track
from .dataset import ImageDataset


class _Sums:
    """Per-image float64 sums (and optionally the image resized for the mean image)."""
    channels = 3
    min_side = None

    def __init__(self, mean_size: tuple[int, int] | None):
        self.mean_size = mean_size

    def __call__(self, img: torch.Tensor):
        x = img.to(torch.float64)
        s = x.sum(dim=(1, 2))
        ss = (x * x).sum(dim=(1, 2))
        n = torch.tensor(float(img.shape[1] * img.shape[2]), dtype=torch.float64)
        if self.mean_size is None:
            return s, ss, n, torch.zeros(0)
        r = v2.functional.resize(img, list(self.mean_size), antialias=True)
        return s, ss, n, r.to(torch.float64)


def compute_stats(source, *, root=None, mean_size: tuple[int, int] | None = None, workers: int = 2,
                  progress: bool | None = None) -> dict:
    """{"images", "skipped", "mean", "std" (RGB, 0..255), "mean01", "std01", "mean_image" (CHW RGB or None)}."""
    ds = source if isinstance(source, ImageDataset) else ImageDataset.open(source, root=root)
    ds.transform = _Sums(mean_size)
    ds.substitute = False
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers if len(ds) >= 64 else 0)
    tot = torch.zeros(3, dtype=torch.float64)
    tot2 = torch.zeros(3, dtype=torch.float64)
    npix, nimg, skipped = 0.0, 0, 0
    mean_img = None
    for item, _ in track(loader, "statistics", total=len(ds), unit="img",
                         disable=None if progress is None else not progress):
        if item is None:
            skipped += 1
            continue
        s, ss, n, r = item
        tot += s
        tot2 += ss
        npix += float(n)
        nimg += 1
        if mean_size is not None:
            mean_img = r if mean_img is None else mean_img + r
    if nimg == 0:
        raise GraftError(f"{ds.description}: no image could be decoded", "run `graft data check` on it")
    mean = tot / npix
    std = (tot2 / npix - mean * mean).clamp_min(0).sqrt()
    return {"images": nimg, "skipped": skipped, "pixels": int(npix), "mean": mean.tolist(), "std": std.tolist(),
            "mean01": (mean / 255).tolist(), "std01": (std / 255).tolist(),
            "mean_image": None if mean_img is None else (mean_img / nimg).to(torch.float32).numpy()}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def blobproto_bytes(mean_chw_rgb: np.ndarray) -> bytes:
    """A Caffe BlobProto of a mean image: num=1 (field 1), channels (2), height (3), width (4),
    packed float data (5) in BGR order, as compute_image_mean writes it."""
    a = np.asarray(mean_chw_rgb, dtype=np.float32)
    if a.ndim != 3:
        raise GraftError(f"mean image has shape {a.shape}", "expected channels x height x width")
    if a.shape[0] == 3:
        a = a[::-1]  # Caffe's images are BGR (OpenCV)
    c, h, w = a.shape
    data = np.ascontiguousarray(a, dtype="<f4").tobytes()
    out = b"".join([b"\x08" + _varint(1), b"\x10" + _varint(c), b"\x18" + _varint(h), b"\x20" + _varint(w),
                    b"\x2a" + _varint(len(data)) + data])
    return out


def write_binaryproto(path: str | os.PathLike, mean_chw_rgb: np.ndarray) -> Path:
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(blobproto_bytes(mean_chw_rgb))
    return path


def read_binaryproto(path: str | os.PathLike) -> np.ndarray:
    """The mean image (C,H,W float32, in the file's BGR order) of a Caffe mean `.binaryproto`."""
    buf = Path(path).read_bytes()
    pos, fields, shape = 0, {}, []

    def varint():
        nonlocal pos
        n = shift = 0
        while True:
            if pos >= len(buf):
                raise GraftError(f"{path}: truncated BlobProto", "re-create the mean file")
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n
    data = None
    while pos < len(buf):
        key = varint()
        fno, wt = key >> 3, key & 7
        if wt == 0:
            fields[fno] = varint()
        elif wt == 2:
            n = varint()
            chunk = buf[pos:pos + n]
            pos += n
            if fno == 5:
                data = np.frombuffer(chunk, "<f4")
            elif fno == 7:  # BlobShape { repeated int64 dim = 1 [packed] }
                p2 = 0
                while p2 < len(chunk):
                    k2 = chunk[p2]
                    p2 += 1
                    ln = chunk[p2]
                    p2 += 1
                    sub = chunk[p2:p2 + ln]
                    p2 += ln
                    if k2 >> 3 == 1:
                        v = s = 0
                        for b in sub:
                            v |= (b & 0x7F) << s
                            s += 7
                            if not b & 0x80:
                                shape.append(v)
                                v = s = 0
        elif wt == 5:
            if fno == 5:
                data = np.concatenate([data if data is not None else np.zeros(0, "<f4"),
                                       np.frombuffer(buf[pos:pos + 4], "<f4")])
            pos += 4
        elif wt == 1:
            pos += 8
        else:
            raise GraftError(f"{path}: not a Caffe BlobProto (wire type {wt})", "give a mean .binaryproto file")
    if data is None:
        raise GraftError(f"{path}: BlobProto has no data", "re-create the mean file")
    if not shape:
        shape = [fields.get(1, 1), fields.get(2, 1), fields.get(3, 1), fields.get(4, 1)]
    return data.reshape(shape[-3:]).astype(np.float32)
