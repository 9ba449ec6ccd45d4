"""Any model graftkit builds, cut into multi-scale features, with a record of where each tensor came from.

    feats = backbone("lite0")                     # OrderedDict {"4": N,24,H/4,W/4, "8": ..., "16": ..., "32": ...}
    feats = backbone("timm:resnet18", pretrained=False, strides=(8, 16, 32))
    feats = backbone(converted_caffe_module)

Two ways to cut, both keeping the source model's parameter names (so the provenance of
every tensor is a name lookup, not a guess):
- a timm model announces its stages (`feature_info`): torchvision's `create_feature_extractor`
  returns the output of the last stage at each stride, and drops the layers above it;
- any other module (torchvision, converted Caffe/Keras/MXNet/ONNX/TFLite graphs, a user's own):
  one probe forward at the model's input size records the output of every leaf module in
  execution order; the last one at each wanted stride is a feature, a forward hook keeps it,
  and the forward stops right after the deepest one (the classifier never runs). Modules that
  did not run before that point are removed, so their tensors are neither trained nor saved.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from ..errors import GraftError
from ..meta import meta_of
from ..models import resolve

DEFAULT_STRIDES = (4, 8, 16, 32)


class _Stop(Exception):
    """Raised by the hook of the deepest feature: nothing above it needs to run."""


class FeatureBackbone(nn.Module):
    """body(x) -> OrderedDict[str(stride) -> feature map]; `out_channels` and `strides` list the levels."""

    def __init__(self, body: nn.Module, nodes: list[tuple[str, int]], strides: list[int], channels: list[int],
                 mode: str, source: dict[str, Any]):
        super().__init__()
        self.body = body
        self.nodes = nodes            # (module name, occurrence) per level; empty in fx mode
        self.strides = list(strides)
        self.out_channels_list = list(channels)
        self.mode = mode              # "fx" | "hooks"
        self.source = source          # what the backbone was cut from (reference, provenance, transplant summary)
        pre = source.get("preprocessing") or {}
        self.bgr = pre.get("channel_order") == "BGR"
        self._captured: dict[int, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        if mode == "hooks":
            wanted: dict[str, list[tuple[int, int]]] = {}
            for level, (name, occ) in enumerate(nodes):
                wanted.setdefault(name, []).append((occ, level))
            last = nodes[-1]
            for name, targets in wanted.items():
                body.get_submodule(name).register_forward_hook(self._hook(name, targets, last))

    def _hook(self, name: str, targets: list[tuple[int, int]], last: tuple[str, int]):
        def hook(_m, _args, out):
            k = self._calls.get(name, 0)
            self._calls[name] = k + 1
            for occ, level in targets:
                if occ == k:
                    self._captured[level] = out
                    if (name, occ) == last:
                        raise _Stop
        return hook

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if self.bgr:
            x = x.flip(1)                    # the source was trained on BGR input (Caffe)
        if self.mode == "fx":
            out = self.body(x)
            return OrderedDict((str(s), out[str(s)]) for s in self.strides)
        if self.mode == "blobs":             # a converted Caffe net computes just the blobs asked for
            out = self.body.run(x, outputs=[n for n, _k in self.nodes])
            return OrderedDict((str(s), out[n]) for s, (n, _k) in zip(self.strides, self.nodes))
        self._captured, self._calls = {}, {}
        try:
            self.body(x)
        except _Stop:
            pass
        missing = [s for i, s in enumerate(self.strides) if i not in self._captured]
        if missing:
            raise GraftError(f"the backbone's forward did not reach its stride-{missing[0]} feature on this input",
                             "use inputs of the size the backbone was probed at, or other strides")
        feats = OrderedDict((str(s), self._captured[i]) for i, s in enumerate(self.strides))
        self._captured = {}
        return feats


def _input_size(module: nn.Module, size: int | None) -> int:
    if size:
        return int(size)
    pre = meta_of(module).get("preprocessing") or {}
    shape = pre.get("input_size")
    return int(shape[-1]) if isinstance(shape, (list, tuple)) and shape else 224


def _in_channels(module: nn.Module) -> int:
    pre = meta_of(module).get("preprocessing") or {}
    shape = pre.get("input_size")
    if isinstance(shape, (list, tuple)) and len(shape) == 3:
        return int(shape[0])
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def _timm_cut(module: nn.Module, strides: tuple[int, ...]):
    info = getattr(module, "feature_info", None)
    if not isinstance(info, list) or not info or not all(isinstance(i, dict) and "module" in i for i in info):
        return None
    by_stride = {}
    for i in info:
        by_stride[int(i["reduction"])] = i        # the last stage at each stride
    if not all(s in by_stride for s in strides):
        return None
    from torchvision.models.feature_extraction import create_feature_extractor
    try:
        body = create_feature_extractor(module, {by_stride[s]["module"]: str(s) for s in strides})
    except Exception:                          # not traceable: the probe below cuts any module
        return None
    return body, [int(by_stride[s]["num_chs"]) for s in strides]


def _probe(module: nn.Module, strides: tuple[int, ...], size: int, channels: int):
    """(module name, occurrence, out channels) of the last leaf-module output at each stride, and the names
    of the modules that ran up to the deepest of them."""
    calls: list[tuple[str, int, tuple]] = []
    counts: dict[str, int] = {}
    handles = []

    def make(name):
        def hook(_m, _a, out):
            k = counts.get(name, 0)
            counts[name] = k + 1
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            calls.append((name, k, shape))
        return hook

    for name, m in module.named_modules():
        if name and not list(m.children()):
            handles.append(m.register_forward_hook(make(name)))
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, size, size))
    except Exception as e:
        raise GraftError(f"the model does not run on a 1x{channels}x{size}x{size} input ({type(e).__name__}: "
                         f"{str(e)[:120]})", "pass input_size= the size the model expects") from None
    finally:
        for h in handles:
            h.remove()
        module.train(was)
    last: dict[int, int] = {}
    for i, (_name, _k, shape) in enumerate(calls):
        if shape is not None and len(shape) == 4 and shape[2] > 1 and size % shape[2] == 0:
            last[size // shape[2]] = i
    missing = [s for s in strides if s not in last]
    if missing:
        have = sorted(last)
        raise GraftError(f"the model has no feature map at stride {missing[0]} (strides found: "
                         f"{', '.join(map(str, have)) or 'none'})", f"choose strides among {have}")
    picks = [last[s] for s in strides]
    if picks != sorted(picks):
        raise GraftError(f"the strides {strides} do not come in execution order in this model",
                         "list them from fine to coarse, e.g. 8,16,32")
    ran = {name for name, _k, _s in calls[:picks[-1] + 1]}
    return [(calls[i][0], calls[i][1], calls[i][2][1]) for i in picks], ran


def _probe_blobs(module: nn.Module, strides: tuple[int, ...], size: int, channels: int):
    """A converted Caffe net: (blob name, 0, channels) of the last blob at each stride (blobs come in
    execution order; an in-place ReLU's output keeps its input's name), and the modules that compute them."""
    names = list(module.blobs)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            res = module.run(torch.zeros(1, channels, size, size), outputs=names)
    except Exception as e:
        raise GraftError(f"the model does not run on a 1x{channels}x{size}x{size} input ({type(e).__name__}: "
                         f"{str(e)[:120]})", "pass input_size= the size the model expects") from None
    finally:
        module.train(was)
    last: dict[int, str] = {}
    for n in names:
        t = res.get(n)
        if isinstance(t, torch.Tensor) and t.ndim == 4 and t.shape[2] > 1 and size % t.shape[2] == 0:
            last[size // t.shape[2]] = n
    missing = [s for s in strides if s not in last]
    if missing:
        raise GraftError(f"the model has no feature map at stride {missing[0]} (strides found: "
                         f"{', '.join(map(str, sorted(last))) or 'none'})", f"choose strides among {sorted(last)}")
    picked = [last[s] for s in strides]
    steps = module._plan(tuple(picked))[0]
    used = {id(step[0]) for step in steps}
    ran = {n for n, m in module.named_modules() if id(m) in used}
    return [(n, 0, int(res[n].shape[1])) for n in picked], ran


def _prune(module: nn.Module, ran: set[str]) -> list[str]:
    """Replace leaf modules that never ran before the deepest feature with Identity; returns their names."""
    dropped = []
    for name, m in list(module.named_modules()):
        if name and not list(m.children()) and name not in ran and any(True for _ in m.parameters(recurse=False)):
            parent, _, child = name.rpartition(".")
            owner = module.get_submodule(parent) if parent else module
            if isinstance(owner, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or hasattr(owner, child):
                setattr(owner, child, nn.Identity())
                dropped.append(name)
    return dropped


def backbone(model: str | os.PathLike | nn.Module, *, pretrained: bool = True, strides=DEFAULT_STRIDES,
             input_size: int | None = None, trust: bool = False) -> FeatureBackbone:
    """The multi-scale feature backbone of `model` (a reference graftkit resolves, or a module).

    pretrained=False builds the same architecture from random initialisation (built-ins and specs)."""
    strides = tuple(int(s) for s in strides)
    if not strides or list(strides) != sorted(set(strides)):
        raise GraftError(f"strides {strides} must be distinct and increasing", "e.g. 8,16,32")
    ref = model if isinstance(model, (str, os.PathLike)) else None
    if ref is not None and not pretrained:
        from .. import builtin
        from ..nets import spec as specs
        if str(ref) not in builtin.NAMES and not specs.is_arch_spec(str(ref)):
            raise GraftError(f"{ref}: a package or file has no random-initialisation form",
                             "pass a built-in name or an architecture spec with pretrained=False")
    module = resolve(model, pretrained=pretrained, trust=trust)
    meta = meta_of(module)
    names_before = [n for n, _ in module.named_parameters()]
    cut = _timm_cut(module, strides)
    dropped: list[str] = []
    if cut is not None:
        body, channels = cut
        nodes, mode = [], "fx"
    else:
        size = _input_size(module, input_size)
        if _in_channels(module) != 3:
            raise GraftError(f"the model takes {_in_channels(module)}-channel input; detection and segmentation "
                             "here feed RGB images", "use a 3-channel backbone")
        blobs = isinstance(getattr(module, "blobs", None), dict) and callable(getattr(module, "run", None)) \
            and callable(getattr(module, "_plan", None))
        if blobs:
            found, ran = _probe_blobs(module, strides, size, 3)
            dropped = [n for n, m in module.named_modules() if n and n not in ran and not list(m.children())
                       and any(True for _ in m.parameters(recurse=False))]
            for n in dropped:
                setattr(module, n, nn.Identity()) if "." not in n else None
        else:
            found, ran = _probe(module, strides, size, 3)
            dropped = _prune(module, ran)
        body, nodes, channels = module, [(n, k) for n, k, _c in found], [c for _n, _k, c in found]
        mode = "blobs" if blobs else "hooks"
    kept = {n for n, _ in body.named_parameters()}
    report = meta.get("report") or {}
    source = {"model": str(ref) if ref is not None else type(module).__name__,
              "spec": meta.get("spec"), "pretrained": bool(pretrained), "provenance": meta.get("provenance"),
              "transplant_summary": report.get("summary") if isinstance(report, dict) else None,
              "preprocessing": meta.get("preprocessing"), "cut": mode,
              "dropped_tensors": [n for n in names_before if n not in kept]}
    fb = FeatureBackbone(body, nodes, list(strides), channels, mode, source)
    fb.source_origins = _origins(report, kept, pretrained)
    fb.dropped_modules = dropped
    return fb


def _origins(report: Any, kept: set[str], pretrained: bool) -> dict[str, str]:
    """Backbone parameter name -> where its value came from (the source tensor the transplant copied)."""
    if not pretrained:
        return {n: "random init" for n in kept}
    by_target = {}
    if isinstance(report, dict):
        for e in report.get("parameters") or []:
            if isinstance(e, dict) and e.get("status") in ("copied", "adapted"):
                by_target[e.get("target")] = f"{e.get('source')} ({e.get('status')}, {e.get('matched_by')})"
    src = "the model's own weights"
    return {n: by_target.get(n, src) for n in kept}
