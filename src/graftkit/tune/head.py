"""The classifier head: find it, and replace it for the user's classes.

Modes: `new` re-initialises a head for K classes (Caffe's renamed fc8);
`keep_matching` does that and then copies the old head's rows for classes whose
names match (ImageNet's "sandal" row for a "Sandal" class); `keep` keeps the head as
it is (it must already have K outputs); `auto` keeps it when the model's classes
are the user's classes and makes a new one otherwise.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..errors import GraftError
from ..meta import META_ATTR, meta_of
from ..nets import spec as specs


def find_head(model: nn.Module) -> str | None:
    """Module name of the classifier: timm's get_classifier(), else the last Linear layer."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            clf = get()
        except Exception:
            clf = None
        if isinstance(clf, nn.Module):
            for name, m in model.named_modules():
                if m is clf and name:
                    return name
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def side_heads(model: nn.Module, head: str) -> list[str]:
    """Auxiliary classifiers (GoogLeNet's loss1/loss2): other Linear layers with as many outputs as the head."""
    out = getattr(model.get_submodule(head), "out_features", None)
    return [n for n, m in model.named_modules()
            if n != head and isinstance(m, nn.Linear) and out is not None and m.out_features == out]


def _norm(name: str) -> set[str]:
    """Class-name synonyms, normalised: 'jersey, T-shirt' -> {'jersey', 'tshirt'}."""
    return {re.sub(r"[^a-z0-9]", "", part.lower()) for part in re.split(r"[,/]", name) if part.strip()}


def prepare(model: nn.Module, classes: list[str], mode: str = "auto") -> tuple[nn.Module, dict]:
    """Fit the model's head to `classes`; returns the model and a report {mode, head, kept_rows, spec}."""
    meta = dict(meta_of(model))
    old_classes = meta.get("classes")
    head = find_head(model)
    k = len(classes)
    if mode == "auto":
        mode = "keep" if old_classes is not None and list(old_classes) == list(classes) else "new"
    if head is None:
        raise GraftError("graftkit cannot find this model's classifier layer (no Linear layer)",
                         "use a model with a Linear head, or head: keep with a model that already has K outputs")
    layer = model.get_submodule(head)
    if mode == "keep":
        out = getattr(layer, "out_features", None)
        if out is not None and out != k:
            raise GraftError(f"plan head: keep, but the model's head {head!r} has {out} outputs for {k} classes",
                             "use head: new (or keep_matching) to make a head for your classes")
        meta["classes"] = list(classes)
        setattr(model, META_ATTR, meta)
        return model, {"mode": "keep", "head": head, "heads": [head], "new": False, "kept_rows": [],
                       "spec": meta.get("spec")}
    if not isinstance(layer, nn.Linear):
        raise GraftError(f"the head {head!r} is a {type(layer).__name__}, graftkit replaces only Linear heads",
                         "use head: keep with a model that already has K outputs")
    aux = side_heads(model, head)
    old_w = layer.weight.detach().clone()
    old_b = layer.bias.detach().clone() if layer.bias is not None else None
    reset = getattr(model, "reset_classifier", None)
    if callable(reset) and isinstance(meta.get("spec"), str) and meta["spec"].startswith("timm:"):
        reset(k)
        if model.get_submodule(head).weight.shape[0] != k:
            raise GraftError(f"timm could not reset the classifier {head!r} to {k} classes")
    else:
        new = nn.Linear(layer.in_features, k, bias=layer.bias is not None)
        parent, _, leaf = head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    for name in aux:  # auxiliary classifiers get new heads too (Caffe renames loss1/loss2 classifiers as well)
        old = model.get_submodule(name)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf,
                nn.Linear(old.in_features, k, bias=old.bias is not None))
    new_layer = model.get_submodule(head)
    kept = []
    if mode == "keep_matching" and old_classes:
        index = {}
        for i, name in enumerate(old_classes):
            for syn in _norm(str(name)):
                index.setdefault(syn, i)
        with torch.no_grad():
            for j, name in enumerate(classes):
                hits = [index[s] for s in _norm(name) if s in index]
                if hits:
                    new_layer.weight[j] = old_w[hits[0]].to(new_layer.weight.dtype)
                    if old_b is not None and new_layer.bias is not None:
                        new_layer.bias[j] = old_b[hits[0]]
                    kept.append({"class": name, "from": str(old_classes[hits[0]]), "row": hits[0]})
    spec = meta.get("spec")
    if isinstance(spec, str) and specs.is_arch_spec(spec):
        spec = specs.with_kwargs(spec, num_classes=k)
        _check_spec(spec, model)
    elif spec is not None:
        raise GraftError("this model was converted from a foreign graph; graftkit cannot yet rebuild it with a new head",
                         "transplant its weights onto a timm:/torchvision: architecture with num_classes=K first")
    meta.update(spec=spec, classes=list(classes))
    setattr(model, META_ATTR, meta)
    return model, {"mode": mode, "head": head, "heads": [head, *aux], "new": True, "kept_rows": kept, "spec": spec}


def _check_spec(spec: str, model: nn.Module) -> None:
    """The saved package must rebuild: the spec with num_classes=K must give the same tensors."""
    from ..package import build_empty
    try:
        rebuilt = build_empty(spec, trust=True).state_dict()  # (the model is built already)
    except GraftError:
        raise
    except Exception as e:
        raise GraftError(f"the spec {spec!r} cannot be rebuilt with the new head ({e})",
                         "make the model's factory accept num_classes") from None
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:2]
        raise GraftError(f"the spec {spec!r} does not rebuild the model with the new head (differs at {diff})",
                         "make the model's factory accept num_classes")
