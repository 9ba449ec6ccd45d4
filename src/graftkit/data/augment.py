"""Augmentations by name, from a YAML/JSON-friendly spec, on uint8 CHW tensors.

A spec is a list whose items are a name (`"hflip"`) or a one-key mapping
`{name: {param: value}}` (or `{"name": ..., param: value}`), e.g.

    - random_resized_crop: {scale: [0.35, 1.0]}
    - hflip
    - color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4}
    - pca_lighting: {alphastd: 0.1}

Names: random_resized_crop, random_resize, center_crop, hflip, vflip, rotation,
affine, color_jitter, brightness, contrast, saturation, hue, grayscale,
pca_lighting (AlexNet-style lighting noise), gaussian_noise, blur. Geometric and
colour ops are torchvision.transforms.v2 where it has them; pca_lighting and
gaussian_noise work directly on uint8 (torchvision's noise needs float images).
All randomness comes from torch's global RNG, which the dataset seeds per sample.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms import v2

from ..errors import GraftError

# ImageNet RGB eigen-decomposition used by AlexNet / fb.resnet.torch lighting noise (pixel range 0..1).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


class PCALighting(torch.nn.Module):
    """AlexNet lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, alphastd), to every pixel."""

    def __init__(self, alphastd: float = 0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
        super().__init__()
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0 or img.shape[-3] != 3:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (self.eigvec @ (alpha * self.eigval)) * 255.0
        return (img.to(torch.int16) + rgb.round().to(torch.int16).view(3, 1, 1)).clamp_(0, 255).to(torch.uint8)


class GaussianNoise(torch.nn.Module):
    """Additive Gaussian pixel noise, std in pixel units of 0..1 (like torchvision's), on uint8."""

    def __init__(self, std: float = 0.05, p: float = 1.0):
        super().__init__()
        self.std, self.p = float(std), float(p)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.std == 0 or torch.rand(()) >= self.p:
            return img
        noise = torch.randn(img.shape) * (self.std * 255.0)
        return (img.float() + noise).round_().clamp_(0, 255).to(torch.uint8)


class RandomResize(torch.nn.Module):
    """Resize the shorter side to a random length in [min_size, max_size] (scale augmentation)."""

    def __init__(self, min_size: int = 256, max_size: int = 480):
        super().__init__()
        self.min_size, self.max_size = int(min_size), int(max_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        size = int(torch.randint(self.min_size, self.max_size + 1, ()).item())
        return v2.functional.resize(img, size, antialias=True)


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _rrc(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    return v2.RandomResizedCrop(size, scale=_pair(scale), ratio=_pair(ratio), antialias=True)


def _blur(kernel_size=5, sigma=(0.1, 2.0), p=1.0):
    t = v2.GaussianBlur(kernel_size, sigma=_pair(sigma))
    return v2.RandomApply([t], p=p) if p < 1 else t


def _rotation(degrees=15, p=1.0):
    t = v2.RandomRotation(degrees)
    return v2.RandomApply([t], p=p) if p < 1 else t


def _affine(degrees=0, translate=None, scale=None, shear=None, p=1.0):
    t = v2.RandomAffine(degrees, translate=_pair(translate), scale=_pair(scale), shear=_pair(shear))
    return v2.RandomApply([t], p=p) if p < 1 else t


# name -> factory(size, **params); `size` is the output (H, W) for ops that need it.
REGISTRY: dict[str, Callable[..., Callable]] = {
    "random_resized_crop": lambda size, **k: _rrc(size, **k),
    "random_resize": lambda size, **k: RandomResize(**k),
    "center_crop": lambda size, **k: v2.CenterCrop(k.get("size", size)),
    "hflip": lambda size, p=0.5: v2.RandomHorizontalFlip(p),
    "vflip": lambda size, p=0.5: v2.RandomVerticalFlip(p),
    "rotation": lambda size, **k: _rotation(**k),
    "affine": lambda size, **k: _affine(**k),
    "color_jitter": lambda size, **k: v2.ColorJitter(**{n: _pair(v) for n, v in k.items()}),
    "brightness": lambda size, value=0.4: v2.ColorJitter(brightness=value),
    "contrast": lambda size, value=0.4: v2.ColorJitter(contrast=value),
    "saturation": lambda size, value=0.4: v2.ColorJitter(saturation=value),
    "hue": lambda size, value=0.1: v2.ColorJitter(hue=value),
    "grayscale": lambda size, p=0.1: v2.RandomGrayscale(p),
    "pca_lighting": lambda size, **k: PCALighting(**k),
    "gaussian_noise": lambda size, **k: GaussianNoise(**k),
    "blur": lambda size, **k: _blur(**k),
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
