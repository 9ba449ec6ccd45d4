"""Per-channel mean and std of the user's own images, and a Caffe mean image (`.binaryproto`).

Statistics are exact over every pixel of every decodable image (float64 sums,
computed in DataLoader workers), reported in RGB order in 0..255 and 0..1 units,
ready for a preprocessing dict. The Caffe mean is what Caffe's `compute_image_mean`
writes: a BlobProto (num=1, channels, height, width, float data) of the mean image
in BGR order and 0..255, after resizing every image to height x width
(antialiased; Caffe's convert_imageset resizes with OpenCV's bilinear).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

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


def write_mean_binaryproto(path: str | os.PathLike, mean_chw_rgb: np.ndarray) -> Path:
    """Write the mean image as Caffe's compute_image_mean does: BGR channel order, 0..255, float32
    BlobProto (graftkit.formats.caffe does the protobuf encoding)."""
    from ..formats.caffe import write_binaryproto
    a = np.asarray(mean_chw_rgb, dtype=np.float32)
    if a.ndim != 3:
        raise GraftError(f"mean image has shape {a.shape}", "expected channels x height x width")
    return write_binaryproto(path, np.ascontiguousarray(a[::-1] if a.shape[0] == 3 else a))
