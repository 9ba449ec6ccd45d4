"""Stand-in for the data layer's evaluation transform (a package's preprocessing dict -> tensor).

TEMPORARY: replaced by graftkit.data's eval transform as soon as it lands.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.functional import InterpolationMode


def eval_transform(prep: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    c, h, w = prep.get("input_size") or (3, 224, 224)
    interp = InterpolationMode(prep.get("interpolation", "bilinear"))
    resize = prep.get("resize")
    steps = [v2.Resize(int(resize), interpolation=interp, antialias=True), v2.CenterCrop((h, w))] if resize \
        else [v2.Resize((h, w), interpolation=interp, antialias=True)]
    scale = float(prep.get("pixel_range", 1.0))
    mean = torch.tensor(prep.get("mean") or [0.0] * c, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(prep.get("std") or [1.0] * c, dtype=torch.float32).view(-1, 1, 1)
    bgr = str(prep.get("channel_order", "RGB")).upper() == "BGR"
    pipeline = v2.Compose([v2.PILToTensor(), *steps, v2.ToDtype(torch.float32, scale=True)])

    def apply(image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if c == 1 else "RGB")
        x = pipeline(image) * scale
        if bgr:
            x = x.flip(0)
        return (x - mean) / std

    return apply
