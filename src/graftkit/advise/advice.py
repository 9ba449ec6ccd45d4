"""What to do with a pretrained network on this data, decided by measuring.

`recommend` summarises the data, probes the network's features at every depth (cached),
times a training step, and picks a strategy by the field's four scenarios:

    small, similar     a linear probe on the final features           -> probe
    small, different   features from an earlier layer, or fine-tune   -> probe-at:DEPTH, or lp-ft(-at:DEPTH) if the
                                                                         budget affords it
    medium             freeze about half of the network               -> partial (similar), lp-ft(-at:DEPTH) (different)
    large              fine-tune everything                           -> lp-ft (a probe first: Kumar et al., ICLR 2022)

lp-ft starts from the best probe: when an earlier depth probes best, the network is cut there
(lp-ft-at:DEPTH) and the layers after it, the most specific to the pretraining data, are dropped.

"Similar" is measured, not assumed: the data is close to the pretraining data when the final
features probe as well as any earlier depth (within a point or one fold-std) and separate the
classes well (a probe accuracy of GOOD_PROBE or more; a weaker fit means the features lack
something this data needs, which fine-tuning can add). "Small" is the
median number of images per class. A fine-tune is only chosen when the time left in the budget
pays for at least MIN_FINETUNE_EPOCHS epochs at the measured speed.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..atomic import atomic_open, atomic_path
from ..errors import GraftError
from ..layout import channels_last, to_channels_last
from ..meta import meta_of
from ..nets.probe import PRE_LOGITS, ProbeNet
from .features import cache_key, cache_root, data_digest, default_depths, features, generic_end, model_digest
from .probe import L2_GRID, ProbeResult, check_folds, probe

SMALL_PER_CLASS = 300      # median images per class below which data counts as small
LARGE_PER_CLASS = 1000     # ... and from which it counts as large
SIMILAR_MARGIN = 0.01      # the final features are "as good" within this much CV accuracy (or one fold-std)
GOOD_PROBE = 0.90          # ... and fit the data when their probe reaches this accuracy
MIN_FINETUNE_EPOCHS = 8    # fewer epochs than this in the budget: a fine-tune is not worth starting
PROBE_SECONDS_PER_DEPTH = 3.0  # rough cost of cross-validating one depth, for the budget check
SPEED_MAX_AGE = 3600.0     # seconds a measured training speed is reused (the machine's load changes)


@dataclass
class Advice:
    """The decision, and every number behind it (to_json)."""
    strategy: str
    scenario: str
    why: str
    data: dict[str, Any]
    probes: list[ProbeResult]
    speed: dict[str, float]
    budget: float | None
    expected_seconds: float
    spent_seconds: float
    depth: str | None = None
    cached_depths: list[str] = field(default_factory=list)
    generic: str | None = None   # lp-ft keeps the network up to here (features.generic_end: the generic layers) as it is

    def probe_at(self, depth: str) -> ProbeResult:
        return next(p for p in self.probes if p.depth == depth)

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "depth": self.depth, "scenario": self.scenario, "why": self.why,
                "data": self.data, "probes": [p.to_json() for p in self.probes], "speed": self.speed,
                "budget_s": self.budget, "expected_s": round(self.expected_seconds, 1),
                "spent_s": round(self.spent_seconds, 2), "cached_depths": self.cached_depths,
                "generic_layers_end": self.generic}


def data_summary(labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=len(classes))
    present = counts[counts > 0]
    return {"images": int(len(labels)), "classes": len(classes),
            "per_class": {c: int(n) for c, n in zip(classes, counts)},
            "median_per_class": float(np.median(present)) if len(present) else 0.0,
            "imbalance": round(float(present.max() / present.min()), 2) if len(present) else None}


def train_speed(model: nn.Module, input_size: Sequence[int], batch: int = 16,
                stop: str | None = None) -> dict[str, float]:
    """Images per second of a training step (forward + backward, nothing back-propagated at or below
    `stop`) and of inference, measured on this machine at this size (one warm-up step, then two timed)."""
    from ..tune.apply import install_stop_gradient
    x = torch.randn(batch, *input_size)
    if to_channels_last(model, input_size):  # as training will run it
        x = channels_last(x)
    was = model.training
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    hooks = install_stop_gradient(model, stop) if stop else []
    try:
        model.train()
        for p in params:
            p.requires_grad_(True)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values())) if isinstance(out, dict) else out
            out.float().sum().backward()
            times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.inference_mode():
            t = time.perf_counter()
            model(x)
            infer = time.perf_counter() - t
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was)
    # (training-mode BatchNorm updated running statistics on noise: restored by the caller's copy)
    return {"train_img_s": round(batch / min(times[1:]), 1), "infer_img_s": round(batch / infer, 1)}


def _key(parts) -> str:
    return hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=20).hexdigest()


def _cached(root: Path, parts, compute, max_age: float = SPEED_MAX_AGE):
    """A small JSON measurement (the training speed of this model at this size on this machine), kept
    for `max_age` seconds: a speed measured while the machine was busy must not steer every later run."""
    path = root / f"speed-{_key(parts)}.json"
    try:
        if time.time() - path.stat().st_mtime < max_age:
            return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        with atomic_open(path, "w") as f:
            json.dump(value, f)
    except OSError:
        pass  # the feature cache reports an unwritable folder clearly
    return value


def _cached_probe(path: Path, compute) -> ProbeResult:
    """A probe's result and head, kept beside the features it was fitted on (same key, so never stale)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    try:
        with safe_open(str(path), "pt") as f:
            result = ProbeResult(**json.loads(f.metadata()["result"]))
            w, b = f.get_tensor("weight"), f.get_tensor("bias")
        result.head = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            result.head.weight.copy_(w)
            result.head.bias.copy_(b)
        return result
    except Exception:  # absent or damaged: fit again and replace it
        pass
    result = compute()
    fields = {k: v for k, v in vars(result).items() if k != "head"}
    try:
        with atomic_path(path) as tmp:
            save_file({"weight": result.head.weight.detach().contiguous(), "bias": result.head.bias.detach().contiguous()},
                      str(tmp), metadata={"result": json.dumps(fields)})
    except OSError:
        pass
    return result


def recommend(model: nn.Module, data, *, budget: float | None = None, at: Sequence[str] | None = None,
              preprocessing: dict[str, Any] | None = None, cache_dir=None, seed: int = 0,
              progress: bool | None = None, strategy: str = "auto", extra_images: int = 0) -> Advice:
    """Measure and decide (see the module docstring). `data` is an ImageDataset without a transform,
    or anything ImageDataset.open takes. `strategy` other than auto only limits what is probed.
    `extra_images` (validation images) count in the time the features of a probe will take."""
    import copy
    from ..data import ImageDataset
    from ..data.transforms import complete
    t0 = time.perf_counter()
    ds = data if isinstance(data, ImageDataset) else ImageDataset.open(data)
    labels = np.asarray(ds.targets, dtype=np.int64)
    classes = list(ds.classes)
    check_folds(labels, classes, 5)  # a class with one image: one clear error before any work
    pre = complete(preprocessing if preprocessing is not None else meta_of(model).get("preprocessing"))
    if strategy in ("probe", "lp-ft"):
        depths = [PRE_LOGITS]
    elif strategy.startswith(("probe-at:", "partial-at:", "lp-ft-at:")):
        depths = [strategy.split(":", 1)[1]]
    else:
        depths = list(at) if at else default_depths(model, pre["input_size"])
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    hashes = (model_digest(model), data_digest(ds))
    from ..tune.head import find_head
    tunable = isinstance(meta_of(model).get("spec"), str) and find_head(model) is not None
    generic = generic_end(model, pre["input_size"]) if tunable else None
    speed = _cached(root, ("speed", hashes[0], pre["input_size"], generic, torch.get_num_threads(), platform.node()),
                    lambda: train_speed(copy.deepcopy(model), pre["input_size"], stop=generic))
    keys = {d: cache_key(*hashes, pre, d, torch.float32) for d in depths}
    probe_keys = {d: _key(("probe", 3, keys[d], seed, L2_GRID, 5)) for d in depths}  # (3: path stopped past its best)
    n = len(ds)
    todo = [d for d in depths if not (root / f"{keys[d]}.safetensors").is_file()]
    feature_s = ((n if todo else 0) + extra_images) / max(speed["infer_img_s"], 1e-6) + PROBE_SECONDS_PER_DEPTH * sum(
        not (root / f"probe-{probe_keys[d]}.safetensors").is_file() for d in depths)
    if budget is not None and budget < 0.9 * feature_s:
        raise GraftError(f"a time budget of {budget:g} s is too small for any strategy: computing and probing "
                         f"the features of {n} images alone takes about {feature_s:.0f} s here",
                         f"give --time-budget {int(feature_s * 1.2) + 1} or more")
    feats = features(model, ds, depths, preprocessing=pre, cache_dir=root, progress=progress,
                     description="features", hashes=hashes)
    probes = [_cached_probe(root / f"probe-{probe_keys[d]}.safetensors",
                            lambda d=d: probe(feats.at[d], feats.labels, classes, d, seed=seed)) for d in depths]
    best = max(probes, key=lambda p: p.cv_acc)
    cut_speed = None
    if tunable and best.depth != PRE_LOGITS and strategy == "auto":
        # lp-ft-at trains the network cut at that depth: time that one (lite0 at blocks.4: 1.3x the whole one's images/s)
        cut_speed = _cached(root, ("speed", hashes[0], pre["input_size"], generic, best.depth, torch.get_num_threads(),
                                   platform.node()), lambda: train_speed(_cut(model, best), pre["input_size"],
                                                                         stop=generic and ProbeNet.inner(generic)))
    spent = time.perf_counter() - t0
    summary = data_summary(labels, classes)
    advice = decide(strategy, probes, summary, speed, budget, spent, tunable, cut_speed)
    advice.cached_depths = feats.cached
    advice.generic = generic
    return advice


def _cut(model: nn.Module, result: ProbeResult) -> nn.Module:
    """A copy of `model` cut at the probe's depth with a linear head: what lp-ft-at trains."""
    import copy
    from .features import tap_point
    _, tap, side = tap_point(model, result.depth)
    return ProbeNet(copy.deepcopy(model), tap, side, result.dim, result.head.weight.shape[0], result.depth)


def score_on(advice: Advice, model: nn.Module, val, *, preprocessing: dict[str, Any], cache_dir=None,
             progress: bool | None = None) -> None:
    """Each probe's accuracy on separate validation data (its features cached like the training data's)."""
    from ..data import ImageDataset
    vds = val if isinstance(val, ImageDataset) else ImageDataset.open(val)
    classes = list(advice.data["per_class"])
    if list(vds.classes) != classes:
        raise GraftError(f"the validation data's classes ({', '.join(map(str, vds.classes[:5]))}, ...) are not "
                         f"the training data's ({', '.join(classes[:5])}, ...)",
                         "give --val the same class folders (or class map) as the training data")
    feats = features(model, vds, [p.depth for p in advice.probes], preprocessing=preprocessing, cache_dir=cache_dir,
                     progress=progress, description="validation features")
    with torch.no_grad():
        for p in advice.probes:
            p.val_acc = float((p.head(feats.at[p.depth]).argmax(1) == feats.labels).float().mean())


def decide(strategy: str, probes: list[ProbeResult], data: dict[str, Any], speed: dict[str, float],
           budget: float | None, spent: float, tunable: bool = True,
           cut_speed: dict[str, float] | None = None) -> Advice:
    """The strategy for these measurements (the rules of the module docstring). `tunable`: the network
    can be given a new head and fine-tuned (not yet so for converted graphs, or without a classifier).
    `cut_speed`: the training speed of the network cut at the best-probing earlier depth, which is what
    lp-ft-at trains (and what its epochs are counted with)."""
    best = max(probes, key=lambda p: p.cv_acc)
    final = next((p for p in probes if p.depth == PRE_LOGITS), probes[-1])
    margin = max(SIMILAR_MARGIN, final.cv_std)
    similar = (best is final or best.cv_acc - final.cv_acc <= margin) and final.cv_acc >= GOOD_PROBE
    per_class = data["median_per_class"]
    size = "small" if per_class < SMALL_PER_CLASS else "large" if per_class >= LARGE_PER_CLASS else "medium"
    cut = not similar and best is not final and cut_speed is not None and strategy == "auto"
    if cut:
        speed = {**speed, "cut_at": best.depth, "cut_train_img_s": cut_speed["train_img_s"]}
    epoch_s = data["images"] / max(speed["cut_train_img_s" if cut else "train_img_s"], 1e-6)
    left = None if budget is None else max(0.0, budget - spent)
    epochs = float("inf") if left is None else left / epoch_s
    affords = epochs >= MIN_FINETUNE_EPOCHS
    scenario = f"{size} data ({per_class:.0f} images per class), " + (
        f"similar to the pretraining data (the final features probe best: {final.cv_acc:.1%})" if similar else
        (f"different from the pretraining data (no linear probe reaches {GOOD_PROBE:.0%}: the final features, "
         f"the best, {final.cv_acc:.1%})" if best is final else
         f"different from the pretraining data (an earlier depth probes best: {best.cv_acc:.1%} at {best.depth}, "
         f"the final features {final.cv_acc:.1%})"))
    room = "no time budget" if left is None else f"{left:.0f} s left pay for about {epochs:.0f} epochs"
    stages = [p.depth for p in probes if p.depth != PRE_LOGITS]
    half = stages[(len(stages) - 1) // 2] if stages else final.depth
    # partial: freeze up to the best-probing earlier depth when the data differs, else about half
    partial = best.depth if not similar and best is not final else half
    if strategy == "partial":
        if not stages:
            raise GraftError("partial needs the network's stages, and none were probed",
                             "use --strategy partial-at:LAYER, lp-ft or finetune")
        choice, depth, why = f"partial-at:{partial}", partial, "asked for"
    elif strategy != "auto":
        choice, depth, why = strategy, None, "asked for"
    elif size == "small" and similar:
        choice, depth, why = "probe", PRE_LOGITS, ("a linear classifier on the final features: they already "
                                                    f"separate the classes ({final.cv_acc:.1%} cross-validated), "
                                                    "and fine-tuning on this little data mostly overfits")
    elif not affords or not tunable:
        choice = "probe" if best.depth == PRE_LOGITS else f"probe-at:{best.depth}"
        depth = best.depth
        why = (f"a linear classifier at {best.depth}, the best-probing depth ({best.cv_acc:.1%}): "
               + (f"{room}, fewer than the {MIN_FINETUNE_EPOCHS} a fine-tune needs" if tunable else
                  "graftkit cannot yet give this network (a converted graph, or one without a classifier it can "
                  "find) a new head to fine-tune"))
    elif size == "medium" and similar and stages:
        choice, depth, why = f"partial-at:{half}", half, (f"freeze the network up to {half} (about half) and "
                                                          f"train the rest: {room}")
    elif not similar and best is not final:
        choice, depth = f"lp-ft-at:{best.depth}", best.depth
        why = (f"a linear probe at {best.depth}, the best-probing depth ({best.cv_acc:.1%}), then fine-tune the "
               f"network up to there from it (the layers after it, the most specific to the pretraining data, are "
               f"dropped): {room}")
    else:
        choice, depth = "lp-ft", PRE_LOGITS
        why = (f"a linear probe first ({final.cv_acc:.1%}), then fine-tune from it: "
               + ("the features are far from this data, " if not similar else "there is data enough, ")
               + f"and {room}")
    if choice.startswith(("probe-at:", "partial-at:", "lp-ft-at:")):
        depth = choice.split(":", 1)[1]
    elif choice in ("probe", "lp-ft"):
        depth = PRE_LOGITS
    if choice.startswith("probe"):
        expected = spent
    else:
        expected = budget if budget is not None else spent + 30 * epoch_s
    return Advice(choice, scenario, why, data, probes, {**speed, "epoch_s": round(epoch_s, 1)}, budget,
                  expected, spent, depth)
