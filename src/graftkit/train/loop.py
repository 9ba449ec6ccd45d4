"""`fit`: fine-tune a model under a plan, with checkpoints that resume exactly.

Per epoch: shuffled batches (order and augmentations fixed by the seed), the
plan's losses, the NaN/Inf guard, validation (top-1/top-5, per-class accuracy,
confusion matrix), the best and last packages, the checkpoint, the logs. A stop
(SIGINT/SIGTERM, or `interrupt_after` in tests) writes a mid-epoch checkpoint
first; `resume=True` continues from it and ends with the same weights, bit for
bit, as the uninterrupted run (CPU, same seed and thread count).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .. import package
from ..errors import GraftError
from ..meta import meta_of
from ..models import resolve
from ..progress import make_progress
from ..tune import Plan, Tuning, apply
from . import checkpoint, logs
from .data import RunData, open_run_data
from .distributed import context
from .metrics import Meter
from .sampling import EpochBatches, Seeded
from .solver import LRPolicy, make_optimizer

CHECKPOINT = "checkpoint.pt"
DIVERGED = 1e4  # a cross-entropy this large means the logits exploded: stop before saving garbage


PLOT_EVERY = 30.0  # seconds between redraws of curves.png during a run


class RunInterrupted(GraftError):
    """The run was stopped (signal or request); its checkpoint is saved and --resume continues it."""


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
    plan = plan or Plan.load()
    if epochs is not None:
        plan.solver.epochs = int(epochs)
    if time_budget is not None:
        plan.time_budget = float(time_budget)
    plan.validate()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    ctx = context(device)
    say = log or (lambda msg: make_progress().console.print(msg) if ctx.main and not quiet else None)
    if resume:
        state = checkpoint.load(ckpt_path)
    else:
        if ckpt_path.exists():
            raise GraftError(f"{out} already holds a training run ({CHECKPOINT})",
                             "pass --resume to continue it, or choose another output folder")
        state = None

    _seed_all(seed)
    model_ref = model if isinstance(model, (str, os.PathLike)) else None
    module = resolve(model, trust=trust)
    data: RunData = open_run_data(train, val, plan, meta_of(module), classes=classes, seed=seed)
    k = len(data.classes)
    module, tuning = apply(module, plan, data.classes)
    raw = module
    cuda = ctx.device.type == "cuda"
    raw.to(ctx.device)
    if cuda and plan.solver.channels_last:
        raw.to(memory_format=torch.channels_last)
    groups = tuning.param_groups(raw, plan.solver.lr, plan.solver.weight_decay)
    opt = make_optimizer(groups, plan.solver)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and plan.solver.amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=plan.solver.label_smoothing)

    loading = _decode_once(data, plan, ctx, say, None if (ctx.main and not quiet) else False)
    sampler = EpochBatches(len(data.train), plan.solver.batch_size, seed, labels=data.train_labels,
                           balanced=plan.data.balanced, rank=ctx.rank, world=ctx.world)
    tuner = WorkerTuner(plan.data.num_workers, cuda)
    val_batches = None
    if data.val is not None:
        # the same (seeded) samples at every validation, whoever draws them
        val_batches = EpochBatches(len(data.val), max(64, plan.solver.batch_size), seed, shuffle=False, keep_all=True)

    def make_loaders(workers: int):
        # persistent workers: started once, not at every epoch (set_epoch reaches them through shared memory)
        train_loader = DataLoader(Seeded(data.train, seed), batch_sampler=sampler, num_workers=workers,
                                  collate_fn=_collate, pin_memory=cuda, generator=torch.Generator(),
                                  persistent_workers=workers > 0,
                                  multiprocessing_context="spawn" if workers and cuda else None)
        val = None
        if val_batches is not None:
            val = DataLoader(Seeded(data.val, seed), batch_sampler=val_batches, num_workers=workers,
                             collate_fn=_collate, generator=torch.Generator(), persistent_workers=workers > 0,
                             multiprocessing_context="spawn" if workers and cuda else None)
        return train_loader, val

    loader, val_loader = make_loaders(tuner.workers)
    ipe = len(sampler.batches(0))
    if ipe == 0:
        raise GraftError("the training data gives no batch", "add images or lower solver.batch_size")
    pos = Position()
    max_iter = plan.solver.max_iter
    pos.epochs = math.ceil(max_iter / ipe) if max_iter else plan.solver.epochs
    if state is not None:
        raw.load_state_dict(state["model"])
        if state["plan"]["solver"]["optimizer"] == plan.solver.optimizer:
            opt.load_state_dict(state["optimizer"])
        else:
            say(f"the optimizer changed from {state['plan']['solver']['optimizer']} to {plan.solver.optimizer}: "
                "its state starts afresh")
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        pos = Position(**state["position"])
        if not max_iter and plan.solver.epochs != state["plan"]["solver"]["epochs"]:
            pos.epochs = plan.solver.epochs  # the user asked for a longer (or shorter) run
            pos.stop_reason = ""
        history = list(state["history"])
        if state.get("classes") != data.classes:
            raise GraftError(f"{ckpt_path}: the checkpoint was trained on other classes than this data",
                             "resume with the same --train data")
    else:
        history = []
    total_iters = max_iter or pos.epochs * ipe
    policy = LRPolicy(plan.solver, ipe, total_iters)
    # With a time budget the schedule runs on the fraction of it spent (solver.LRPolicy.factor), and
    # training stops early enough for the last epoch's validation to end at the budget.
    budget = plan.time_budget if plan.time_budget and not max_iter else None
    net: nn.Module = raw
    if ctx.active:
        net = nn.parallel.DistributedDataParallel(raw, device_ids=[ctx.device.index] if cuda else None,
                                                  find_unused_parameters=bool(plan.unfreeze or plan.stop_gradient))
    board = logs.Board(out / "tb", purge_step=pos.it if state else None) if ctx.main else None
    normalize = data.normalize.to(ctx.device) if isinstance(data.normalize, nn.Module) else data.normalize
    stop = {"signal": None}

    def save_checkpoint() -> None:
        if ctx.main:
            checkpoint.save(ckpt_path, {"model": raw.state_dict(), "optimizer": opt.state_dict(),
                                        **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                                        "position": vars(pos).copy(), "history": history, "classes": data.classes,
                                        "rng": checkpoint.rng_state(), "seed": seed, "plan": plan.to_dict()})
        ctx.barrier()

    def save_package(name: str) -> Path:
        return package.save(raw, out / name, classes=data.classes, preprocessing=data.preprocessing,
                            provenance={"fine_tuned_from": str(model_ref) if model_ref else meta_of(raw).get("spec"),
                                        "train_data": str(train) if isinstance(train, (str, os.PathLike)) else None},
                            extra={"train": {"epoch": pos.epoch, "iteration": pos.it, "seed": seed,
                                             "head": tuning.head_report},
                                   # serving (evaluate/predict/export) then uses the output trained as main
                                   **({"main_output": tuning.main_output} if tuning.main_output else {})})

    if state is not None:
        checkpoint.set_rng_state(state["rng"])
        say(f"resuming {out} at epoch {pos.epoch + 1}, batch {pos.batch} (iteration {pos.it})")
    out.mkdir(parents=True, exist_ok=True)
    progress = make_progress("img", disable=None if (ctx.main and not quiet) else True)
    amp = torch.autocast("cuda", dtype=torch.float16) if scaler.is_enabled() else contextlib.nullcontext()
    if plan.budget_clock == "cpu":  # CPU seconds per thread: the same run costs the same on a busy machine
        threads = torch.get_num_threads()
        clock = lambda: time.process_time() / threads  # noqa: E731
    else:
        clock = time.perf_counter
    t_start = clock() - pos.elapsed
    plotted = time.monotonic()

    with _signals(stop), progress:
        while pos.epoch < pos.epochs and not pos.stop_reason:
            epoch = pos.epoch
            thawed = tuning.set_epoch(raw, epoch)
            if thawed and pos.batch == 0:
                say(f"epoch {epoch + 1}: unfreezing {len(thawed)} tensors")
            tuning.train_mode(raw, epoch)
            sampler.set_epoch(epoch, pos.batch)
            if hasattr(data.train, "set_epoch"):  # the dataset's own per-epoch augmentation draws
                data.train.set_epoch(epoch)
            task = progress.add_task(f"epoch {epoch + 1}" + (f" ({pos.elapsed:.0f}/{budget:.0f} s)" if budget else
                                                             f"/{pos.epochs}"), total=ipe, completed=pos.batch, rate="")
            tuner.start_epoch()
            for batch in loader:
                tuner.got_batch()
                if batch is None:
                    pos.batch += 1
                    continue
                x, y = batch
                spent = _spent(pos, budget)
                lr = policy.apply(opt, pos.it, None if spent is None else ctx.from_main(spent))
                _check_labels(y, k, data, epoch, pos.it)  # on the host: no device sync
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                if normalize is not None:
                    x = normalize(x)
                if cuda and plan.solver.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp:
                    outputs = net(x)
                    loss, main, parts = tuning.loss(outputs, y, criterion)
                value = float(loss.detach())  # read once: on a GPU each read waits for the step
                if not math.isfinite(value) or value > DIVERGED:
                    raise _diagnose(loss, x, raw, lr, plan, epoch, pos, ckpt_path)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if plan.solver.clip_grad_norm:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                             plan.solver.clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                pos.it += 1
                pos.batch += 1
                pos.loss_sum += value * len(y)
                pos.correct += int((main.detach().argmax(1) == y).sum())
                pos.seen += len(y)
                pos.elapsed = clock() - t_start
                tuner.stepped()
                if board:
                    board.step(pos.it, value, lr)
                speed = progress.tasks[-1].speed
                progress.update(task, advance=1, rate=f"loss {pos.loss_sum / pos.seen:.3f} lr {lr:.2g}"
                                + (f" {speed * plan.solver.batch_size:.0f} img/s" if speed else ""))
                if plan.checkpoint_every and pos.it % plan.checkpoint_every == 0:
                    save_checkpoint()
                asked = stop["signal"] is not None or (interrupt_after is not None and pos.it >= interrupt_after)
                if ctx.any(asked):
                    save_checkpoint()
                    why = f"signal {stop['signal']}" if stop["signal"] else f"a stop after {pos.it} iterations"
                    raise RunInterrupted(f"training stopped by {why} at epoch {epoch + 1}, batch {pos.batch}; "
                                         f"checkpoint saved in {ckpt_path}", "run again with --resume to continue")
                if max_iter and pos.it >= max_iter:
                    pos.stop_reason = f"reached max_iter {max_iter}"
                    break
                if ctx.any(plan.time_budget is not None and pos.elapsed >= plan.time_budget - pos.reserve):
                    pos.stop_reason = f"time budget of {plan.time_budget:g} s used"
                    break
            progress.remove_task(task)
            if tuner.end_epoch():  # the measured worker count changed: new loaders from the next epoch on
                del loader, val_loader
                loader, val_loader = make_loaders(tuner.workers)
                if tuner.note:
                    say(tuner.note)
            ended = clock()
            if ctx.active:
                ctx.average_buffers(raw)
            row = _end_epoch(pos, history, net, raw, tuning, val_loader, normalize, criterion, data, ctx, opt, cuda)
            pos.elapsed = clock() - t_start
            row["seconds"] = history[-1]["seconds"] = round(pos.elapsed, 2)
            say(_epoch_line(row, pos, budget))
            metric = row["val_top1"] if row.get("val_top1") is not None else -row["train_loss"]
            improved = pos.best is None or metric > pos.best
            if improved:
                pos.best, pos.best_epoch, pos.bad_epochs = metric, epoch + 1, 0
            else:
                pos.bad_epochs += 1
            pos.epoch, pos.batch = epoch + 1, 0
            pos.loss_sum, pos.correct, pos.seen = 0.0, 0, 0
            if plan.early_stopping and pos.bad_epochs >= plan.early_stopping:
                pos.stop_reason = f"early stopping: no improvement for {pos.bad_epochs} epochs"
            if ctx.main:
                if improved:
                    save_package("best.safetensors")
                save_package("last.safetensors")
                board.epoch(row, pos.it)
                logs.write_csv(out / "log.csv", history)
            # the median of the last three ends: one slow save on a busy machine must not eat the budget
            pos.ends = (pos.ends + [clock() - ended])[-3:]
            pos.reserve = ctx.from_main(sorted(pos.ends)[(len(pos.ends) - 1) // 2])
            pos.elapsed = clock() - t_start
            if ctx.any(plan.time_budget is not None and not pos.stop_reason
                       and pos.elapsed >= plan.time_budget - pos.reserve):
                pos.stop_reason = f"time budget of {plan.time_budget:g} s used"
            # The picture is redrawn every PLOT_EVERY seconds and at the end, outside the measured reserve:
            # drawing it after every short epoch would cost more than the epochs.
            if ctx.main and (pos.stop_reason or pos.epoch >= pos.epochs or time.monotonic() - plotted >= PLOT_EVERY):
                logs.plot_curves(out / "curves.png", history, title=str(model_ref or ""))
                plotted = time.monotonic()
            save_checkpoint()
    summary = _summary(pos, history, data, tuning, plan, seed, model_ref, out, ctx)
    summary["loading"] = dict(loading, workers=tuner.workers, worker_trials=tuner.trials)
    if ctx.main:
        board.close()
        logs.write_json(out / "summary.json", summary)
        for w in summary["warnings"]:
            say(f"[yellow]warning:[/] {w}")
    ctx.barrier()
    return summary


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


class WorkerTuner:
    """The DataLoader worker count: a number from the plan, or `auto`, chosen by measurement.

    `auto` runs the first epoch in-process (0 workers) and times, per batch, the wait for data and the step
    (forward, backward, optimiser). Workers can at best hide the wait, and on a CPU they take cores from the
    step's own threads, so: while data is under 10% of a batch's time (cached small data on a CPU, typically),
    0 workers stay. Otherwise the candidate is ceil(data / step) workers (each makes one batch per `data`
    seconds, the step takes one per `step`), at least 1, at most 8 and, on a CPU, at most the CPUs less one
    (the step keeps a core). On a GPU the candidate is kept; on a CPU it is tried for one epoch and kept only if
    its batches were >= 3% faster than in-process ones. The choice changes no sample (seeding is per sample)."""

    SHARE, GAIN, MOST = 0.10, 0.97, 8

    def __init__(self, setting, cuda: bool):
        self.auto = setting == "auto"
        self.workers = 0 if self.auto else int(setting)
        self.cuda = cuda
        self.decided = not self.auto
        self.trials: dict[int, float] = {}  # workers -> seconds per batch
        self.note = ""
        self._data = self._step = 0.0
        self._n = 0
        self._t = 0.0

    def start_epoch(self) -> None:
        self._data = self._step = 0.0
        self._n = -1  # the first batch (worker start-up, lazy initialisation) is not counted
        self._t = time.perf_counter()

    def got_batch(self) -> None:
        if self.decided:
            return
        now = time.perf_counter()
        if self._n >= 0:
            self._data += now - self._t
        self._t = now

    def stepped(self) -> None:
        if self.decided:
            return
        now = time.perf_counter()
        if self._n >= 0:
            self._step += now - self._t
        self._n += 1
        self._t = now

    def end_epoch(self) -> bool:
        """Whether the worker count changed for the next epoch."""
        if self.decided or self._n < 3:
            return False
        per_batch = (self._data + self._step) / self._n
        self.trials[self.workers] = round(per_batch, 4)
        if self.workers == 0 and len(self.trials) == 1:
            data, step = self._data / self._n, self._step / self._n
            w = choose_workers(data, step, self.cuda)
            if w == 0:
                self.decided = True
                return False
            self.workers, self.decided = w, self.cuda
            self.note = (f"data loading takes {1e3 * data:.0f} ms a batch against {1e3 * step:.0f} ms for the step: "
                         f"{'using' if self.cuda else 'trying'} {w} worker process{'es' if w > 1 else ''}")
            return True
        self.decided = True
        if per_batch < self.GAIN * self.trials[0]:
            self.note = ""
            return False
        self.note = f"{self.workers} workers were not faster ({1e3 * per_batch:.0f} ms a batch): loading in-process"
        self.workers = 0
        return True


def choose_workers(data_s: float, step_s: float, cuda: bool, cpus: int | None = None) -> int:
    """The worker count WorkerTuner tries for a measured in-process wait for data and step time per batch."""
    if data_s <= WorkerTuner.SHARE * (data_s + step_s):
        return 0
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            cpus = os.cpu_count() or 1
    most = min(WorkerTuner.MOST, cpus if cuda else cpus - 1)
    return max(0, min(most, max(1, math.ceil(data_s / max(step_s, 1e-6)))))


def _end_epoch(pos, history, net, raw, tuning: Tuning, val_loader, normalize, criterion, data: RunData, ctx, opt, cuda):
    row = {"epoch": pos.epoch + 1, "iteration": pos.it, "lr": opt.param_groups[0]["lr"] / opt.param_groups[0].get(
        "lr_mult", 1.0), "train_loss": pos.loss_sum / max(1, pos.seen), "train_top1": pos.correct / max(1, pos.seen)}
    if ctx.active:  # average the epoch's train figures over ranks
        t = torch.tensor([pos.loss_sum, pos.correct, pos.seen], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        row["train_loss"], row["train_top1"] = float(t[0] / max(1, t[2])), float(t[1] / max(1, t[2]))
    if val_loader is not None:
        res = evaluate(raw, val_loader, len(data.classes), normalize, criterion, tuning, ctx.device, data.classes)
        row.update(val_loss=res["loss"], val_top1=res["top1"], val_top5=res["top5"], val=res)
    history.append({k: v for k, v in row.items() if k != "val"} | ({"val_detail": {
        "per_class": row["val"]["per_class"], "confusion": row["val"]["confusion"]}} if "val" in row else {}))
    return row


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, normalize=None, criterion=None, tuning: Tuning | None = None,
             device: torch.device | str = "cpu", classes: list[str] | None = None) -> dict[str, Any]:
    """Top-1/top-5, loss, per-class accuracy and confusion matrix of `model` over a loader."""
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
        out = model(x)
        logits = tuning.outputs(out)[0] if tuning else out
        meter.update(logits, y, float(criterion(logits.float(), y)) if criterion else None)
    model.train(was)
    return meter.result(classes)


def _check_labels(y: torch.Tensor, k: int, data: RunData, epoch: int, it: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        bad = int(y.max()) if int(y.max()) >= k else int(y.min())
        raise GraftError(f"a training label is {bad} but there are {k} classes (labels must be 0..{k - 1}); "
                         f"seen at epoch {epoch + 1}, iteration {it}",
                         "renumber the labels of the list from 0 (`graft data check` finds them)")


def _diagnose(loss, x, model, lr, plan: Plan, epoch: int, pos: Position, ckpt: Path) -> GraftError:
    """Why the loss is not finite, as one sentence with the fix."""
    where = f"at epoch {epoch + 1}, iteration {pos.it + 1}"
    loss = loss.detach()
    kept = f"; the last good checkpoint {ckpt} is intact" if ckpt.exists() else "; no checkpoint was written"
    if not torch.isfinite(x).all():
        return GraftError(f"the loss became {float(loss):.3g} {where} because the input batch holds NaN/Inf values{kept}",
                          "check the images and the preprocessing mean/std (std must not be 0)")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    what = f"the weights ({bad[0]}, ...) are no longer finite" if bad else "the logits overflowed"
    return GraftError(f"the loss became {float(loss):.3g} {where} with learning rate {lr:g}: {what}, so the learning "
                      f"rate is too high for this model{kept}",
                      f"lower solver.lr (now {plan.solver.lr:g}) by 10x or more, or set solver.clip_grad_norm")


def _spent(pos: Position, budget: float | None) -> float | None:
    """The fraction of a time budget spent, counting the end-of-epoch reserve as unavailable."""
    return None if budget is None else pos.elapsed / max(1e-9, budget - pos.reserve)


def _epoch_line(row: dict, pos: Position, budget: float | None = None) -> str:
    s = (f"epoch {row['epoch']}" + ("" if budget else f"/{pos.epochs}")
         + f": train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f}")
    if row.get("val_top1") is not None:
        s += f" | val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
    return s + (f" | {row['seconds']:.0f}/{budget:.0f} s" if budget else f" | {row['seconds']:.0f} s")


def _summary(pos: Position, history, data: RunData, tuning: Tuning, plan: Plan, seed: int, model_ref, out: Path,
             ctx) -> dict[str, Any]:
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
            "epochs": pos.epoch, "iterations": pos.it, "seconds": round(pos.elapsed, 2), "seed": seed,
            "world_size": ctx.world, "stop_reason": pos.stop_reason or "finished",
            "best_epoch": pos.best_epoch, "best": {k: best_row.get(k) for k in ("val_top1", "val_top5", "train_loss")},
            "last": {k: v for k, v in last.items() if k != "val_detail"},
            "val": last.get("val_detail"), "preprocessing": data.preprocessing, "tuning": tuning.summary(),
            "groups": tuning.groups(plan.solver.lr, plan.solver.weight_decay),
            "plan": plan.to_dict(), "files": {n: str(out / n) for n in ("best.safetensors", "last.safetensors",
                                                                          CHECKPOINT, "log.csv", "curves.png")},
            "warnings": warnings}


def _seed_all(seed: int) -> None:
    import random
    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _signals(stop: dict):
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the current iteration and stops."""
    def handler(signum, _frame):
        if stop["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        stop["signal"] = signal.Signals(signum).name

    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
