"""The run's data: training/validation datasets, class names, labels, preprocessing and normalisation.

Paths (a class folder, a .lst, a RecordIO pack) are opened with graftkit.data;
a torch Dataset of (image tensor, label) is used as it is. Labels and classes are
checked before any training: labels outside 0..K-1 and empty classes are errors
here, with the fix, rather than a loss stuck at 87.3365 later.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from torch.utils.data import Dataset

from ..errors import GraftError
from ..tune.plan import Plan

# Presets of plan `data.augment` (graftkit.data.augment specs).
AUGMENT_PRESETS = {
    "none": [],
    "light": [{"random_resized_crop": {"scale": [0.6, 1.0]}}, "hflip"],
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
    if empty:
        raise GraftError(f"{where}: class {empty[0]!r} has no images"
                         + (f" (and {len(empty) - 1} more empty classes)" if len(empty) > 1 else ""),
                         "add images to it or remove the class")


def open_run_data(train, val, plan: Plan, model_meta: dict[str, Any], *, classes: list[str] | None = None,
                  seed: int = 0) -> RunData:
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


def _open_paths(train, val, plan, model_meta, classes, seed) -> RunData:
    raise GraftError("graftkit.data is not available yet to open image folders")
