"""The concerns around `fit`'s loop, one small class each (after Lightning's `callbacks/`).

fit calls a hook on every callback, in the order of `default_callbacks`; each reads and updates the
shared `loop.Run` (its `pos` is what a checkpoint saves). The order matters where two share a moment:
the worker tuner times a step before anything else runs after it, the logs are written inside the time
budget's end-of-epoch reserve and the curves outside it, and checkpoint.pt is written last.

    on_fit_start(run)                 set up, resumed; before the first epoch
    on_epoch_start(run)               the sampler is at (pos.epoch, pos.batch)
    on_batch_start(run)               a batch came from the loader (one whose records all failed is skipped)
    on_before_backward(run, loss, x)  run.batch_loss holds the loss's value
    on_batch_end(run)                 the optimiser stepped and pos moved on
    should_stop(run) -> str           after on_batch_end: a reason to end the epoch now ('' to go on)
    on_train_epoch_end(run)           the epoch's batches are done; validation follows
    on_epoch_end(run, row)            validated, pos moved to the next epoch; may set pos.stop_reason
    on_fit_end(run, summary)          before summary.json is written
    teardown(run)                     always, also after an error
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import torch

from .. import package
from ..errors import GraftError
from ..meta import meta_of
from ..progress import make_progress
from . import checkpoint, logs

if TYPE_CHECKING:
    from .loop import Run

DIVERGED = 1e4  # a cross-entropy this large means the logits exploded: stop before saving garbage
PLOT_EVERY = 30.0  # seconds between redraws of curves.png during a run


class RunInterrupted(GraftError):
    """The run was stopped (signal or request); its checkpoint is saved and --resume continues it."""


class Callback:
    """Every hook does nothing; a callback overrides those it needs."""

    def on_fit_start(self, run: Run) -> None: ...
    def on_epoch_start(self, run: Run) -> None: ...
    def on_batch_start(self, run: Run) -> None: ...
    def on_before_backward(self, run: Run, loss: torch.Tensor, x: torch.Tensor) -> None: ...
    def on_batch_end(self, run: Run) -> None: ...
    def should_stop(self, run: Run) -> str: return ""
    def on_train_epoch_end(self, run: Run) -> None: ...
    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, run: Run, summary: dict[str, Any]) -> None: ...
    def teardown(self, run: Run) -> None: ...


class Callbacks:
    """The callbacks of one run, called in order."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def __call__(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def should_stop(self, run: Run) -> bool:
        """The first reason given becomes pos.stop_reason."""
        for cb in self.callbacks:
            reason = cb.should_stop(run)
            if reason:
                run.pos.stop_reason = reason
                return True
        return False


def default_callbacks(run: Run, interrupt_after: int | None = None) -> list[Callback]:
    return [Unfreeze(), NaNGuard(), WorkerTuner(run.plan.data.num_workers, run.cuda), ProgressBar(), EarlyStopping(),
            Packages(), Logs(), MaxIter(), TimeBudget(), Curves(), Checkpoint(interrupt_after)]


class Unfreeze(Callback):
    """The plan's freezing over epochs: tensors thawed on schedule, frozen BatchNorm kept in eval mode."""

    def on_epoch_start(self, run: Run) -> None:
        thawed = run.tuning.set_epoch(run.raw, run.pos.epoch)
        if thawed and run.pos.batch == 0:
            run.say(f"epoch {run.pos.epoch + 1}: unfreezing {len(thawed)} tensors")
        run.tuning.train_mode(run.raw, run.pos.epoch)


class NaNGuard(Callback):
    """A loss that is not finite (or has exploded) ends the run before the step, saying why and what to do."""

    def on_before_backward(self, run: Run, loss: torch.Tensor, x: torch.Tensor) -> None:
        if not math.isfinite(run.batch_loss) or run.batch_loss > DIVERGED:
            raise _diagnose(run, loss, x)


def _diagnose(run: Run, loss: torch.Tensor, x: torch.Tensor) -> GraftError:
    """Why the loss is not finite, as one sentence with the fix."""
    where = f"at epoch {run.pos.epoch + 1}, iteration {run.pos.it + 1}"
    loss = loss.detach()
    ckpt = run.ckpt_path
    kept = f"; the last good checkpoint {ckpt} is intact" if ckpt.exists() else "; no checkpoint was written"
    if not torch.isfinite(x).all():
        return GraftError(f"the loss became {float(loss):.3g} {where} because the input batch holds NaN/Inf "
                          f"values{kept}",
                          "check the images and the preprocessing mean/std (std must not be 0)")
    bad = [n for n, p in run.raw.named_parameters() if not torch.isfinite(p).all()]
    what = f"the weights ({bad[0]}, ...) are no longer finite" if bad else "the logits overflowed"
    return GraftError(f"the loss became {float(loss):.3g} {where} with learning rate {run.lr:g}: {what}, so the "
                      f"learning rate is too high for this model{kept}",
                      f"lower solver.lr (now {run.plan.solver.lr:g}) by 10x or more, or set solver.clip_grad_norm")


class WorkerTuner(Callback):
    """The DataLoader worker count: a number from the plan, or `auto`, chosen by measurement; it makes the loaders.

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

    def on_fit_start(self, run: Run) -> None:
        run.loader, run.val_loader = run.make_loaders(self.workers)

    def on_epoch_start(self, run: Run) -> None:
        self._data = self._step = 0.0
        self._n = -1  # the first batch (worker start-up, lazy initialisation) is not counted
        self._t = time.perf_counter()

    def on_batch_start(self, run: Run) -> None:
        if self.decided:
            return
        now = time.perf_counter()
        if self._n >= 0:
            self._data += now - self._t
        self._t = now

    def on_batch_end(self, run: Run) -> None:
        if self.decided:
            return
        now = time.perf_counter()
        if self._n >= 0:
            self._step += now - self._t
        self._n += 1
        self._t = now

    def on_train_epoch_end(self, run: Run) -> None:
        if self.end_epoch():  # new loaders from the next epoch on; the old workers end first
            run.loader = run.val_loader = None
            run.loader, run.val_loader = run.make_loaders(self.workers)
            if self.note:
                run.say(self.note)

    def on_fit_end(self, run: Run, summary: dict[str, Any]) -> None:
        summary["loading"] = dict(run.loading, workers=self.workers, worker_trials=self.trials)

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


class ProgressBar(Callback):
    """One bar per epoch on the terminal: loss, lr and images per second."""

    def __init__(self):
        self.bar = None

    def on_fit_start(self, run: Run) -> None:
        self.bar = make_progress("img", disable=None if (run.ctx.main and not run.quiet) else True)
        self.bar.start()

    def on_epoch_start(self, run: Run) -> None:
        pos, budget = run.pos, run.budget
        self.task = self.bar.add_task(f"epoch {pos.epoch + 1}" + (f" ({pos.elapsed:.0f}/{budget:.0f} s)" if budget else
                                                                  f"/{pos.epochs}"),
                                      total=run.ipe, completed=pos.batch, rate="")

    def on_batch_end(self, run: Run) -> None:
        pos = run.pos
        speed = self.bar.tasks[-1].speed
        self.bar.update(self.task, advance=1, rate=f"loss {pos.loss_sum / pos.seen:.3f} lr {run.lr:.2g}"
                        + (f" {speed * run.plan.solver.batch_size:.0f} img/s" if speed else ""))

    def on_train_epoch_end(self, run: Run) -> None:
        self.bar.remove_task(self.task)

    def teardown(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.stop()


class EarlyStopping(Callback):
    """The best epoch (validation top-1, else the lowest train loss) for best.safetensors and the summary;
    plan.early_stopping epochs without a better one stop the run."""

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        pos, patience = run.pos, run.plan.early_stopping
        metric = row["val_top1"] if row.get("val_top1") is not None else -row["train_loss"]
        run.improved = pos.best is None or metric > pos.best
        if run.improved:
            pos.best, pos.best_epoch, pos.bad_epochs = metric, pos.epoch, 0
        else:
            pos.bad_epochs += 1
        if patience and pos.bad_epochs >= patience:
            pos.stop_reason = f"early stopping: no improvement for {pos.bad_epochs} epochs"


class Packages(Callback):
    """best.safetensors (when the epoch improved) and last.safetensors, after every epoch."""

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        if run.ctx.main:
            if run.improved:
                self.save(run, "best.safetensors")
            self.save(run, "last.safetensors")

    @staticmethod
    def save(run: Run, name: str) -> None:
        tuning, ref = run.tuning, run.model_ref
        package.save(run.raw, run.out / name, classes=run.data.classes, preprocessing=run.data.preprocessing,
                     provenance={"fine_tuned_from": str(ref) if ref else meta_of(run.raw).get("spec"),
                                 "train_data": str(run.train_ref) if run.train_ref is not None else None},
                     extra={"train": {"epoch": run.pos.epoch, "iteration": run.pos.it, "seed": run.seed,
                                      "head": tuning.head_report},
                            # serving (evaluate/predict/export) then uses the output trained as main
                            **({"main_output": tuning.main_output} if tuning.main_output else {})})


class Logs(Callback):
    """The epoch line on the console, TensorBoard scalars, log.csv, and summary.json with its warnings."""

    def on_fit_start(self, run: Run) -> None:
        # a resumed run's events after its checkpoint are purged: the logs are those of an uninterrupted run
        self.board = logs.Board(run.out / "tb", purge_step=run.pos.it if run.state else None) if run.ctx.main else None

    def on_batch_end(self, run: Run) -> None:
        if self.board:
            self.board.step(run.pos.it, run.batch_loss, run.lr)

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        run.say(_epoch_line(row, run.pos, run.budget))
        if run.ctx.main:
            self.board.epoch(row, run.pos.it)
            logs.write_csv(run.out / "log.csv", run.history)

    def on_fit_end(self, run: Run, summary: dict[str, Any]) -> None:
        if run.ctx.main:
            self.board.close()
            logs.write_json(run.out / "summary.json", summary)
            for w in summary["warnings"]:
                run.say(f"[yellow]warning:[/] {w}")


def _epoch_line(row: dict, pos, budget: float | None = None) -> str:
    s = (f"epoch {row['epoch']}" + ("" if budget else f"/{pos.epochs}")
         + f": train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f}")
    if row.get("val_top1") is not None:
        s += f" | val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
    return s + (f" | {row['seconds']:.0f}/{budget:.0f} s" if budget else f" | {row['seconds']:.0f} s")


class MaxIter(Callback):
    """solver.max_iter: the run's length in iterations (Caffe style) rather than epochs."""

    def should_stop(self, run: Run) -> str:
        most = run.plan.solver.max_iter
        return f"reached max_iter {most}" if most and run.pos.it >= most else ""


class TimeBudget(Callback):
    """plan.time_budget: the lr schedule runs on the fraction of it spent (solver.LRPolicy.factor), and training
    stops early enough for the last epoch's end (validation, packages, logs: the reserve) to end at the budget."""

    def on_batch_start(self, run: Run) -> None:
        if run.budget is not None:  # the reserve counts as unavailable; every rank follows the main one's clock
            run.spent = run.ctx.from_main(run.pos.elapsed / max(1e-9, run.budget - run.pos.reserve))

    def should_stop(self, run: Run) -> str:
        return self._used(run)

    def on_train_epoch_end(self, run: Run) -> None:
        self.ended = run.clock()

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        pos = run.pos
        # the median of the last three ends: one slow save on a busy machine must not eat the budget
        pos.ends = (pos.ends + [run.clock() - self.ended])[-3:]
        pos.reserve = run.ctx.from_main(sorted(pos.ends)[(len(pos.ends) - 1) // 2])
        pos.elapsed = run.elapsed()
        reason = self._used(run, not pos.stop_reason)
        if reason:
            pos.stop_reason = reason

    @staticmethod
    def _used(run: Run, may: bool = True) -> str:
        """The stop reason once the budget less the reserve is spent (on any rank: all stop together)."""
        budget, pos = run.plan.time_budget, run.pos
        if run.ctx.any(may and budget is not None and pos.elapsed >= budget - pos.reserve):
            return f"time budget of {round(budget, 1):g} s used"
        return ""


class Curves(Callback):
    """curves.png, redrawn every PLOT_EVERY seconds and at the end, outside the budget's reserve: drawing it
    after every short epoch would cost more than the epochs."""

    def on_fit_start(self, run: Run) -> None:
        self.plotted = time.monotonic()

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        pos = run.pos
        due = pos.stop_reason or pos.epoch >= pos.epochs or time.monotonic() - self.plotted >= PLOT_EVERY
        if run.ctx.main and due:
            logs.plot_curves(run.out / "curves.png", run.history, title=str(run.model_ref or ""))
            self.plotted = time.monotonic()


class Checkpoint(Callback):
    """checkpoint.pt: every plan.checkpoint_every iterations, after every epoch, and on a stop request (SIGINT or
    SIGTERM, or `interrupt_after` iterations in tests), which then ends the run with RunInterrupted."""

    def __init__(self, interrupt_after: int | None = None):
        self.interrupt_after = interrupt_after
        self.signal: str | None = None
        self.handlers: dict = {}

    def on_fit_start(self, run: Run) -> None:
        # the loop checkpoints at the end of the current iteration and stops; handlers only work on the main thread
        if threading.current_thread() is threading.main_thread():
            self.handlers = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name

    def on_batch_end(self, run: Run) -> None:
        pos, every = run.pos, run.plan.checkpoint_every
        if every and pos.it % every == 0:
            self.save(run)
        asked = self.signal is not None or (self.interrupt_after is not None and pos.it >= self.interrupt_after)
        if run.ctx.any(asked):
            self.save(run)
            why = f"signal {self.signal}" if self.signal else f"a stop after {pos.it} iterations"
            raise RunInterrupted(f"training stopped by {why} at epoch {pos.epoch + 1}, batch {pos.batch}; "
                                 f"checkpoint saved in {run.ckpt_path}", "run again with --resume to continue")

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        self.save(run)

    def teardown(self, run: Run) -> None:
        for s, h in self.handlers.items():
            signal.signal(s, h)
        self.handlers = {}

    @staticmethod
    def save(run: Run) -> None:
        if run.ctx.main:
            scaler = run.scaler
            checkpoint.save(run.ckpt_path, {"model": run.raw.state_dict(), "optimizer": run.opt.state_dict(),
                                            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                                            "position": vars(run.pos).copy(), "history": run.history,
                                            "classes": run.data.classes, "rng": checkpoint.rng_state(),
                                            "seed": run.seed, "plan": run.plan.to_dict(),
                                            # a run of another loop (tasks.train) adds what its resume needs
                                            **(run.extra_state() if hasattr(run, "extra_state") else {})})
        run.ctx.barrier()
