"""Train with a strategy: measure and choose (auto), or run the one asked for.

    probe, probe-at:DEPTH   the network cut at DEPTH + pooling + the cross-validated linear probe,
                            saved as a package (nets.probe) that evaluates, predicts and exports
    lp-ft                   the probe becomes the new head, then everything above the generic early layers
                            (stride <= 4: the stem and first stages) is fine-tuned
    lp-ft-at:DEPTH          the same from the probe at DEPTH: the network cut there (as probe-at packages it)
    partial(-at:DEPTH)      fine-tune with everything up to DEPTH frozen (plan stop_gradient)
    finetune                graftkit.train.fit with the plan as it is
    scratch                 the same architecture from random weights, same plan

The run folder gets what fit() writes (best/last packages, summary.json, ...); summary.json
also records the strategy, the reason and the measurements behind it.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import package
from ..errors import GraftError
from ..meta import META_ATTR, meta_of
from ..nets import probe as probenet
from ..train.metrics import Meter
from ..tune import Plan
from .advice import Advice, recommend
from .features import features, tap_point


def train(model, train_data, val_data=None, *, out_dir: str | os.PathLike, strategy: str | None = None,
          plan: Plan | None = None, time_budget: float | None = None, seed: int = 0, cache_dir=None,
          trust: bool = False, device: str | None = None, quiet: bool | None = None,
          log: Callable[[str], None] | None = None, **fit_kwargs: Any) -> dict[str, Any]:
    """Train `model` on `train_data` with `strategy` (default: the plan's, which defaults to auto).
    Returns the run summary (also in out_dir/summary.json)."""
    from ..data import ImageDataset
    from ..models import resolve
    from ..train import fit
    from ..train.data import preprocessing_for
    plan = copy.deepcopy(plan) if plan is not None else Plan.load()
    if time_budget is not None:
        plan.time_budget = float(time_budget)
    strategy = strategy or plan.strategy
    plan.strategy = strategy
    where = {"train": _where(train_data), "val": _where(val_data)}
    plan.validate()
    say = log or (print if not quiet else (lambda _m: None))
    if strategy in ("finetune", "scratch"):
        module = resolve(model, trust=trust) if strategy == "finetune" else _fresh(model, trust)
        summary = fit(module, train_data, val_data, out_dir=out_dir, plan=plan, seed=seed, device=device,
                      quiet=quiet, log=log, **fit_kwargs)
        return _record(out_dir, summary, {"asked": strategy, "chosen": strategy, "why": "asked for"},
                       where)
    if fit_kwargs.get("resume"):
        raise GraftError(f"--resume continues a plain fine-tune, and strategy {strategy} measures first",
                         "start the run again (its features and probes are cached, so measuring is quick), or "
                         "resume a run that was started with --strategy finetune")
    t0 = time.perf_counter()
    module = resolve(model, trust=trust)
    ds = ImageDataset.open(train_data) if not isinstance(train_data, ImageDataset) else train_data
    pre = preprocessing_for(meta_of(module).get("preprocessing"), plan, ds)
    if isinstance(val_data, (str, os.PathLike)):
        val_data = ImageDataset.open(val_data)  # opened once: counted here, then probed or fine-tuned on
    val_n = len(val_data) if val_data is not None else 0
    advice = recommend(module, ds, budget=plan.time_budget, preprocessing=pre, cache_dir=cache_dir, seed=seed,
                       progress=None if not quiet else False, strategy=strategy, extra_images=val_n)
    chosen = advice.strategy
    record = {"asked": strategy, "chosen": chosen, "why": advice.why, "scenario": advice.scenario,
              "time_budget": plan.time_budget, "evidence": advice.to_json()}  # the budget asked, measuring included
    say(f"strategy {chosen}" + (f" (auto): {advice.scenario}; {advice.why}" if strategy == "auto" else ""))
    if chosen.startswith("probe"):
        summary = _probe_run(module, ds, val_data, advice, pre, Path(out_dir), cache_dir, quiet, t0, model)
        return _record(out_dir, summary, record, where)
    spent = time.perf_counter() - t0
    if plan.time_budget is not None:
        plan.time_budget = max(1.0, plan.time_budget - spent)  # the measuring came out of the budget
    if chosen == "lp-ft" or chosen.startswith("lp-ft-at:"):
        generic = advice.generic
        if chosen == "lp-ft":
            module = _with_probe_head(module, advice.probe_at(advice.depth), list(ds.classes))
        else:  # the network cut at the depth, the probe its head (what `probe-at` packages), fine-tuned from there
            module = probe_package(module, advice.probe_at(advice.depth), list(ds.classes), pre).train()
            generic = generic and probenet.ProbeNet.inner(generic)
            _under_base(plan)
        plan.head = "keep"
        _defaults(plan, LP_FT_DEFAULTS)
        if not plan.stop_gradient and not plan.freeze and generic:
            # The generic early layers stay as they are (as Detectron's FREEZE_AT=2 keeps the stem and the
            # first stage): their backward pass costs the most, so the budget buys more epochs of the rest
            # (Fashion-MNIST 100/class, 300 s: 17 epochs instead of 12; README, "Which strategy").
            plan.stop_gradient = generic
            say(f"lp-ft keeps the generic early layers, up to {advice.generic}, as they are")
    elif chosen.startswith("partial-at:"):
        plan.stop_gradient = tap_point(module, advice.depth)[1]
    summary = fit(module, train_data, val_data, out_dir=out_dir, plan=plan, seed=seed, device=device, quiet=quiet,
                  log=log, **fit_kwargs)
    summary["seconds_measuring"] = round(spent, 2)
    return _record(out_dir, summary, record, where)


# lp-ft's own settings where the plan file and flags leave them:
LP_FT_DEFAULTS = {
    "head_lr_mult": 1.0,  # the head is trained already: it must not pull the features around
    # The probe was fitted on features under the running statistics; batch statistics of data far from ImageNet
    # differ so much that in train mode the probe's head scores near chance (Fashion-MNIST: 82% in eval mode,
    # 3% in train mode), and lp-ft would start from nothing.
    "bn_stats": "frozen",
    # Half the batch at twice the lr: twice the steps, larger ones, in a short budget (Fashion-MNIST 100/class,
    # 300 s: 88.3-88.9 % against 88.0 % at the plan's 32 and 1e-3; README "Which strategy").
    "solver.batch_size": 16,
    "solver.lr": 2e-3,
}


def _defaults(plan, defaults: dict[str, Any]) -> None:
    """Set the plan's keys named in `defaults` ("solver.lr", ...) that the user did not give."""
    for key, value in defaults.items():
        if key not in plan.given:
            section, _, name = key.rpartition(".")
            setattr(getattr(plan, section) if section else plan, name, value)


def _under_base(plan) -> None:
    """The cut network keeps the original under `base.`: the user's layer patterns (written for the original,
    as `graft plan show` lists it) are moved there, so `freeze: [blocks.0]` means the same layers."""
    from ..tune.patterns import KEYWORDS
    move = lambda p: p if p in KEYWORDS or p.startswith("re:") else probenet.ProbeNet.inner(p)  # noqa: E731
    plan.freeze = [move(p) for p in plan.freeze]
    plan.stop_gradient = plan.stop_gradient and move(plan.stop_gradient)
    plan.lr_mult = {move(p): v for p, v in plan.lr_mult.items()}
    plan.decay_mult = {move(p): v for p, v in plan.decay_mult.items()}
    plan.unfreeze = {e: [move(p) for p in ps] for e, ps in plan.unfreeze.items()}


def _record(out_dir, summary: dict[str, Any], record: dict[str, Any], where: dict) -> dict[str, Any]:
    from ..train.logs import write_json
    summary["strategy"] = record
    # where the data was, so that `graft report RUN_DIR` can look at it again
    summary["data"] = where
    write_json(Path(out_dir) / "summary.json", summary)
    return summary


def _where(data) -> str | None:
    """An absolute path for data given as a path (or an opened data set's), else None."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).resolve())
    src = getattr(data, "origin", None)
    return str(Path(src).resolve()) if src else None


def _fresh(model, trust: bool) -> nn.Module:
    """The same architecture with random weights (scratch)."""
    from ..models import resolve
    if isinstance(model, nn.Module):
        spec = meta_of(model).get("spec")
    elif package.is_package(model):
        spec = package.read_meta(model)["spec"]
    else:
        return resolve(model, pretrained=False, trust=trust)
    from ..nets import spec as specs
    module = specs.build(spec, trust=trust)
    meta = dict(meta_of(model) if isinstance(model, nn.Module) else package.read_meta(model))
    setattr(module, META_ATTR, {**meta, "report": None})
    return module


def _with_probe_head(module: nn.Module, result, classes: list[str]) -> nn.Module:
    """The network with a new head for `classes`, initialised from the probe (lp-ft's first stage)."""
    from ..tune.head import find_head, prepare
    module, _ = prepare(module, classes, "new")
    head = module.get_submodule(find_head(module))
    if not isinstance(head, nn.Linear) or tuple(head.weight.shape) != tuple(result.head.weight.shape):
        raise GraftError("lp-ft needs a linear classifier the probe's shape", "use --strategy finetune")
    with torch.no_grad():
        head.weight.copy_(result.head.weight)
        head.bias.copy_(result.head.bias)
    return module


def probe_package(module: nn.Module, result, classes: list[str], preprocessing: dict[str, Any]) -> nn.Module:
    """The probe as a module: the network cut at the probe's depth, pooled, and its linear head."""
    depth, tap, side = tap_point(module, result.depth)
    base_spec = meta_of(module).get("spec")
    if base_spec is None:
        raise GraftError("this network has no architecture spec, so its probe cannot be packaged",
                         "load it from a package or name it as timm:NAME")
    net = probenet.ProbeNet(module, tap, side, result.dim, len(classes), depth)
    with torch.no_grad():
        net.head.weight.copy_(result.head.weight)
        net.head.bias.copy_(result.head.bias)
    old = meta_of(module)
    spec = probenet.make_spec(base_spec, depth, tap, side, result.dim, len(classes))
    setattr(net, META_ATTR, {**old, "spec": spec, "classes": classes, "preprocessing": preprocessing})
    return net.eval()


def _probe_run(module, ds, val_data, advice: Advice, pre, out: Path, cache_dir, quiet, t0, model_ref) -> dict[str, Any]:
    classes = list(ds.classes)
    result = advice.probe_at(advice.depth)
    summary: dict[str, Any] = {"model": str(model_ref) if isinstance(model_ref, (str, os.PathLike)) else None,
                               "classes": classes, "train_images": len(ds), "val_images": 0, "epochs": 0, "best_epoch": None,
                               "best": {}, "warnings": [], "stop_reason": f"{advice.strategy}: no epochs to run",
                               "probe": result.to_json()}
    if val_data is not None:
        from ..data import ImageDataset
        vds = ImageDataset.open(val_data) if not isinstance(val_data, ImageDataset) else val_data
        if list(vds.classes) != classes:
            raise GraftError(f"the validation data's classes ({', '.join(map(str, vds.classes[:5]))}, ...) are not "
                             f"the training data's ({', '.join(classes[:5])}, ...)",
                             "give --val the same class folders (or class map) as --train")
        vf = features(module, vds, [advice.depth], preprocessing=pre, cache_dir=cache_dir,
                      progress=None if not quiet else False, description="validation features")
        meter = Meter(len(classes))
        with torch.no_grad():
            meter.update(result.head(vf.at[advice.depth]), vf.labels)
        summary["val"] = meter.result(classes)
        summary["val_images"] = len(vds)
        summary["best"] = {"val_top1": summary["val"]["top1"]}
    # (after the validation features: the package's own hook on the network would stop their forward)
    net = probe_package(module, result, classes, pre)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"train": {"strategy": advice.strategy, "probe": result.to_json()}}
    provenance = {"fine_tuned_from": str(model_ref) if isinstance(model_ref, (str, os.PathLike)) else None,
                  "train_data": getattr(ds, "description", None)}
    for name in ("best.safetensors", "last.safetensors"):
        package.save(net, out / name, provenance=provenance, extra=extra)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary

