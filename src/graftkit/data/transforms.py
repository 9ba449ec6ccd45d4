"""Train and eval pipelines built from a package's preprocessing dict (see graftkit.meta).

The dict's keys: `input_size` [C, H, W], `resize` (shorter side before the eval
centre crop), `interpolation`, `mean`, `std` (in units of `pixel_range`),
`pixel_range` (1.0: pixels in 0..1; 255: Caffe-style 0..255), `channel_order`
("RGB" or "BGR"). Missing keys take ImageNet defaults.

Pipelines work on uint8 CHW tensors until the last step; `Normalize` then makes
float32 `(x * pixel_range/255 - mean) / std` in the model's channel order. With
`normalize=False` the pipeline stops at uint8 (smaller batches to move; call
`pipeline.normalize(batch)` later, e.g. on the GPU).

    eval_pipeline(pre)                     resize shorter side -> centre crop -> normalise
    train_pipeline(pre, augment=spec)      augmentations (default: random resized crop + flip)
"""
from __future__ import annotations

import math
import numbers
import random
from typing import Any, Callable, Sequence

import torch

from ..errors import GraftError, short
from . import augment as aug

DEFAULT_PRE = {"input_size": [3, 224, 224], "resize": 256, "interpolation": "bilinear",
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "pixel_range": 1.0,
               "channel_order": "RGB"}
DEFAULT_TRAIN_AUGMENT = ["random_resized_crop", "hflip"]
_SIZE_OPS = {"random_resized_crop", "center_crop", "random_crop"}


MAX_SIDE = 8192  # pixels: the largest input side a package's preprocessing may ask for
_PRE_HINT = "the package's preprocessing is corrupt; set it again (graft transplant/convert --input-size ...)"


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return _is_real(v) and float(v).is_integer()


def _is_seq(v: Any) -> bool:
    return hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict))


def complete(pre: dict[str, Any] | None) -> dict[str, Any]:
    """The preprocessing dict with defaults filled in and checked."""
    if pre is not None and not isinstance(pre, dict):
        raise GraftError(f"preprocessing {short(pre)} is not a dict of settings", _PRE_HINT)
    out = dict(DEFAULT_PRE)
    out.update({k: v for k, v in (pre or {}).items() if v is not None})
    size = out["input_size"]
    if _is_int(size):
        size = [3, size, size]
    if not _is_seq(size) or len(size) not in (2, 3) or not all(_is_int(s) for s in size):
        raise GraftError(f"preprocessing input_size {short(size)} is not [channels,] height, width", _PRE_HINT)
    if len(size) == 2:
        size = [3, *size]
    out["input_size"] = [int(s) for s in size]
    c = out["input_size"][0]
    if c not in (1, 3):
        raise GraftError(f"preprocessing input_size {size}: {c} channels is not supported", "use 1 or 3 channels")
    if not all(1 <= s <= MAX_SIDE for s in size[1:]):
        raise GraftError(f"preprocessing input_size {size}: sides must be 1..{MAX_SIDE} pixels", _PRE_HINT)
    if "resize" not in (pre or {}):
        crop = (pre or {}).get("crop_pct", 0.875)
        if not _is_real(crop) or not 0.05 <= crop <= 1:
            raise GraftError(f"preprocessing crop_pct {short(crop)} is not a fraction in 0.05..1", _PRE_HINT)
        out["resize"] = int(round(max(out["input_size"][1:]) / crop))
    if not _is_int(out["resize"]) or not 1 <= out["resize"] <= 2 * MAX_SIDE:
        raise GraftError(f"preprocessing resize {short(out['resize'])} is not a side of 1..{2 * MAX_SIDE} pixels",
                         _PRE_HINT)
    pr = out["pixel_range"]
    if not _is_real(pr) or not math.isfinite(pr) or pr <= 0:
        raise GraftError(f"preprocessing pixel_range {short(pr)} is not a positive number", _PRE_HINT)
    for key in ("mean", "std"):
        v = out[key]
        if not (_is_real(v) or _is_seq(v) and all(_is_real(x) for x in v)):
            raise GraftError(f"preprocessing {key} {short(v)} is not a number or a list of numbers", _PRE_HINT)
        v = [float(v)] * c if _is_real(v) else [float(x) for x in v]
        if not all(math.isfinite(x) for x in v):
            raise GraftError(f"preprocessing {key} {v} is not finite", _PRE_HINT)
        if len(v) == 1:
            v = v * c
        if len(v) == 3 and c == 1 and key not in (pre or {}):  # ImageNet defaults for a gray model
            v = [sum(v) / 3]
        if len(v) != c:
            raise GraftError(f"preprocessing {key} has {len(v)} values for {c} channels", "give one per channel")
        out[key] = v
    if any(s == 0 for s in out["std"]):
        raise GraftError("preprocessing std contains 0", "use the std of the data the model was trained on")
    if not isinstance(out["interpolation"], str):
        raise GraftError(f"preprocessing interpolation {short(out['interpolation'])} is not a name", _PRE_HINT)
    out["channel_order"] = str(out["channel_order"]).upper()
    if out["channel_order"] not in ("RGB", "BGR") and not (out["channel_order"] == "GRAY" and c == 1):
        # ("gray": what the Caffe converter writes for one-channel nets)
        raise GraftError(f"channel_order {out['channel_order']!r} is not RGB or BGR", "use RGB or BGR")
    return out


class Normalize(torch.nn.Module):
    """uint8 CHW (or NCHW) RGB -> float32 in the model's range, channel order, mean and std."""

    def __init__(self, pre: dict[str, Any]):
        super().__init__()
        pre = complete(pre)
        c = pre["input_size"][0]
        std = torch.tensor(pre["std"], dtype=torch.float32)
        mean = torch.tensor(pre["mean"], dtype=torch.float32)
        self.flip = pre["channel_order"] == "BGR" and c == 3
        self.scale = (float(pre["pixel_range"]) / 255.0 / std).view(c, 1, 1)
        self.offset = (mean / std).view(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(-3)
        scale, offset = self.scale.to(x.device), self.offset.to(x.device)
        return x.to(torch.float32).mul_(scale).sub_(offset)


class Pipeline:
    """A picklable chain of uint8 transforms plus the facts the decoder needs.

    channels: 1 or 3 (how images are decoded); min_side: the shorter side the
    decoder may shrink a JPEG to (DCT scaling) without losing what the pipeline uses.
    `pipeline(img, rng)`: graftkit's own ops draw from `rng` (a random.Random); if
    `uses_torch_rng`, some ops (torchvision v2) draw from torch's global RNG instead.
    """

    def __init__(self, ops: Sequence[Callable], size: tuple[int, int], channels: int, min_side: int,
                 normalize: Normalize | None):
        self.ops = list(ops)
        self.size = size
        self.channels = channels
        self.min_side = min_side
        self.normalize = normalize
        self._own = [bool(getattr(op, "uses_rng", False)) for op in self.ops]
        # the shorter side images are brought down to before the first op (ImageDataset.decode, and the memory
        # cache): the resize before the crop, or for a random resized crop the eval resize (>= the output);
        # a scale augmentation (random_resize) keeps what it may enlarge to
        self.presize = max([int(min_side), *size] + [getattr(op, "max_size", 0) for op in self.ops
                                                     if isinstance(op, aug.RandomResize)])
        self.uses_torch_rng = not all(self._own)

    def __call__(self, img: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        if rng is None:  # called directly: draws follow torch's seed
            rng = random.Random(int(torch.randint(0, 2**62, ())))
        for op, own in zip(self.ops, self._own):
            img = op(img, rng) if own else op(img)
        if self.normalize is not None:
            img = self.normalize(img)
        return img

    def __repr__(self) -> str:
        return f"Pipeline(size={self.size}, channels={self.channels}, ops={self.ops}, normalize={self.normalize is not None})"


def eval_pipeline(pre: dict[str, Any] | None = None, normalize: bool = True) -> Pipeline:
    """Resize the shorter side to `resize`, centre-crop `input_size`, normalise."""
    pre = complete(pre)
    c, h, w = pre["input_size"]
    ops = [aug.Resize(int(pre["resize"])), aug.CenterCrop((h, w))]
    return Pipeline(ops, (h, w), c, int(pre["resize"]), Normalize(pre) if normalize else None)


def train_pipeline(pre: dict[str, Any] | None = None, augment=None, normalize: bool = True) -> Pipeline:
    """Augmentations from `augment` (default random resized crop + horizontal flip), then normalise.

    If the spec has no op that sets the output size (random_resized_crop, center_crop), images are
    first resized to `resize` and randomly cropped to `input_size` (Caffe's train-time crop).
    """
    pre = complete(pre)
    c, h, w = pre["input_size"]
    spec = DEFAULT_TRAIN_AUGMENT if augment is None else augment
    names = [n for n, _ in aug.parse_spec(spec)]
    ops = aug.build(spec, (h, w))
    if not _SIZE_OPS & set(names):
        ops = [aug.Resize(int(pre["resize"])), aug.RandomCrop((h, w))] + ops
    return Pipeline(ops, (h, w), c, int(pre["resize"]), Normalize(pre) if normalize else None)


def pipelines(pre: dict[str, Any] | None = None, augment=None, normalize: bool = True) -> tuple[Pipeline, Pipeline]:
    """(train, eval) pipelines for one preprocessing dict."""
    return train_pipeline(pre, augment, normalize), eval_pipeline(pre, normalize)
