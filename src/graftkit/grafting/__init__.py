"""The transplant core: graft a TensorSet onto a module, in passes, and report every decision.

    module, report = graft(tensors, module)

A pure function of (tensors, module): resolving references (built-in names, specs, packages,
files) happens above it, in graftkit.api, so this package never imports the model layer.

Passes, each recorded per tensor as `matched_by`:
  1. exact      same name, same shape
  2. normalised same name once framework conventions are normalised (names.py)
  3. rule       the user's REGEX=>REPL rules rewrite source names
  4. structure  units (conv + its BatchNorm, dense + bias) aligned by kind and shape
                with a gapped alignment (align.py), tensors paired by role inside units
Pairs whose shapes differ are adapted only under a `policy` (adapt.py); otherwise the
target tensor is left at its initial value and the report says why.
A Keras Dense that reads a Flatten of an image has its weight columns in Keras's HWC
order; they are reordered to PyTorch's CHW (what `nn.Flatten` gives on NCHW) unless
keras_flatten="hwc" (a target that permutes to NHWC itself before flattening).
"""
from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn as nn

from ..errors import GraftError
from ..formats.base import TensorSet
from ..meta import meta_of
from .adapt import adapt_tensor, check_policy, clash, widen
from .align import align
from .names import conventions, normalise
from .report import Entry, Report, Unused
from .units import build_units, records_from_module, shape_str

__all__ = ["graft", "Report", "parse_rule", "check_rules", "check_options", "records_from_module"]


def check_options(policy: str, keras_flatten: str) -> None:
    check_policy(policy)
    if keras_flatten not in ("chw", "hwc"):
        raise GraftError(f"keras_flatten {keras_flatten!r} is not chw or hwc",
                         "chw: the target flattens NCHW (as nn.Flatten does); hwc: it flattens NHWC, as Keras")


def graft(src: TensorSet, module: nn.Module, rules=None, policy: str = "skip", strict: bool = False,
          target_classes=None, source_classes=None, seed: int = 0, keras_flatten: str = "chw",
          target_name: str | None = None) -> tuple[nn.Module, Report]:
    """Copy what fits from the tensors `src` into `module` (in place); returns (module, report).

    rules: ["REGEX=>REPL", ...] applied to source names. policy: skip | classes | channels | widen | slice.
    target_classes defaults to the module's metadata; source_classes to the TensorSet's.
    strict: GraftError if anything is left. keras_flatten: chw (reorder a Keras Dense-after-Flatten's
    columns for an NCHW flatten) | hwc (keep them). target_name: the target as the report names it.
    """
    check_options(policy, keras_flatten)
    parsed = [parse_rule(r) for r in (rules or [])]
    check_rules(parsed, list(src))
    tgt = records_from_module(module)
    tgt_classes = list(target_classes) if target_classes else (meta_of(module).get("classes") or None)
    src_classes = list(source_classes) if source_classes else _classes_of(src)

    pairs = _match(src, tgt, parsed)
    hwc = _keras_flatten_feeds(src, module) if keras_flatten == "chw" else {}
    report = Report(source=src.source or type(src).__name__, target=target_name or type(module).__name__,
                    policy=policy)
    state = module.state_dict()

    widened = {}
    if policy == "widen":
        widened = widen(build_units(tgt), state, lambda t: src[pairs[t][0]] if t in pairs else None, seed=seed)

    # Decide every tensor first, then copy: a layer's bias and norm follow its weight.
    values: dict[str, torch.Tensor] = {}
    # Target tensors stored transposed (a converted ONNX MatMul's [in, out] weight) are matched and
    # decided as the [out, in] their records show, and copied back transposed.
    flipped = {r.name for r in tgt.records.values() if r.meta.get("stored_transposed")}
    for name, t in state.items():
        if name in flipped:
            t = t.t()
        if name not in pairs:
            report.entries.append(Entry(name, None, "left", "no source tensor", None, list(t.shape)))
            continue
        sname, how = pairs[name]
        s = src[sname]
        entry = Entry(name, sname, "copied", "", how, list(t.shape), list(s.shape))
        if name in widened:
            values[name], entry.reason = widened[name]
            entry.status = "adapted"
        elif sname in hwc and tuple(s.shape) == tuple(t.shape):
            from ..nets.keras import chw_columns
            values[name] = chw_columns(s, hwc[sname])
            entry.reason = "columns reordered from Keras's HWC flatten to PyTorch's CHW"
        elif tuple(s.shape) == tuple(t.shape):
            values[name] = s
        elif _same_but_unit_dims(s, t):
            values[name] = s.reshape(t.shape)
            why = "1x1 convolution as dense" if min(s.ndim, t.ndim) >= 2 else "the same values"
            entry.reason = f"reshaped {shape_str(s.shape)} -> {shape_str(t.shape)} ({why})"
        else:
            value, entry.reason = (None, clash(t, s)) if policy in ("skip", "widen") else adapt_tensor(
                policy, t, s, target_classes=tgt_classes, source_classes=src_classes)
            if value is None:
                entry.status = "left"
            else:
                values[name], entry.status = value, "adapted"
        report.entries.append(entry)
    _follow_weights(report, build_units(tgt))
    with torch.no_grad():
        for e in report.entries:
            if e.status != "left":
                t = state[e.target]
                v = values[e.target]
                v = v.t() if e.target in flipped else v
                t.copy_(v.to(t.dtype) if v.dtype != t.dtype else v)
    used = {e.source for e in report.entries if e.status != "left"}
    clashed = {e.source: f"{e.reason} (target {e.target})" for e in report.entries
               if e.status == "left" and e.source}
    report.unused = [Unused(n, list(src[n].shape), clashed.get(n, "no target parameter matched it"))
                     for n in src if n not in used]
    report.notes += _eps_notes(src, module, pairs)
    if strict and report.left():
        first = report.left()[0]
        raise GraftError(f"{len(report.left())} target tensors were left at their initial values, "
                         f"first {first.target}: {first.reason}",
                         "fix the names with --rule, choose a --policy, or drop --strict")
    return module, report


def _keras_flatten_feeds(src: TensorSet, module: nn.Module) -> dict[str, list]:
    """Source weight name -> [H, W, C] for each Keras Dense that reads a Flatten of an image; none when
    the target is itself a converted Keras net (it flattens as Keras does)."""
    if src.format != "keras" or not src.graph:
        return {}
    from ..nets.keras import KerasNet, flatten_feeds  # (h5py and the Keras converter: only for Keras sources)
    if isinstance(module, KerasNet):
        return {}
    try:
        feeds = flatten_feeds(src.graph, src.meta.get("keras_version", "3"))
    except GraftError:  # a config graftkit cannot build: the weights still transplant as they are
        return {}
    return {f"{layer}.weight": hwc for layer, hwc in feeds.items() if f"{layer}.weight" in src}


def _follow_weights(report: Report, units) -> None:
    """A bias, BatchNorm or counter is not transferred when its layer's weight was not: alone it
    would describe a layer that is not there (Chainer's copy_model copies such stray biases)."""
    by_name = {e.target: e for e in report.entries}
    for unit in units:
        w = unit.slots.get(("main", "weight"))
        if w is None or by_name[w].status != "left":
            continue
        for name in unit.slots.values():
            e = by_name[name]
            if name != w and e.status != "left":
                e.status = "left"
                e.reason = f"not transferred without its layer's weight {w} ({by_name[w].reason})"


def _same_but_unit_dims(s: torch.Tensor, t: torch.Tensor) -> bool:
    """The same values in another view: a 1x1 convolution kernel against a dense weight."""
    return s.numel() == t.numel() and [d for d in s.shape if d != 1] == [d for d in t.shape if d != 1]


def check_rules(rules, src_names: list[str]) -> None:
    for rx, _, text in rules:
        if not any(rx.search(s) for s in src_names):
            raise GraftError(f"rule '{text}' matches no source tensor name",
                             f"source names look like {', '.join(src_names[:3])}")


def parse_rule(rule: str) -> tuple[re.Pattern, str, str]:
    if "=>" not in rule:
        raise GraftError(f"rule {rule!r} has no '=>'", "write rules as 'REGEX=>REPLACEMENT'")
    pattern, _, repl = rule.partition("=>")
    try:
        return re.compile(pattern), repl, rule
    except re.error as e:
        raise GraftError(f"rule {rule!r}: bad regular expression: {e}") from None


def _classes_of(src: TensorSet) -> list | None:
    """The class names a TensorSet carries: a package's graftkit metadata, or the format's own."""
    meta = src.meta.get("graftkit") or {}
    return meta.get("classes") or src.meta.get("classes")


def _match(src: TensorSet, tgt: TensorSet, rules) -> dict[str, tuple[str, str]]:
    """target name -> (source name, pass)."""
    pairs: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()

    def pair(t: str, s: str, how: str) -> None:
        pairs[t] = (s, how)
        taken.add(s)

    def same_shape(t: str, s: str) -> bool:
        return tuple(tgt[t].shape) == tuple(src[s].shape)

    # 1. exact name and shape
    for t in tgt:
        if t in src and same_shape(t, t):
            pair(t, t, "exact")
    # 2. normalised names: a unique candidate of the same shape
    src_names = list(src)
    spelled = conventions(src_names, list(tgt))
    by_norm: dict[str, list[str]] = {}
    for s in src_names:
        by_norm.setdefault(normalise(spelled.get(s, s)), []).append(s)
    tgt_norm = {t: normalise(t) for t in tgt}
    for t in tgt:
        if t in pairs:
            continue
        cands = [s for s in by_norm.get(tgt_norm[t], []) if s not in taken and same_shape(t, s)]
        if len(cands) == 1:
            pair(t, cands[0], "normalised")
    # 3. user rules rewrite source names
    if rules:
        check_rules(rules, src_names)
        by_tgt_norm: dict[str, list[str]] = {}
        for t, n in tgt_norm.items():
            by_tgt_norm.setdefault(n, []).append(t)
        for s in src_names:
            if s in taken:
                continue
            new = s
            for rx, repl, text in rules:
                try:
                    new = rx.sub(repl, new)
                except (re.error, IndexError) as e:
                    raise GraftError(f"rule '{text}': bad replacement: {e}",
                                     "refer to groups that the pattern has, as \\1 or \\g<name>") from None
            if new == s:
                continue
            cands = [new] if new in tgt else by_tgt_norm.get(normalise(new), [])
            cands = [t for t in cands if t not in pairs]
            if len(cands) == 1:
                pair(cands[0], s, "rule")     # the user asked for it: shape clashes are reported, not refused
    # Same name but another shape: pair them, so the policy or the report deals with the clash.
    for t in tgt:
        if t in pairs:
            continue
        cands = [s for s in by_norm.get(tgt_norm[t], []) if s not in taken]
        if t in src and t not in taken:
            cands = [t]
        if len(cands) == 1:
            pair(t, cands[0], "exact" if cands[0] == t else "normalised")
    # 4. structure: align the units of what is left, pair tensors by slot inside aligned units
    src = _kinds_from_target(src, tgt, only={s for s in src if s not in taken}, free={t for t in tgt if t not in pairs})
    src_units = build_units(src, only={s for s in src if s not in taken})
    tgt_units = build_units(tgt, only={t for t in tgt if t not in pairs})
    for i, j, _identical in align(src_units, tgt_units):
        su, tu = src_units[i], tgt_units[j]
        for slot, tname in tu.slots.items():
            sname = su.slots.get(slot)
            if sname is not None and sname not in taken and tname not in pairs:
                pair(tname, sname, "structure")
    return pairs


def _kinds_from_target(src: TensorSet, tgt: TensorSet, only: set[str], free: set[str]) -> TensorSet:
    """A lone 1-D weight whose kind the source could not tell (a state dict's `prelu1.weight`: a PReLU
    slope or a bias-free norm?) takes the kind the target's modules give every lone 1-D weight of that
    width still free. Sources whose graph gave the kind (Caffe, ONNX, Keras) keep theirs. Returns a copy."""
    def lone_vectors(ts: TensorSet, names: set[str]) -> dict[str, tuple[int, str]]:
        out = {}
        for layer, recs in ts.layers().items():
            recs = [r for r in recs if r.role != "num_batches_tracked"]
            if len(recs) == 1 and recs[0].name in names and recs[0].role == "weight" and recs[0].tensor.ndim == 1:
                out[recs[0].name] = (recs[0].tensor.shape[0], recs[0].kind)
        return out

    unknown = {n: w for n, (w, k) in lone_vectors(src, only).items() if k == "other"}
    if not unknown:
        return src
    target_kinds: dict[int, set[str]] = {}
    for width, kind in lone_vectors(tgt, free).values():
        target_kinds.setdefault(width, set()).add(kind)
    records = []
    for r in src.records.values():
        kinds = target_kinds.get(unknown.get(r.name, -1), set())
        if len(kinds) == 1 and kinds != {"other"}:
            r = dataclasses.replace(r, kind=next(iter(kinds)), meta={**r.meta, "kind_from": "target"})
        records.append(r)
    return TensorSet(records, format=src.format, source=src.source, meta=src.meta, graph=src.graph)


def _eps_notes(src: TensorSet, module: nn.Module, pairs) -> list[str]:
    """BatchNorm epsilons that differ between source and target: outputs will differ slightly."""
    notes: dict[tuple, list[str]] = {}
    mods = dict(module.named_modules())
    for t, (s, _) in pairs.items():
        if not t.endswith("running_var"):
            continue
        rec = src.record(s)
        eps = rec.meta.get("eps", src.meta.get("batchnorm_eps", src.meta.get("bn_eps")))
        m = mods.get(t.rpartition(".")[0])
        if eps is None or m is None or not hasattr(m, "eps"):
            continue
        if abs(float(eps) - float(m.eps)) > 1e-6 * max(float(eps), float(m.eps)):
            notes.setdefault((float(eps), float(m.eps)), []).append(t.rpartition(".")[0])
    return [f"source BatchNorm eps {a:g} differs from the target's {b:g} in {len(v)} layers ({v[0]}, ...): "
            f"set the target's eps to {a:g} to reproduce the source exactly" for (a, b), v in notes.items()]
