"""The graftkit model package: one .safetensors file = weights + everything needed to use them.

The tensors are exactly the module's state_dict(), so plain `safetensors` plus the
architecture can load a package without graftkit. The header's metadata holds the
key "graftkit", whose value is this JSON document (the spec's long text fields, such
as a Caffe prototxt, each sit in a key of their own, "graftkit.spec.FIELD"):

    {"format": "graftkit.package", "version": 1,
     "spec": "timm:efficientnet_lite0?num_classes=10" | {"converter": "caffe", ...},
     "classes": ["tabby", ...] | null,
     "preprocessing": {"input_size": [3, 224, 224], "resize": 256, "interpolation": "bilinear",
                       "mean": [...], "std": [...], "pixel_range": 1.0, "channel_order": "RGB"},
     "provenance": {"graftkit": "0.1.0", "created": ISO-8601, "sources": [...], ...},
     "report": {...transplant report...} | null,
     "extra": {...}}

Preprocessing means: scale pixels to [0, pixel_range], order channels as
`channel_order`, then (x - mean) / std per channel (mean and std in the same units).
Loading memory-maps the file and builds the module on the meta device, so it
costs a header parse plus module construction, never a pickle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .atomic import atomic_path
from .errors import GraftError
from .formats.safetensors_file import open_safetensors, read_metadata, write_safetensors
from .meta import (FORMAT, META_ATTR, VERSION, check_document, from_metadata, imagenet_preprocessing, make_meta,  # noqa: F401
                   meta_of, to_metadata)
from .nets import spec as specs



def save(module: nn.Module, path: str | os.PathLike, *, spec: str | dict | None = None, classes=None,
         preprocessing=None, provenance=None, report=None, extra=None) -> Path:
    """Write `module` as a graftkit package (atomically). Missing fields come from the module's own metadata."""
    old = getattr(module, META_ATTR, None) or {}
    spec = spec if spec is not None else old.get("spec")
    if spec is None:
        raise GraftError("cannot save a package without an architecture spec",
                         "pass spec='timm:NAME' (or the converter spec) to save()")
    path = Path(path)
    spec, arch_file = _anchor_file_spec(spec, path)
    if arch_file:
        extra = {**(extra or {}), "architecture_file": arch_file}
    meta = make_meta(spec,
                     classes=classes if classes is not None else old.get("classes"),
                     preprocessing=preprocessing if preprocessing is not None else old.get("preprocessing"),
                     provenance={**(old.get("provenance") or {}), **(provenance or {})},
                     report=report if report is not None else old.get("report"),
                     extra={**(old.get("extra") or {}), **(extra or {})})
    state = {name: t.detach().to("cpu") for name, t in module.state_dict().items()}
    meta["order"] = list(state)  # readers such as safetensors sort the names: keep the module's order
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, state, to_metadata(meta))
    setattr(module, META_ATTR, meta)
    return path


def update_meta(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Set top-level metadata fields of a package (e.g. calibration) without building its network:
    the tensors are copied as they are and the file is replaced atomically."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{path}: no such package file", "check the path")
    tensors, metadata = open_safetensors(path)
    meta = _package_meta(path, metadata)
    meta.update(fields)
    order = [n for n in meta.get("order") or [] if n in tensors] or list(tensors)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, {n: tensors[n] for n in order}, to_metadata(meta))
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The package's graftkit JSON, without touching the tensors."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{path}: no such package file", "check the path")
    return _package_meta(path, read_metadata(path))


def _package_meta(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        meta = from_metadata(metadata)
    except json.JSONDecodeError:
        raise GraftError(f"{path}: the package's graftkit metadata is corrupt") from None
    if meta is None:
        raise GraftError(f"{path}: a safetensors file but not a graftkit package (no graftkit metadata)",
                         "use `graft transplant` or `graft convert` to make a package, or pass it as a weights source")
    check_document(meta, str(path))
    if meta.get("version", 0) > VERSION:
        raise GraftError(f"{path}: package version {meta.get('version')} is newer than this graftkit reads",
                         "upgrade graftkit")
    return meta


def is_package(path: str | os.PathLike) -> bool:
    try:
        read_meta(path)
        return True
    except (GraftError, OSError):
        return False


def build_empty(spec: str | dict, *, trust: bool = False) -> nn.Module:
    """The architecture without initialising weights (built on the meta device when that is safe)."""
    try:
        with torch.device("meta"):
            return specs.build(spec, trust=trust)
    except GraftError:
        raise
    except Exception:  # some modules compute real values in __init__: build them normally
        return specs.build(spec, trust=trust)


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu", trust: bool = False) -> nn.Module:
    """The ready-to-use module of a package, in eval mode, with its metadata as `module.graftkit_meta`.

    A package is data: a spec naming a Python file, or passing options off the allow-list
    (`nets.spec`), is refused unless `trust=True`."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{path}: no such package file", "check the path")
    tensors, metadata = open_safetensors(path)  # one header parse for tensors and metadata
    meta = _package_meta(path, metadata)
    module = specs.build_loaded(meta["spec"], tensors)  # (holds the file's tensors only: on the CPU, none meta)
    on_device = module is not None and torch.device(device).type == "cpu"
    if module is None:
        module = build_empty(_locate_file_spec(path, meta), trust=trust)
        expected = set(module.state_dict(keep_vars=True))  # (keep_vars: the names only, no detach per tensor)
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        if missing or unexpected:
            spec = meta["spec"]
            arch = repr(spec) if isinstance(spec, str) else f"(a converted {spec.get('converter')} network)"
            raise GraftError(f"{path}: tensors do not fit the architecture {arch} "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})",
                             "the package is corrupt or was written for another version of the model")
        try:
            module.load_state_dict(tensors, strict=True, assign=True)
        except RuntimeError as e:  # a tensor of another shape
            detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
            raise GraftError(f"{path}: tensors do not fit the architecture ({detail})",
                             "the package is corrupt or was written for another version of the model") from None
        if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
            # non-persistent buffers (not in the file) were left on the meta device: rebuild for real.
            module = specs.build(_locate_file_spec(path, meta), trust=trust)
            module.load_state_dict(tensors, strict=True)
    if not on_device:
        device = torch.device(device)
        if any(t.device != device for t in list(module.parameters()) + list(module.buffers())):
            module = module.to(device)  # (.to walks every submodule even when nothing moves)
    setattr(module, META_ATTR, meta)
    return module.eval()


# ---------------------------------------------------------------- architecture files (path/file.py:factory)

def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_of(spec: Any) -> tuple[str, str] | None:
    """(file part, rest of the spec after it) of a path/file.py:factory[?...] spec, else None."""
    if not isinstance(spec, str) or not specs.is_arch_spec(spec):
        return None
    try:
        if specs.parse(spec)[0] != "file":
            return None
    except GraftError:
        return None
    base, sep, query = spec.partition("?")
    file, _, fn = base.rpartition(":")
    return file, f":{fn}{sep}{query}"


def _anchor_file_spec(spec: Any, package: Path) -> tuple[Any, dict | None]:
    """A file spec made absolute (a relative one only worked from the folder it was typed in), with the
    file's path relative to the package and its sha256, so that a load can find it and tell a changed file."""
    parts = _file_of(spec)
    if parts is None or not Path(parts[0]).is_file():
        return spec, None
    file = Path(parts[0]).resolve()
    info = {"path": str(file), "relative_to_package": os.path.relpath(file, package.resolve().parent),
            "sha256": _sha256(file)}
    return str(file) + parts[1], info


def _locate_file_spec(package: Path, meta: dict) -> Any:
    """The spec to build: a file spec points at the recorded file, else at the same file beside the
    package (moved together); a file that is gone or changed since the package was made is said so."""
    spec = meta.get("spec")
    parts = _file_of(spec)
    if parts is None:
        return spec
    info = (meta.get("extra") or {}).get("architecture_file") or {}
    here = package.resolve().parent
    candidates = [Path(parts[0])]
    if info.get("relative_to_package"):
        candidates.append(here / info["relative_to_package"])
    if not Path(parts[0]).is_absolute():
        candidates.append(here / parts[0])  # packages made before paths were anchored
    found = [c for c in candidates if c.is_file()]
    if not found:
        where = " or ".join(str(c) for c in dict.fromkeys(candidates))
        raise GraftError(f"{package}: its architecture file {Path(parts[0]).name} is not at {where}",
                         "the file moved: put it back, or copy it beside the package"
                         + (f" as {info['relative_to_package']}" if info.get("relative_to_package") else ""))
    want = info.get("sha256")
    same = [c for c in found if want and _sha256(c) == want]
    chosen = (same or found)[0]
    if want and not same:
        import warnings
        warnings.warn(f"{package}: the architecture file {chosen} changed since the package was made "
                      f"(sha256 {want[:12]}... then); the weights may not fit or may mean something else",
                      stacklevel=3)
    return str(chosen.resolve()) + parts[1]
