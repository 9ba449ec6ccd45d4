"""Shape adaptation policies, used only when the user asks for one.

skip      leave the target tensor at its initial value (Chainer's copy_model does this)
classes   copy the classifier rows of the classes both sides name
channels  adapt a convolution's input channels: sum (to 1 channel) or repeat-and-scale
          (timm's adapt_input_conv), so a grey or 4-channel input sees the same response
widen     Net2WiderNet (Chen et al. 2016): replicate random units of a widened layer and
          divide the next layer's incoming weights by the replication counts, so the
          wider network computes the same function
slice     copy the overlapping slice of the two tensors
"""
from __future__ import annotations

import math

import torch

from ..errors import GraftError
from .units import Unit, shape_str

POLICIES = ("skip", "classes", "channels", "widen", "slice")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise GraftError(f"unknown shape policy {policy!r}", f"use one of {', '.join(POLICIES)}")
    return policy


def clash(target: torch.Tensor, source: torch.Tensor) -> str:
    return f"shape clash {shape_str(target.shape)} vs {shape_str(source.shape)}"


def adapt_slice(target: torch.Tensor, source: torch.Tensor):
    if target.ndim != source.ndim:
        return None, f"{clash(target, source)} (different ranks cannot be sliced)"
    out = target.detach().clone()
    idx = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, source.shape))
    out[idx] = source[idx].to(out.dtype)
    return out, f"slice: overlapping {shape_str(out[idx].shape)} copied from {shape_str(source.shape)}"


def adapt_channels(target: torch.Tensor, source: torch.Tensor):
    if target.ndim < 3 or target.ndim != source.ndim or target.shape[0] != source.shape[0] \
            or target.shape[2:] != source.shape[2:]:
        return None, f"{clash(target, source)} (channels adapts only a convolution's input channels)"
    src = source.to(torch.float32)
    cin, cout = source.shape[1], target.shape[1]
    if cout == 1:
        w, how = src.sum(dim=1, keepdim=True), f"channels: summed {cin} input channels into 1"
    else:
        repeat = math.ceil(cout / cin)
        w = src.repeat(1, repeat, *([1] * (src.ndim - 2)))[:, :cout] * (cin / cout)
        how = f"channels: {cin} input channels repeated to {cout} and scaled by {cin}/{cout}"
    return w.to(target.dtype), how


def adapt_classes(target: torch.Tensor, source: torch.Tensor, target_classes, source_classes):
    if not target_classes or not source_classes:
        return None, f"{clash(target, source)} (policy classes needs class names on both sides)"
    if target.shape[0] != len(target_classes) or source.shape[0] != len(source_classes) \
            or target.shape[1:] != source.shape[1:]:
        return None, f"{clash(target, source)} (not a classifier over the named classes)"
    where = {name: i for i, name in enumerate(source_classes)}
    rows = [(i, where[name]) for i, name in enumerate(target_classes) if name in where]
    if not rows:
        return None, f"{clash(target, source)} (no class name in common)"
    out = target.detach().clone()
    ti, si = zip(*rows)
    out[list(ti)] = source[list(si)].to(out.dtype)
    return out, f"classes: rows of {len(rows)} of {len(target_classes)} target classes copied by name"


def adapt_tensor(policy: str, target: torch.Tensor, source: torch.Tensor, *, target_classes=None,
                 source_classes=None):
    """(new tensor or None, how it was adapted / why it was left)."""
    source = source.to(target.device)
    if policy == "slice":
        return adapt_slice(target, source)
    if policy == "channels":
        return adapt_channels(target, source)
    if policy == "classes":
        return adapt_classes(target, source, target_classes, source_classes)
    return None, clash(target, source)


def widen(units: list[Unit], target: dict[str, torch.Tensor], source_of, seed: int = 0):
    """Net2WiderNet over the target units in order.

    `source_of(target_name)` gives the paired source tensor or None. Returns
    {target name: (tensor, how)} for every tensor the widening produced.
    """
    gen = torch.Generator().manual_seed(seed)
    done: dict[str, tuple[torch.Tensor, str]] = {}
    pending = None                       # (mapping new unit -> source unit, replication counts, layer)
    for unit in units:
        wname = unit.slots.get(("main", "weight"))
        if wname is None:
            continue
        w_src = source_of(wname)
        if w_src is None:
            pending = None
            continue
        w_tgt = target[wname]
        w = w_src.detach().to(torch.float32)
        tensors = {slot: source_of(name) for slot, name in unit.slots.items()}
        how = []
        depthwise = unit.family == "conv" and w.ndim >= 3 and w.shape[1] == 1 and w_tgt.shape[1] == 1
        if pending is not None and depthwise and w.shape[0] == len(pending[1]) and w_tgt.shape[0] == len(pending[0]):
            # A depthwise layer carries the widened channels through: replicate, keep dividing downstream.
            g = pending[0]
            out = {slot: t.detach().to(torch.float32)[g] for slot, t in tensors.items()
                   if t is not None and t.ndim and t.shape[0] == len(pending[1])}
            _store(done, unit, out, target, f"widen: depthwise channels follow {pending[2]}")
            continue
        if pending is not None and w.ndim >= 2 and w.shape[1] != w_tgt.shape[1]:
            g, counts, prev = pending
            k = w.shape[1] // len(counts)
            if k * len(counts) == w.shape[1] and k * len(g) == w_tgt.shape[1]:
                cols = torch.tensor([g[j // k] * k + j % k for j in range(w_tgt.shape[1])])
                scale = 1.0 / counts[torch.tensor([g[j // k] for j in range(w_tgt.shape[1])])].to(torch.float32)
                w = w[:, cols] * scale.view(1, -1, *([1] * (w.ndim - 2)))
                how.append(f"incoming weights of {prev}'s replicated units divided by their counts")
        pending = None
        out = {("main", "weight"): w}
        for slot, t in tensors.items():
            if slot != ("main", "weight") and t is not None:
                out[slot] = t.detach().to(torch.float32)
        n_src, n_tgt = w.shape[0], w_tgt.shape[0]
        if n_tgt > n_src and w.shape[1:] == w_tgt.shape[1:]:
            extra = torch.randint(0, n_src, (n_tgt - n_src,), generator=gen)
            g = torch.cat([torch.arange(n_src), extra])
            counts = torch.bincount(g, minlength=n_src)
            out = {slot: (t[g] if t.ndim and t.shape[0] == n_src else t) for slot, t in out.items()}
            how.append(f"{n_src} -> {n_tgt} units by replicating random units")
            pending = (g.tolist(), counts, unit.label)
        if how:
            _store(done, unit, out, target, "widen: " + "; ".join(how))
    return done


def _store(done, unit: Unit, out, target, how: str) -> None:
    for slot, t in out.items():
        name = unit.slots.get(slot)
        if name is not None and tuple(t.shape) == tuple(target[name].shape):
            done[name] = (t.to(target[name].dtype), how)
