"""`fit`: fine-tune a model under a plan, with checkpoints that resume exactly.

Per epoch: shuffled batches (order and augmentations fixed by the seed), the
plan's losses, the NaN/Inf guard, validation (top-1/top-5, per-class accuracy,
confusion matrix), the best and last packages, the checkpoint, the logs. A stop
(SIGINT/SIGTERM, or `interrupt_after` in tests) writes a mid-epoch checkpoint
first; `resume=True` continues from it and ends with the same weights, bit for
bit, as the uninterrupted run (CPU, same seed and thread count).

`fit` itself is the loop: the step, validation and the position in the run. Everything
around it (checkpoints, the time budget, early stopping, packages, logs, curves, the
unfreeze schedule, the NaN guard, the worker count) is a callback in `callbacks`, and
all of them share one `Run`.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..errors import GraftError
from ..layout import channels_last, to_channels_last
from ..meta import meta_of
from ..models import resolve
from ..progress import make_progress
from ..tune import Plan, Tuning, apply
from . import checkpoint
from .callbacks import Callbacks, default_callbacks
from .data import RunData, open_run_data
from .distributed import Context, context
from .metrics import Meter
from .sampling import EpochBatches
from .solver import LRPolicy, make_optimizer

CHECKPOINT = "checkpoint.pt"


@dataclass
class Position:
    epoch: int = 0          # current epoch (0-based)
    batch: int = 0          # batches of this epoch already done
    it: int = 0             # global iteration
    elapsed: float = 0.0    # seconds of training so far (train + validation)
    epochs: int = 1         # planned number of epochs (with a time budget: the most that may run)
    reserve: float = 0.0    # seconds the end of an epoch takes (validation, packages, logs), kept out of a budget
    ends: list = field(default_factory=list)   # the last few end-of-epoch durations, for a steady reserve
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    loss_sum: float = 0.0   # this epoch so far
    correct: int = 0
    seen: int = 0
    stop_reason: str = ""


@dataclass(eq=False)
class Run:
    """What fit's loop and its callbacks share. `pos` and `history` are what a checkpoint carries over."""
    plan: Plan
    out: Path
    ctx: Context
    say: Callable[[str], None]
    quiet: bool | None
    seed: int
    model_ref: Any              # the model as the caller named it (reference, path), None for a module
    train_ref: Any              # the training data's path, None for a Dataset
    state: dict | None          # the checkpoint resumed from
    data: RunData
    tuning: Tuning
    raw: nn.Module              # the model; `net` is what the step calls (under DDP, its wrapper)
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    normalize: Callable | None
    sampler: EpochBatches
    val_batches: EpochBatches | None
    ipe: int                    # iterations per epoch
    loading: dict               # what the RAM decode cache did, per split
    clock: Callable[[], float]  # wall or CPU seconds (plan.budget_clock)
    channels_last: bool = False  # the model runs channels-last (src/graftkit/layout.py), so its inputs do too
    pos: Position = field(default_factory=Position)
    history: list = field(default_factory=list)
    net: nn.Module | None = None
    policy: LRPolicy | None = None
    loader: DataLoader | None = None        # made (and remade) by callbacks.WorkerTuner
    val_loader: DataLoader | None = None
    t_start: float = 0.0        # clock() when the run started, resumed runs included
    lr: float = 0.0             # the current batch's learning rate and loss
    batch_loss: float = 0.0
    spent: float | None = None  # the fraction of the time budget spent, which drives the schedule (TimeBudget)
    improved: bool = False      # the epoch just ended is the best so far (EarlyStopping)

    @property
    def cuda(self) -> bool:
        return self.ctx.device.type == "cuda"

    @property
    def budget(self) -> float | None:
        """The time budget in seconds, unless solver.max_iter sets the run's length instead."""
        return self.plan.time_budget if self.plan.time_budget and not self.plan.solver.max_iter else None

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT

    def elapsed(self) -> float:
        return self.clock() - self.t_start

    def make_loaders(self, workers: int) -> tuple[DataLoader, DataLoader | None]:
        """Train and validation loaders; persistent workers start once, not at every epoch (the epoch travels in
        each (epoch, index) key)."""
        spawn = "spawn" if workers and self.cuda else None
        train = DataLoader(_seeded(self.data.train, self.seed), batch_sampler=self.sampler, num_workers=workers,
                           collate_fn=_collate, pin_memory=self.cuda, generator=torch.Generator(),
                           persistent_workers=workers > 0, multiprocessing_context=spawn)
        val = None
        if self.val_batches is not None:
            val = DataLoader(_seeded(self.data.val, self.seed), batch_sampler=self.val_batches, num_workers=workers,
                             collate_fn=_collate, generator=torch.Generator(), persistent_workers=workers > 0,
                             multiprocessing_context=spawn)
        return train, val


def _seeded(ds: Dataset, seed: int) -> Dataset:
    """A dataset that takes (epoch, index) keys and seeds each sample's draws: an ImageDataset does both itself."""
    from ..data import ImageDataset
    from ..data.seeding import Seeded
    return ds if isinstance(ds, ImageDataset) else Seeded(ds, seed)


def _collate(items):
    items = [b for b in items if b is not None]  # records that failed to decode are skipped
    if not items:
        return None
    xs, ys = zip(*items)
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys, dtype=torch.int64)


def fit(model: str | nn.Module, train: str | os.PathLike | Dataset, val: str | os.PathLike | Dataset | None = None, *,
        out_dir: str | os.PathLike, plan: Plan | None = None, classes: list[str] | None = None, seed: int = 0,
        resume: bool = False, epochs: int | None = None, time_budget: float | None = None,
        device: str | None = None, quiet: bool | None = None, interrupt_after: int | None = None,
        log: Callable[[str], None] | None = None, trust: bool = False) -> dict[str, Any]:
    """Fine-tune `model` on `train`; writes best/last packages, checkpoint, logs, curves and summary.json.

    model: a module or a reference (`lite0`, `timm:NAME`, a package). train/val: a class folder, a
    .lst, a RecordIO pack, or a Dataset of (image tensor, label) with `classes` (or pass classes=).
    Returns the summary (also written to out_dir/summary.json)."""
    run = _open_run(model, train, val, out_dir=out_dir, plan=plan, classes=classes, seed=seed, resume=resume,
                    epochs=epochs, time_budget=time_budget, device=device, quiet=quiet, log=log, trust=trust)
    hooks = Callbacks(default_callbacks(run, interrupt_after))
    pos, plan, ctx, opt, scaler = run.pos, run.plan, run.ctx, run.opt, run.scaler
    amp = torch.autocast("cuda", dtype=torch.float16) if scaler.is_enabled() else contextlib.nullcontext()
    try:
        hooks("on_fit_start", run)
        run.t_start = run.clock() - pos.elapsed
        while pos.epoch < pos.epochs and not pos.stop_reason:
            run.sampler.set_epoch(pos.epoch, pos.batch)
            if hasattr(run.data.train, "set_epoch"):  # the dataset's own per-epoch augmentation draws
                run.data.train.set_epoch(pos.epoch)
            hooks("on_epoch_start", run)
            for batch in run.loader:
                if batch is None:  # none of its records could be decoded
                    pos.batch += 1
                    continue
                hooks("on_batch_start", run)
                x, y = batch
                run.lr = run.policy.apply(opt, pos.it, run.spent)
                _check_labels(y, len(run.data.classes), run.data, pos.epoch, pos.it)  # on the host: no device sync
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                if run.normalize is not None:
                    x = run.normalize(x)
                if run.channels_last:
                    x = channels_last(x)
                with amp:
                    loss, main, _ = run.tuning.loss(run.net(x), y, run.criterion)
                run.batch_loss = float(loss.detach())  # read once: on a GPU each read waits for the step
                hooks("on_before_backward", run, loss, x)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if plan.solver.clip_grad_norm:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                             plan.solver.clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                pos.it, pos.batch = pos.it + 1, pos.batch + 1
                pos.loss_sum += run.batch_loss * len(y)
                pos.correct += int((main.detach().argmax(1) == y).sum())
                pos.seen += len(y)
                pos.elapsed = run.elapsed()
                hooks("on_batch_end", run)
                if hooks.should_stop(run):
                    break
            hooks("on_train_epoch_end", run)
            row = _end_epoch(run)
            pos.epoch, pos.batch = pos.epoch + 1, 0
            pos.loss_sum, pos.correct, pos.seen = 0.0, 0, 0
            hooks("on_epoch_end", run, row)
    finally:
        hooks("teardown", run)  # the progress bar closed and the signal handlers restored, also after an error
    summary = _summary(run)
    hooks("on_fit_end", run, summary)
    ctx.barrier()
    return summary


def _open_run(model, train, val, *, out_dir, plan: Plan | None, classes, seed: int, resume: bool, epochs, time_budget,
              device, quiet, log, trust: bool) -> Run:
    """Everything fit's loop needs, from its arguments, resumed from the checkpoint with `resume`."""
    plan = plan or Plan.load()
    if epochs is not None:
        plan.solver.epochs = int(epochs)
    if time_budget is not None:
        plan.time_budget = float(time_budget)
    plan.validate()
    out = Path(out_dir)
    ctx = context(device)
    say = log or (lambda msg: make_progress().console.print(msg) if ctx.main and not quiet else None)
    if resume:
        state = checkpoint.load(out / CHECKPOINT)
    else:
        if (out / CHECKPOINT).exists():
            raise GraftError(f"{out} already holds a training run ({CHECKPOINT})",
                             "pass --resume to continue it, or choose another output folder")
        state = None

    _seed_all(seed)
    model_ref = model if isinstance(model, (str, os.PathLike)) else None
    module = resolve(model, trust=trust)
    data: RunData = open_run_data(train, val, plan, meta_of(module), classes=classes, seed=seed)
    module, tuning = apply(module, plan, data.classes)
    cuda = ctx.device.type == "cuda"
    module.to(ctx.device)
    fast_layout = plan.solver.channels_last and to_channels_last(module, _input_size(data))
    opt = make_optimizer(tuning.param_groups(module, plan.solver.lr, plan.solver.weight_decay), plan.solver)
    loading = _decode_once(data, plan, ctx, say, None if (ctx.main and not quiet) else False)
    sampler = EpochBatches(len(data.train), plan.solver.batch_size, seed, labels=data.train_labels,
                           balanced=plan.data.balanced, rank=ctx.rank, world=ctx.world)
    ipe = len(sampler.batches(0))
    if ipe == 0:
        raise GraftError("the training data gives no batch", "add images or lower solver.batch_size")
    if plan.budget_clock == "cpu":  # CPU seconds per thread: the same run costs the same on a busy machine
        threads = torch.get_num_threads()
        clock = lambda: time.process_time() / threads  # noqa: E731
    else:
        clock = time.perf_counter
    run = Run(plan=plan, out=out, ctx=ctx, say=say, quiet=quiet, seed=seed, model_ref=model_ref,
              train_ref=train if isinstance(train, (str, os.PathLike)) else None, state=state, data=data,
              tuning=tuning, raw=module, opt=opt, scaler=torch.amp.GradScaler("cuda", enabled=cuda and plan.solver.amp),
              criterion=nn.CrossEntropyLoss(label_smoothing=plan.solver.label_smoothing),
              normalize=data.normalize.to(ctx.device) if isinstance(data.normalize, nn.Module) else data.normalize,
              sampler=sampler, ipe=ipe, loading=loading, clock=clock, channels_last=fast_layout,
              # the same (seeded) samples at every validation, whoever draws them
              val_batches=None if data.val is None else EpochBatches(len(data.val), max(64, plan.solver.batch_size),
                                                                    seed, shuffle=False, keep_all=True))
    max_iter = plan.solver.max_iter
    run.pos.epochs = math.ceil(max_iter / ipe) if max_iter else plan.solver.epochs
    if state is not None:
        _resume(run, state)  # before DDP spreads the weights
    run.policy = LRPolicy(plan.solver, ipe, max_iter or run.pos.epochs * ipe)
    run.net = module
    if ctx.active:
        run.net = nn.parallel.DistributedDataParallel(module, device_ids=[ctx.device.index] if cuda else None,
                                                      find_unused_parameters=bool(plan.unfreeze or plan.stop_gradient))
    out.mkdir(parents=True, exist_ok=True)
    return run


def _resume(run: Run, state: dict[str, Any]) -> None:
    """The checkpoint's model, optimizer, position, history and random state."""
    plan, was = run.plan, state["plan"]["solver"]
    run.raw.load_state_dict(state["model"])
    if was["optimizer"] == plan.solver.optimizer:
        run.opt.load_state_dict(state["optimizer"])
    else:
        run.say(f"the optimizer changed from {was['optimizer']} to {plan.solver.optimizer}: its state starts afresh")
    if "scaler" in state and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.pos = pos = Position(**state["position"])
    if not plan.solver.max_iter and plan.solver.epochs != was["epochs"]:
        pos.epochs = plan.solver.epochs  # the user asked for a longer (or shorter) run
        pos.stop_reason = ""
    run.history = list(state["history"])
    if state.get("classes") != run.data.classes:
        raise GraftError(f"{run.ckpt_path}: the checkpoint was trained on other classes than this data",
                         "resume with the same --train data")
    checkpoint.set_rng_state(state["rng"])
    run.say(f"resuming {run.out} at epoch {pos.epoch + 1}, batch {pos.batch} (iteration {pos.it})")


def _decode_once(data: RunData, plan: Plan, ctx, say, progress: bool | None) -> dict[str, Any]:
    """Decode the training (then the validation) images once into RAM when they fit plan.data.cache_ram;
    what was done, per split. Every rank holds its own copy, so each gets its share of the budget."""
    from ..data import ImageDataset
    from ..data.memory import human, parse_budget
    left = parse_budget(plan.data.cache_ram) // max(1, ctx.world)
    done: dict[str, Any] = {}
    for name, ds in (("train", data.train), ("val", data.val)):
        if not isinstance(ds, ImageDataset) or ds.transform is None:
            continue
        info = ds.cache(left, progress=progress)
        done[name] = info
        if info.get("cached"):
            left -= info["bytes"]
            say(f"{name}: {len(ds):,} images decoded once into memory ({human(info['bytes'])}, {info['seconds']:.1f} s)")
        elif name == "train" and info.get("budget_bytes"):
            say(f"{name}: streaming the images from disk ({info['reason']})")
    return done


def _end_epoch(run: Run) -> dict[str, Any]:
    """The epoch's row of the history: train figures (averaged over ranks), validation, seconds so far."""
    pos, ctx, opt, data = run.pos, run.ctx, run.opt, run.data
    if ctx.active:
        ctx.average_buffers(run.raw)
    row = {"epoch": pos.epoch + 1, "iteration": pos.it, "lr": opt.param_groups[0]["lr"] / opt.param_groups[0].get(
        "lr_mult", 1.0), "train_loss": pos.loss_sum / max(1, pos.seen), "train_top1": pos.correct / max(1, pos.seen)}
    if ctx.active:  # average the epoch's train figures over ranks
        t = torch.tensor([pos.loss_sum, pos.correct, pos.seen], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        row["train_loss"], row["train_top1"] = float(t[0] / max(1, t[2])), float(t[1] / max(1, t[2]))
    if run.val_loader is not None:
        res = evaluate(run.raw, run.val_loader, len(data.classes), run.normalize, run.criterion, run.tuning, ctx.device,
                       data.classes, run.channels_last)
        row.update(val_loss=res["loss"], val_top1=res["top1"], val_top5=res["top5"], val=res)
    run.history.append({k: v for k, v in row.items() if k != "val"} | ({"val_detail": {
        "per_class": row["val"]["per_class"], "confusion": row["val"]["confusion"]}} if "val" in row else {}))
    pos.elapsed = run.elapsed()
    row["seconds"] = run.history[-1]["seconds"] = round(pos.elapsed, 2)
    return row


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, normalize=None, criterion=None, tuning: Tuning | None = None,
             device: torch.device | str = "cpu", classes: list[str] | None = None,
             nhwc: bool = False) -> dict[str, Any]:
    """Top-1/top-5, loss, per-class accuracy and confusion matrix of `model` over a loader
    (`nhwc`: the model runs channels-last, so its inputs are made so too)."""
    was = model.training
    model.eval()
    meter = Meter(num_classes)
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        x, y = x.to(device), y.to(device)
        if normalize is not None:
            x = normalize(x)
        out = model(channels_last(x) if nhwc else x)
        logits = tuning.outputs(out)[0] if tuning else out
        meter.update(logits, y, float(criterion(logits.float(), y)) if criterion else None)
    model.train(was)
    return meter.result(classes)


def _input_size(data: RunData) -> tuple[int, ...]:
    """(C, H, W) of the images the model is trained on: the preprocessing's, or a Dataset's first sample's."""
    if data.preprocessing:
        return tuple(data.preprocessing["input_size"])
    return tuple(data.train[0][0].shape)


def _check_labels(y: torch.Tensor, k: int, data: RunData, epoch: int, it: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        bad = int(y.max()) if int(y.max()) >= k else int(y.min())
        raise GraftError(f"a training label is {bad} but there are {k} classes (labels must be 0..{k - 1}); "
                         f"seen at epoch {epoch + 1}, iteration {it}",
                         "renumber the labels of the list from 0 (`graft data check` finds them)")


def _summary(run: Run) -> dict[str, Any]:
    pos, history, data, plan, model_ref = run.pos, run.history, run.data, run.plan, run.model_ref
    last = history[-1] if history else {}
    k = len(data.classes)
    warnings = []
    acc = last.get("val_top1", last.get("train_top1"))
    if acc is not None and history and acc <= 1.5 / k:
        warnings.append(f"accuracy {acc:.3f} is at chance level for {k} classes: the model learned nothing; check "
                        "that labels match images (`graft data check`) and try a lower learning rate")
    if len(history) >= 2 and history[-1]["train_loss"] >= history[0]["train_loss"]:
        warnings.append("the training loss did not fall: lower the learning rate or unfreeze more layers")
    best_row = history[pos.best_epoch - 1] if pos.best_epoch and pos.best_epoch <= len(history) else {}
    return {"model": str(model_ref) if model_ref else None, "classes": data.classes,
            "train_images": len(data.train), "val_images": len(data.val) if data.val is not None else 0,
            "epochs": pos.epoch, "iterations": pos.it, "seconds": round(pos.elapsed, 2), "seed": run.seed,
            "world_size": run.ctx.world, "stop_reason": pos.stop_reason or "finished",
            "best_epoch": pos.best_epoch, "best": {k: best_row.get(k) for k in ("val_top1", "val_top5", "train_loss")},
            "last": {k: v for k, v in last.items() if k != "val_detail"},
            "val": last.get("val_detail"), "preprocessing": data.preprocessing, "tuning": run.tuning.summary(),
            "groups": run.tuning.groups(plan.solver.lr, plan.solver.weight_decay),
            "plan": plan.to_dict(), "files": {n: str(run.out / n) for n in ("best.safetensors", "last.safetensors",
                                                                              CHECKPOINT, "log.csv", "curves.png")},
            "warnings": warnings}


def _seed_all(seed: int) -> None:
    import random
    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
