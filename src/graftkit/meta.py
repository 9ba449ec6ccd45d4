"""The package metadata document (see package.py) and where a module carries it.

Kept apart from package.py so that converters (nets/) can attach metadata to the
modules they build without importing the package layer above them.
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import torch.nn as nn

from . import fastjson

FORMAT = "graftkit.package"
VERSION = 1
META_ATTR = "graftkit_meta"  # where a module keeps its package metadata
SPEC_TEXT_PREFIX = "graftkit.spec."  # metadata keys of the spec's long text fields
SPEC_TEXT_MIN = 4096


def make_meta(spec: str | dict, *, classes=None, preprocessing=None, provenance=None, report=None,
              extra=None) -> dict[str, Any]:
    from . import __version__
    prov = {"graftkit": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    prov.update(provenance or {})
    return {"format": FORMAT, "version": VERSION, "spec": spec, "classes": list(classes) if classes else None,
            "preprocessing": preprocessing, "provenance": prov, "report": report, "extra": extra or {}}


def to_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The safetensors header strings of a package: the JSON under "graftkit", except the spec's
    long text fields (a prototxt, a symbol file), each its own string under "graftkit.spec.FIELD":
    plain text for any safetensors tool, and not JSON-escaped twice, which makes loading slower."""
    spec, texts = meta.get("spec"), {}
    if isinstance(spec, dict):
        texts = {k: v for k, v in spec.items() if isinstance(v, str) and len(v) >= SPEC_TEXT_MIN}
        if texts:
            meta = {**meta, "spec": {k: v for k, v in spec.items() if k not in texts}}
    return {"graftkit": json.dumps(meta, separators=(",", ":")),
            **{SPEC_TEXT_PREFIX + k: v for k, v in texts.items()}}


def from_metadata(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The package metadata from the header strings (None: not a package); json.JSONDecodeError if corrupt."""
    raw = metadata.get("graftkit")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise json.JSONDecodeError("the graftkit metadata is not a string", "", 0)
    try:
        meta = fastjson.loads(raw)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    spec = meta.get("spec") if isinstance(meta, dict) else None
    if isinstance(spec, dict):
        spec.update((k[len(SPEC_TEXT_PREFIX):], v) for k, v in metadata.items() if k.startswith(SPEC_TEXT_PREFIX))
    return meta


def meta_of(module: nn.Module) -> dict[str, Any]:
    return getattr(module, META_ATTR, None) or {}


def attach(module: nn.Module, meta: dict[str, Any]) -> nn.Module:
    setattr(module, META_ATTR, meta)
    return module


def imagenet_preprocessing(size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                           crop_pct: float = 0.875) -> dict[str, Any]:
    return {"input_size": [3, size, size], "resize": int(round(size / crop_pct)), "interpolation": "bilinear",
            "mean": list(mean), "std": list(std), "pixel_range": 1.0, "channel_order": "RGB"}


def check_document(meta: Any, where: str) -> dict[str, Any]:
    """A package document's fields have the types graftkit relies on (the file is untrusted data):
    one GraftError naming the field otherwise. Preprocessing values are checked where they are used
    (data.transforms.complete), specs by the converter that builds them."""
    from .errors import GraftError

    def bad(field: str, what: str) -> GraftError:
        return GraftError(f"{where}: the package's graftkit metadata is corrupt ({field} is not {what})",
                          "re-create the package with `graft transplant` or `graft convert`")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GraftError(f"{where}: the package's graftkit metadata is corrupt (not a graftkit package document)")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("version", "an integer")
    spec = meta.get("spec")
    if not (isinstance(spec, str) or isinstance(spec, dict) and isinstance(spec.get("converter"), str)):
        raise bad("spec", "an architecture string or a converter spec")
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "a list of names")
    for key in ("preprocessing", "provenance", "report", "extra"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(key, "an object")
    order = meta.get("order")
    if order is not None and not (isinstance(order, list) and all(isinstance(n, str) for n in order)):
        raise bad("order", "a list of tensor names")
    return meta
