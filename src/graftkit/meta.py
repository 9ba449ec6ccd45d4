"""The package metadata document (see package.py) and where a module carries it.

Kept apart from package.py so that converters (nets/) can attach metadata to the
modules they build without importing the package layer above them.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

import torch.nn as nn

FORMAT = "graftkit.package"
VERSION = 1
META_ATTR = "graftkit_meta"  # where a module keeps its package metadata


def make_meta(spec: str | dict, *, classes=None, preprocessing=None, provenance=None, report=None,
              extra=None) -> dict[str, Any]:
    from . import __version__
    prov = {"graftkit": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    prov.update(provenance or {})
    return {"format": FORMAT, "version": VERSION, "spec": spec, "classes": list(classes) if classes else None,
            "preprocessing": preprocessing, "provenance": prov, "report": report, "extra": extra or {}}


def meta_of(module: nn.Module) -> dict[str, Any]:
    return getattr(module, META_ATTR, None) or {}


def attach(module: nn.Module, meta: dict[str, Any]) -> nn.Module:
    setattr(module, META_ATTR, meta)
    return module


def imagenet_preprocessing(size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                           crop_pct: float = 0.875) -> dict[str, Any]:
    return {"input_size": [3, size, size], "resize": int(round(size / crop_pct)), "interpolation": "bilinear",
            "mean": list(mean), "std": list(std), "pixel_range": 1.0, "channel_order": "RGB"}
