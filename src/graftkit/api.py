"""`transplant(source, target)` for people: sources and targets given as references (files, built-in
names, specs, packages, modules, state dicts) are resolved here, above the pure core in graftkit.grafting,
which only sees a TensorSet and a module. Keeping the resolution here keeps the core below the model
layer (builtin and models use the core; the core imports neither).

The module it returns carries the package metadata `graft transplant` writes (which class names carry
over, the preprocessing, the provenance with the source file's hash, the report), so that
`graftkit.save(module, path)` writes the same package as the command line."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch.nn as nn

from .errors import GraftError
from .formats.base import TensorSet
from .grafting import Report, check_options, check_rules, graft, parse_rule, records_from_module
from .meta import attach, make_meta, meta_of

__all__ = ["transplant", "source_tensors"]


def transplant(source, target, rules=None, policy: str = "skip", strict: bool = False, class_names=None,
               source_class_names=None, trust: bool = False, seed: int = 0,
               keras_flatten: str = "chw") -> tuple[nn.Module, Report]:
    """Copy what fits from `source` into `target`; returns (target module, report).

    source: a TensorSet, a checkpoint path, a model reference (built-in name, spec, package),
            an nn.Module or a state dict.  target: an nn.Module or a model reference (built
            fresh, pretrained=False). rules: ["REGEX=>REPL", ...] applied to source names.
    policy: skip | classes | channels | widen | slice. class_names / source_class_names
    override the class names found in the metadata. strict: GraftError if anything is left.
    keras_flatten: chw (reorder a Keras Dense-after-Flatten's columns for an NCHW flatten) | hwc (keep them).
    """
    check_options(policy, keras_flatten)
    parsed = [parse_rule(r) for r in (rules or [])]
    src, src_classes = source_tensors(source, trust=trust)
    check_rules(parsed, list(src))               # before building the target: fail fast
    module = _target_module(target, trust)
    src_classes = list(source_class_names) if source_class_names else src_classes
    module, report = graft(src, module, rules=rules, policy=policy, strict=strict, target_classes=class_names,
                           source_classes=src_classes, seed=seed, keras_flatten=keras_flatten,
                           target_name=_describe(target))
    ref = str(source) if isinstance(source, (str, os.PathLike)) else src.source
    report.source = ref
    old = meta_of(module)
    source_meta = src.meta.get("graftkit") or {}
    spec = old.get("spec") or (str(target) if isinstance(target, (str, os.PathLike)) else None)
    # the source's class names describe the target only when its classifier was copied whole
    classes = list(class_names) if class_names else old.get("classes") or _classes_if_head_copied(report, src_classes)
    attach(module, make_meta(spec, classes=classes,
                             preprocessing=old.get("preprocessing") or source_meta.get("preprocessing"),
                             provenance={**(old.get("provenance") or {}), "sources": [provenance(ref)],
                                         "transplant": {"rules": list(rules or []), "policy": policy}},
                             report=report.to_json(), extra=old.get("extra")))
    return module, report


def _classes_if_head_copied(report: Report, classes) -> list | None:
    if not classes or not report.entries:
        return None
    head = [e for e in report.entries if len(e.shape) == 2 and e.shape[0] == len(classes)]
    return list(classes) if head and all(e.status == "copied" for e in head) else None


def provenance(ref: str) -> dict:
    """Where a source came from: a file's resolved path, size and SHA-256, or the reference as given."""
    path = Path(ref)
    if not path.is_file():
        return {"ref": ref}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": str(path.resolve()), "sha256": h.hexdigest(), "bytes": path.stat().st_size}


def source_tensors(source, *, trust: bool = False) -> tuple[TensorSet, list | None]:
    """Any supported source as a TensorSet, plus its class names when known."""
    if isinstance(source, TensorSet):
        meta = source.meta.get("graftkit") or {}
        return source, meta.get("classes") or source.meta.get("classes")
    if isinstance(source, nn.Module):
        ts = records_from_module(source)
        ts.source = type(source).__name__
        ts.meta["graftkit"] = meta_of(source)  # its preprocessing is the fallback for a target without one
        return ts, meta_of(source).get("classes")
    if isinstance(source, dict):
        from .formats.safetensors_file import records_from_state_dict
        return TensorSet(records_from_state_dict(source), format="state dict", source="state dict"), None
    if isinstance(source, (str, os.PathLike)):
        ref = str(source)
        if _is_model_ref(ref):
            from .models import resolve
            module = resolve(ref, pretrained=True, trust=trust)
            ts = records_from_module(module)
            ts.source = ref
            ts.meta["graftkit"] = meta_of(module)  # as a package file read as tensors carries it
            return ts, meta_of(module).get("classes")
        from . import formats
        ts = formats.read(Path(ref), trust=trust)
        meta = ts.meta.get("graftkit") or {}
        return ts, meta.get("classes") or ts.meta.get("classes")
    raise GraftError(f"cannot use a {type(source).__name__} as a transplant source",
                     "pass a file path, a model spec, a TensorSet, a state dict or an nn.Module")


def _is_model_ref(ref: str) -> bool:
    from . import builtin
    from .nets import spec as specs
    from .package import is_package
    return ref in builtin.NAMES or specs.is_arch_spec(ref) or (Path(ref).suffix == ".safetensors"
                                                                and Path(ref).is_file() and is_package(ref))


def _target_module(target, trust: bool) -> nn.Module:
    if isinstance(target, nn.Module):
        return target
    if isinstance(target, (str, os.PathLike)):
        from .models import resolve
        return resolve(str(target), pretrained=False, trust=trust)
    raise GraftError(f"cannot use a {type(target).__name__} as a transplant target",
                     "pass an nn.Module or a model spec such as timm:efficientnet_lite0")


def _describe(target) -> str:
    return str(target) if isinstance(target, (str, os.PathLike)) else type(target).__name__
