"""The run's data: training/validation datasets, class names, labels, preprocessing and normalisation.

Paths (a class folder, a .lst, a RecordIO pack) are opened with graftkit.data;
a torch Dataset of (image tensor, label) is used as it is. Labels and classes are
checked before any training: labels outside 0..K-1 and empty classes are errors
here, with the fix, rather than a loss stuck at 87.3365 later.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Callable

from torch.utils.data import Dataset

from ..errors import GraftError
from ..tune.plan import Plan

# Presets of plan `data.augment` (graftkit.data.augment specs); `auto` is `small` for small images, else `light`.
AUGMENT_PRESETS = {
    "none": [],
    "light": [{"random_resized_crop": {"scale": [0.6, 1.0]}}, "hflip"],
    # Small images (Fashion-MNIST, CIFAR) are framed tightly around the object: a crop of 60% of the area cuts
    # off what tells a shirt from a T-shirt (sleeves, collar). A little zoom and shift, as CIFAR's pad-and-crop
    # (Fashion-MNIST 100/class, lp-ft-at, 300 s: README "Which strategy").
    "small": [{"random_resized_crop": {"scale": [0.8, 1.0], "ratio": [0.9, 1.11]}}, "hflip"],
    "standard": ["random_resized_crop", "hflip", {"color_jitter": {"brightness": 0.3, "contrast": 0.3,
                                                                   "saturation": 0.3}}],
}


@dataclass
class RunData:
    train: Dataset
    val: Dataset | None
    classes: list[str]
    train_labels: list[int] | None
    val_labels: list[int] | None
    preprocessing: dict[str, Any] | None
    normalize: Callable | None


def _labels(ds: Dataset) -> list[int] | None:
    for attr in ("targets", "labels"):
        v = getattr(ds, attr, None)
        if v is not None and not callable(v):
            try:
                return [int(x) for x in v]
            except (TypeError, ValueError):
                return None
    return None


def check_labels(labels: list[int] | None, classes: list[str], where: str) -> None:
    if labels is None:
        return
    k = len(classes)
    if not labels:
        raise GraftError(f"{where} holds no images", "point --train at a folder of class folders, a .lst or a pack")
    lo, hi = min(labels), max(labels)
    if lo < 0 or hi >= k:
        shift = " (they start at 1: renumber them from 0)" if lo == 1 and hi == k else ""
        raise GraftError(f"{where}: labels run {lo}..{hi} but there are {k} classes, so they must be 0..{k - 1}{shift}",
                         "fix the list's labels (`graft data check` reports them)")
    counts = [0] * k
    for y in labels:
        counts[y] += 1
    empty = [classes[i] for i, c in enumerate(counts) if c == 0]
    if counts and counts[0] == 0 and lo == 1:
        raise GraftError(f"{where}: labels run 1..{hi}, so class {classes[0]!r} (label 0) has no images; labels "
                         "must start at 0", "renumber the list's labels from 0 (`graft data check` reports them)")
    if empty:
        raise GraftError(f"{where}: class {empty[0]!r} has no images"
                         + (f" (and {len(empty) - 1} more empty classes)" if len(empty) > 1 else ""),
                         "add images to it or remove the class")


def open_run_data(train, val, plan: Plan, model_meta: dict[str, Any], *, classes: list[str] | None = None,
                  seed: int = 0) -> RunData:
    if _untransformed_images(train):
        return _open_paths(train, val, plan, model_meta, classes, seed)
    if isinstance(train, Dataset):
        classes = list(classes or getattr(train, "classes", None) or [])
        if not classes:
            raise GraftError("the training dataset has no class names", "pass classes=[...] to fit()")
        tl, vl = _labels(train), _labels(val) if val is not None else None
        check_labels(tl, classes, "the training data")
        if vl is not None and (min(vl) < 0 or max(vl) >= len(classes)):
            raise GraftError(f"the validation labels run {min(vl)}..{max(vl)}, outside 0..{len(classes) - 1}")
        pre = getattr(train, "preprocessing", None) or model_meta.get("preprocessing")
        return RunData(train, val, classes, tl, vl, pre, getattr(train, "normalize", None))
    return _open_paths(train, val, plan, model_meta, classes, seed)


def _untransformed_images(ds) -> bool:
    """A graftkit.data.ImageDataset without a transform: fit() chooses its pipelines, as for a path."""
    from ..data import ImageDataset
    return isinstance(ds, ImageDataset) and ds.transform is None


def with_transform(source, transform, classes=None, seed: int = 0):
    """`source` (an ImageDataset, shallow-copied, or a path) seen through `transform`."""
    from ..data import ImageDataset
    if isinstance(source, ImageDataset):
        ds = copy.copy(source)
        ds.transform = transform
        return ds
    return ImageDataset.open(source, transform, classes=classes, seed=seed)


def _open_paths(train, val, plan: Plan, model_meta: dict[str, Any], classes, seed) -> RunData:
    from ..data import ImageDataset, train_pipeline, eval_pipeline
    probe = train if isinstance(train, ImageDataset) else ImageDataset.open(train, None, classes=classes, seed=seed)
    if classes is not None:
        probe.classes = list(classes)
    _no_empty_folders(train, probe.classes)
    classes = list(probe.classes)
    pre = preprocessing_for(model_meta.get("preprocessing"), plan, probe)
    augment = augmentation(plan.data.augment, probe)
    tp = train_pipeline(pre, augment=augment, normalize=False)
    ep = eval_pipeline(pre, normalize=False)
    train_ds = with_transform(train, tp, classes, seed)
    labels = [int(y) for y in train_ds.targets]
    check_labels(labels, classes, getattr(train, "description", None) or str(train))
    val_ds, val_labels = None, None
    if val is not None:
        val_ds = with_transform(val, ep, classes, seed)
        val_labels = [int(y) for y in val_ds.targets]
    return RunData(train_ds, val_ds, classes, labels, val_labels, pre, tp.normalize or _normalizer(pre))


def _no_empty_folders(source, classes: list[str]) -> None:
    """A class folder without images is dropped by the indexer; for training it is a mistake to report."""
    if not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return
    known = set(classes)
    for d in sorted(os.scandir(source), key=lambda e: e.name):
        if d.is_dir() and not d.name.startswith(".") and d.name not in known:
            raise GraftError(f"{source}: class {d.name!r} has no images (folder {d.path} is empty)",
                             "add images to it or remove the folder")


def _normalizer(pre):
    from ..data import Normalize
    return Normalize(pre)


SMALL_SIDE = 64  # images with a shorter side under this (28x28 Fashion-MNIST, 32x32 CIFAR) count as small


def _median_side(probe) -> int | None:
    """The median shorter side of up to 8 images spread over the data set (None when none decodes)."""
    sides = []
    for i in range(0, len(probe), max(1, len(probe) // 8))[:8]:
        try:
            sides.append(min(probe.decode(i).shape[1:]))
        except Exception:  # undecodable samples are the loader's business
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


def augmentation(augment, probe) -> list:
    """The plan's `data.augment` as a spec list: a preset by name (auto: by the images' size), or the list."""
    if not isinstance(augment, str):
        return augment
    if augment == "auto":
        side = _median_side(probe)
        augment = "small" if side is not None and side < SMALL_SIDE else "light"
    return AUGMENT_PRESETS[augment]


def preprocessing_for(model_pre: dict[str, Any] | None, plan: Plan, probe) -> dict[str, Any]:
    """The model's preprocessing at the plan's input size. `auto` keeps the model's size, except for small
    images (under SMALL_SIDE, e.g. 28x28 Fashion-MNIST), which are upsampled 4x (96..the model's size) without a
    crop: pretrained filters expect objects of roughly ImageNet scale."""
    from ..data.transforms import complete
    pre = complete(model_pre)
    c, h, w = pre["input_size"]
    size = plan.data.size
    small = False
    if size == "auto":
        side = _median_side(probe) or h
        small = side < SMALL_SIDE
        size = min(h, max(96, int(round(4 * side / 16)) * 16)) if small else h
    size = int(size)
    out = dict(pre, input_size=[c, size, size])
    out["resize"] = size if small else int(round(size * pre["resize"] / max(h, 1)))
    return out
