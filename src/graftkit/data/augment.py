"""Augmentations by name, from a YAML/JSON-friendly spec, on uint8 CHW tensors.

A spec is a list whose items are a name (`"hflip"`) or a one-key mapping
`{name: {param: value}}` (or `{"name": ..., param: value}`), e.g.

    - random_resized_crop: {scale: [0.35, 1.0]}
    - hflip
    - color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4}
    - pca_lighting: {alphastd: 0.1}

Names: random_resized_crop, random_resize, resize (shorter), random_crop, center_crop, hflip, vflip, rotation,
affine, color_jitter, brightness, contrast, saturation, hue, grayscale,
pca_lighting (AlexNet-style lighting noise), gaussian_noise, blur, random_erasing. Geometric and
colour ops are torchvision.transforms.v2 where it has them; pca_lighting and
gaussian_noise work directly on uint8 (torchvision's noise needs float images).

The hot path (resize, crops, random resized crop, flips) has small own ops
(`RngOp`) that draw from a per-sample `random.Random` passed in by the dataset and
call torchvision's functional kernels directly: torchvision's v2 transform classes
spend more time in Python bookkeeping than in the pixel work on 224 px images.
The v2 ops draw from torch's global RNG, which the dataset then seeds per sample.
"""
from __future__ import annotations

from typing import Any, Callable

import math
import random

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import GraftError

# ImageNet RGB eigen-decomposition used by AlexNet / fb.resnet.torch lighting noise (pixel range 0..1).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


class RngOp:
    """An op called as op(img, rng) with a random.Random, so a sample's draws need no global RNG."""
    uses_rng = True

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


class Resize(RngOp):
    """Shorter side to `size` (antialiased bilinear)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img, rng=None):
        h, w = img.shape[-2:]
        if min(h, w) == self.size:
            return img
        return F.resize(img, [self.size], antialias=True)


class CenterCrop(RngOp):
    def __init__(self, size):
        self.size = _hw(size)

    def __call__(self, img, rng=None):
        return F.center_crop(img, list(self.size))


class RandomCrop(RngOp):
    """A random (H, W) window; images smaller than that are resized up first."""

    def __init__(self, size):
        self.size = _hw(size)

    def __call__(self, img, rng):
        th, tw = self.size
        h, w = img.shape[-2:]
        if h < th or w < tw:
            img = F.resize(img, [max(th, math.ceil(h * tw / w)), max(tw, math.ceil(w * th / h))], antialias=True)
            h, w = img.shape[-2:]
        i, j = rng.randint(0, h - th), rng.randint(0, w - tw)
        return img[..., i:i + th, j:j + tw]


class RandomResizedCrop(RngOp):
    """Inception-style crop: area fraction in `scale`, aspect ratio log-uniform in `ratio`, resized to `size`.

    The same sampling rule as torchvision's RandomResizedCrop (10 tries, then a centre crop)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = _hw(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if not (0 < self.scale[0] <= self.scale[1] <= 1.0) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError("need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]")

    def params(self, h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = h * w
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(lo, hi))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img, rng):
        i, j, ch, cw = self.params(img.shape[-2], img.shape[-1], rng)
        return F.resized_crop(img, i, j, ch, cw, list(self.size), antialias=True)


class RandomFlip(RngOp):
    def __init__(self, p: float = 0.5, vertical: bool = False):
        self.p, self.vertical = float(p), bool(vertical)

    def __call__(self, img, rng):
        if rng.random() >= self.p:
            return img
        return img.flip(-2) if self.vertical else img.flip(-1)


class PCALighting(RngOp):
    """AlexNet lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, alphastd), to every pixel."""

    def __init__(self, alphastd: float = 0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if self.alphastd == 0 or img.shape[-3] != 3:
            return img
        alpha = torch.tensor([rng.gauss(0.0, 1.0) for _ in range(3)]) * self.alphastd
        rgb = (self.eigvec @ (alpha * self.eigval)) * 255.0
        return (img.to(torch.int16) + rgb.round().to(torch.int16).view(3, 1, 1)).clamp_(0, 255).to(torch.uint8)


class GaussianNoise(RngOp):
    """Additive Gaussian pixel noise, std in pixel units of 0..1 (like torchvision's), on uint8."""

    def __init__(self, std: float = 0.05, p: float = 1.0):
        self.std, self.p = float(std), float(p)

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if self.std == 0 or rng.random() >= self.p:
            return img
        g = torch.Generator().manual_seed(rng.getrandbits(63))
        noise = torch.randn(img.shape, generator=g) * (self.std * 255.0)
        return (img.float() + noise).round_().clamp_(0, 255).to(torch.uint8)


class RandomErasing(RngOp):
    """Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020): with probability
    p, a rectangle of `scale` of the image's area and aspect ratio in `ratio` is filled with random pixels.
    It asks the network to recognise an object from any part of it, which small data sets lack."""

    def __init__(self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
        self.p, self.scale, self.ratio = float(p), tuple(scale), tuple(ratio)
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError("scale must lie in (0, 1] and ratio be positive, each as [low, high]")

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if rng.random() >= self.p:
            return img
        h, w = img.shape[-2:]
        for _ in range(10):  # (a draw that does not fit the image is drawn again, as torchvision does)
            area = rng.uniform(*self.scale) * h * w
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top, left = rng.randint(0, h - eh), rng.randint(0, w - ew)
                g = torch.Generator().manual_seed(rng.getrandbits(63))
                out = img.clone()
                out[..., top:top + eh, left:left + ew] = torch.randint(0, 256, (*img.shape[:-2], eh, ew),
                                                                       generator=g, dtype=torch.uint8)
                return out
        return img


class RandomResize(RngOp):
    """Resize the shorter side to a random length in [min_size, max_size] (scale augmentation)."""

    def __init__(self, min_size: int = 256, max_size: int = 480):
        self.min_size, self.max_size = int(min_size), int(max_size)

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        return F.resize(img, [rng.randint(self.min_size, self.max_size)], antialias=True)


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _rrc(out, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), size=None):
    return RandomResizedCrop(size or out, scale=scale, ratio=ratio)


def _blur(kernel_size=5, sigma=(0.1, 2.0), p=1.0):
    t = v2.GaussianBlur(kernel_size, sigma=_pair(sigma))
    return v2.RandomApply([t], p=p) if p < 1 else t


def _rotation(degrees=15, p=1.0):
    t = v2.RandomRotation(degrees)
    return v2.RandomApply([t], p=p) if p < 1 else t


def _affine(degrees=0, translate=None, scale=None, shear=None, p=1.0):
    t = v2.RandomAffine(degrees, translate=_pair(translate), scale=_pair(scale), shear=_pair(shear))
    return v2.RandomApply([t], p=p) if p < 1 else t


# name -> factory(out, **params); `out` is the pipeline's output (H, W) for ops that need it.
REGISTRY: dict[str, Callable[..., Callable]] = {
    "random_resized_crop": lambda out, **k: _rrc(out, **k),
    "random_resize": lambda out, **k: RandomResize(**k),
    "random_crop": lambda out, **k: RandomCrop(k.get("size", out)),
    "resize": lambda out, shorter=256: Resize(shorter),
    "center_crop": lambda out, **k: CenterCrop(k.get("size", out)),
    "hflip": lambda out, p=0.5: RandomFlip(p),
    "vflip": lambda out, p=0.5: RandomFlip(p, vertical=True),
    "rotation": lambda out, **k: _rotation(**k),
    "affine": lambda out, **k: _affine(**k),
    "color_jitter": lambda out, **k: v2.ColorJitter(**{n: _pair(v) for n, v in k.items()}),
    "brightness": lambda out, value=0.4: v2.ColorJitter(brightness=value),
    "contrast": lambda out, value=0.4: v2.ColorJitter(contrast=value),
    "saturation": lambda out, value=0.4: v2.ColorJitter(saturation=value),
    "hue": lambda out, value=0.1: v2.ColorJitter(hue=value),
    "grayscale": lambda out, p=0.1: v2.RandomGrayscale(p),
    "pca_lighting": lambda out, **k: PCALighting(**k),
    "gaussian_noise": lambda out, **k: GaussianNoise(**k),
    "random_erasing": lambda out, **k: RandomErasing(**k),
    "blur": lambda out, **k: _blur(**k),
}


def parse_spec(spec) -> list[tuple[str, dict[str, Any]]]:
    """Normalise a spec (list of names / {name: params} / {"name": ..}) to [(name, params)]."""
    if spec is None:
        return []
    if isinstance(spec, (str, dict)):
        spec = [spec]
    items = []
    for item in spec:
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and "name" in item:
            params = dict(item)
            name = params.pop("name")
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = dict(params or {})
        else:
            raise GraftError(f"augmentation {item!r} is not understood",
                             "write a name or {name: {param: value}}")
        if name not in REGISTRY:
            raise GraftError(f"unknown augmentation {name!r}", f"use one of: {', '.join(sorted(REGISTRY))}")
        items.append((name, params))
    return items


def build(spec, size) -> list[Callable]:
    """The transforms of a spec; `size` (H, W) is the pipeline's output size."""
    ops = []
    for name, params in parse_spec(spec):
        try:
            ops.append(REGISTRY[name](size, **params))
        except (TypeError, ValueError) as e:
            raise GraftError(f"augmentation {name!r}: bad parameters {params} ({e})",
                             "see graftkit.data.augment for each op's parameters") from None
    return ops
