"""Train and evaluate a segmenter or a detector under a graftkit plan.

The plan is the classification plan (tune.Plan): optimizer, lr policy, warm-up, weight decay,
freeze / lr_mult / decay_mult / layer_decay / unfreeze / stop_gradient patterns (over names such
as `backbone.body.blocks.0` for a segmenter, `model.backbone.fb.body.blocks.0` for a detector, or
the keywords `head` / `body`), batch size, epochs and time budget, applied by the same tune.apply
and train.solver code. The loop itself is this module's (classification's `train.loop.fit` is built
around (image, label) batches, top-1 metrics and classifier packages), but what surrounds it is
classification's: the batch order and per-sample augmentation seeding (train.sampling, data.seeding),
the checkpoint and its exact resume, the time budget, max_iter, the NaN guard, unfreezing and the
progress bar are train.callbacks' classes, run on a `DenseRun` that has the attributes they read.
Not here: DDP, AMP, early stopping (plan.early_stopping is ignored), best-epoch packages.

Time budget: as in classification, the whole run counts (validation included, its duration kept in
reserve before the budget's end); a decaying lr policy follows the spent fraction of the budget.
`train_seconds` in the summary counts only loading the batches and the steps.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.seeding import Seeded
from ..errors import GraftError
from ..train import checkpoint, logs
from ..train.callbacks import (PLOT_EVERY, Callback, Callbacks, Checkpoint, MaxIter, NaNGuard, ProgressBar, TimeBudget,
                               Unfreeze)
from ..train.distributed import Context
from ..train.loop import Position
from ..train.sampling import EpochBatches
from ..train.solver import LRPolicy, make_optimizer
from ..tune import Plan, apply
from . import data as tdata
from .backbone import DEFAULT_STRIDES, backbone as make_backbone
from .heads import Detector, make as make_head, transfer_report
from .metrics import ConfusionMeter, coco_map

TASKS = ("segment", "detect")
WEIGHTS = "model.safetensors"


def task_plan(**overrides: Any) -> Plan:
    """The default plan for dense tasks on a CPU: AdamW lr 1e-3, cosine, batch 8, head at the body's lr."""
    base = {"solver": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "epochs": 10,
                       "warmup_epochs": 0.5, "policy": "cosine"}, "head_lr_mult": 1.0}
    plan = Plan.from_dict(base, "task plan")
    for k, v in overrides.items():
        if v is not None:
            target = plan.solver if hasattr(plan.solver, k) else plan
            if not hasattr(target, k):
                raise GraftError(f"task plan: {k!r} is not a plan or solver setting", "see `graft plan show`")
            setattr(target, k, v)
    plan.validate()
    return plan


def build(task: str, model: str | os.PathLike | nn.Module, num_classes: int, *, pretrained: bool = True,
          size: int = 128, seed: int = 0, width: int = 64, strides=None, trust: bool = False,
          head: str | None = None) -> nn.Module:
    """A segmenter (num_classes includes background) or a detector (num_classes objects) on `model`, with the
    named head (heads.make: fpn | deeplabv3, fcos | retinanet | fasterrcnn; None: fpn / fcos).
    The new layers are initialised from `seed` after the backbone is built, so a pretrained and a
    random-init backbone get the same head."""
    if task not in TASKS:
        raise GraftError(f"task {task!r} is not known", f"use one of {', '.join(TASKS)}")
    fb = make_backbone(model, pretrained=pretrained, strides=strides or DEFAULT_STRIDES, trust=trust)
    torch.manual_seed(seed)
    net = make_head(task, fb, num_classes, head, size=size, width=width)
    net.build_args = {"task": task, "model": str(model) if isinstance(model, (str, os.PathLike)) else None,
                      "num_classes": num_classes, "size": size, "width": width, "strides": fb.strides,
                      "pretrained": pretrained, "head": net.head_name}
    return net


# -- data ------------------------------------------------------------------------------------------------------
def open_boxes(path: str | os.PathLike, *, fix: bool = True, say: Callable[[str], None] = print) -> tdata.Boxes:
    """A detection set from a COCO JSON, a folder holding annotations.json, a VOC XML folder or a YOLO
    folder (images/ + labels/). Fatal problems stop with one line; with `fix`, degenerate boxes are dropped
    and out-of-bounds ones clipped first (and said)."""
    p = Path(path)
    if p.is_dir() and (p / "annotations.json").is_file():
        p = p / "annotations.json"
    if p.is_file() and p.suffix == ".json":
        boxes, issues = tdata.read_coco(p)
    elif p.is_dir() and (p / "instances").is_dir() and (p / "images").is_dir():
        from .instances import read_instances
        boxes, issues = read_instances(p)
    elif p.is_dir() and any(p.glob("*.xml")):
        boxes, issues = tdata.read_voc(p)
    elif p.is_dir() and (p / "images").is_dir() and (p / "labels").is_dir():
        boxes, issues = tdata.read_yolo(p / "images", p / "labels")
    else:
        raise GraftError(f"{path}: not a detection set", "give a COCO .json, a folder with annotations.json, "
                         "a VOC folder of .xml files, a YOLO folder with images/ and labels/, or an "
                         "instance-mask folder with images/ and instances/")
    if fix:
        box_problems = {"degenerate", "out_of_bounds"}
        done = tdata.clean_boxes(boxes)
        if done["clipped"] or done["dropped"]:
            say(f"{path}: {done['clipped']} boxes clipped to their image, {done['dropped']} without area dropped "
                "(`graft data check` lists them)")
        issues = [i for i in issues if i.problem not in box_problems]
    tdata.raise_fatal(issues, str(path))
    return boxes


def _fill_sizes(boxes: tdata.Boxes) -> None:
    for rec in boxes.images:
        if not rec["width"] or not rec["height"]:
            rec["width"], rec["height"] = tdata._image_size(boxes.root / rec["file"])


def open_masks(path: str | os.PathLike, size: int, train: bool, classes: list[str] | None = None):
    classes = classes or tdata.read_classes(path)
    from .instances import InstanceMaskFolder, is_instance_folder
    kind = InstanceMaskFolder if is_instance_folder(path) and not (Path(path) / "masks").is_dir() else tdata.MaskFolder
    ds = kind(path, size=size, train=train, num_classes=len(classes) if classes else None)
    if classes is None and getattr(ds, "instance_classes", None):
        classes = ds.instance_classes
        ds.num_classes = len(classes)
    if classes is None:
        top = max(int(v) for i in range(len(ds)) for v in set(ds.read_mask(i).ravel().tolist()) if v != tdata.IGNORE)
        classes = ["background"] + [f"class{k}" for k in range(1, top + 1)]
        ds.num_classes = len(classes)
    return ds, classes


# -- evaluation ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_segmenter(model: nn.Module, ds, classes: list[str], batch_size: int = 16) -> dict[str, Any]:
    was = model.training
    model.eval()
    meter = ConfusionMeter(len(classes), tdata.IGNORE)
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        meter.update(model(x), y)
    model.train(was)
    return meter.result(classes)


@torch.no_grad()
def predict_boxes(model: Detector, ds: tdata.BoxSet, batch_size: int = 16) -> list[dict]:
    """Detections in each image's original pixel frame: [{"image_id", "boxes", "scores", "labels"}]."""
    was = model.training
    model.eval()
    _fill_sizes(ds.boxes)
    out = []
    for start in range(0, len(ds), batch_size):
        idx = range(start, min(len(ds), start + batch_size))
        xs = [ds[i][0] for i in idx]
        for i, x, det in zip(idx, xs, model(xs)):
            rec = ds.boxes.images[i]
            sx, sy = rec["width"] / x.shape[-1], rec["height"] / x.shape[-2]
            b = det["boxes"] * torch.tensor([sx, sy, sx, sy])
            out.append({"image_id": rec["id"], "boxes": b.numpy(), "scores": det["scores"].numpy(),
                        "labels": det["labels"].numpy()})
    model.train(was)
    return out


def evaluate_detector(model: Detector, ds: tdata.BoxSet, classes: list[str] | None = None) -> dict[str, Any]:
    """COCO mAP on `ds`; `classes` (the model's, when they are in another order than the data's) maps the
    model's labels to the data's by name."""
    dets = predict_boxes(model, ds)
    b = ds.boxes
    if classes is not None and classes != b.classes:
        to_data = torch.tensor([b.classes.index(c) if c in b.classes else -1 for c in classes])
        for d in dets:
            lab = to_data[torch.as_tensor(d["labels"], dtype=torch.long)].numpy()
            keep = lab >= 0                      # a class the data does not have has no ground truth to match
            d.update(boxes=d["boxes"][keep], scores=d["scores"][keep], labels=lab[keep])
    return coco_map(b.images, dets, b.category_ids, b.classes)


def evaluate_task(model: str | os.PathLike, data: str | os.PathLike, *, trust: bool = False,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A saved task model on `data`: a segmenter on a mask folder (mIoU, per-class IoU, the ignore index), a
    detector on a COCO/VOC/YOLO set (COCO AP, AP50, AP75, per class). Classes are matched by name."""
    net = load(model, trust=trust)
    size = net.build_args["size"]
    if net.task == "segment":
        data_classes = tdata.read_classes(data)
        if data_classes is not None and data_classes != net.classes:
            raise GraftError(f"{data}: its classes.txt {data_classes[:6]} differs from the model's {net.classes[:6]}",
                             "mask values must mean the classes the model was trained on, in its order")
        ds = open_masks(data, size, False, net.classes)[0]
        result = evaluate_segmenter(net, ds, net.classes)
    else:
        boxes = open_boxes(data, say=log or (lambda m: None))   # out-of-bounds boxes clipped, as in training
        unknown = [c for c in boxes.classes if c not in net.classes]
        if unknown:
            raise GraftError(f"{data}: classes {unknown[:5]} are not among the model's {net.classes[:6]}",
                             "evaluate on data annotated with the classes the model was trained on")
        result = evaluate_detector(net, tdata.BoxSet(boxes, size, train=False), net.classes)
    return {"task": net.task, "model": str(model), "data": str(data), "images": len(ds) if net.task == "segment"
            else len(boxes.images), "classes": net.classes, **result}


# -- training --------------------------------------------------------------------------------------------------
CHECKPOINT = "checkpoint.pt"
SEG_COLUMNS = ("epoch", "iteration", "lr", "train_loss", "val_miou", "val_pixel_accuracy", "seconds", "train_seconds")
DET_COLUMNS = ("epoch", "iteration", "lr", "train_loss", "val_ap", "val_ap50", "val_ap75", "seconds", "train_seconds")


@dataclass(eq=False)
class DenseRun:
    """What the dense loop shares with train.callbacks: the attributes of train.loop.Run those callbacks read
    (checkpoint, time budget, max_iter, NaN guard, unfreezing, progress), so they are reused as they are."""
    task: str
    plan: Plan
    out: Path | None
    ctx: Context
    say: Callable[[str], None]
    quiet: bool | None
    seed: int
    state: dict | None
    data: Any                   # .classes (what a checkpoint is checked against)
    tuning: Any
    raw: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ipe: int
    clock: Callable[[], float]
    pos: Position = field(default_factory=Position)
    history: list = field(default_factory=list)
    policy: LRPolicy | None = None
    t_start: float = 0.0
    lr: float = 0.0
    batch_loss: float = 0.0
    spent: float | None = None
    train_seconds: float = 0.0  # loading the batches and the steps only (benchmarks/dense_step.py reads it)
    size: int = 128

    cuda = False

    @property
    def budget(self) -> float | None:
        return self.plan.time_budget if self.plan.time_budget and not self.plan.solver.max_iter else None

    @property
    def ckpt_path(self) -> Path:
        return (self.out or Path(".")) / CHECKPOINT

    def elapsed(self) -> float:
        return self.clock() - self.t_start

    def extra_state(self) -> dict[str, Any]:
        """What train.callbacks.Checkpoint adds to checkpoint.pt for a dense run's resume."""
        return {"task": self.task, "size": self.size, "train_seconds": self.train_seconds}


class DenseLogs(Callback):
    """The epoch line, log.csv (loss, lr, mAP or mIoU per epoch) and curves.png, rewritten whole from the history,
    so a resumed run's files are those of an uninterrupted one. curves.png is redrawn every PLOT_EVERY seconds
    (drawing costs ~1 s, more than a short epoch) and once at the end of the run."""

    def on_fit_start(self, run: DenseRun) -> None:
        self.plotted = time.monotonic()

    def on_epoch_end(self, run: DenseRun, row: dict[str, Any]) -> None:
        run.say(_line(run.task, row))
        if run.out is not None:
            due = time.monotonic() - self.plotted >= PLOT_EVERY
            write_logs(run.out, run.task, run.history, curves=due)
            if due:
                self.plotted = time.monotonic()


def write_logs(out: Path, task: str, history: list[dict], curves: bool = True) -> None:
    logs.write_csv(out / "log.csv", history, SEG_COLUMNS if task == "segment" else DET_COLUMNS)
    if not curves:
        return
    metrics = ({"validation mIoU": "val_miou", "validation pixel accuracy": "val_pixel_accuracy"} if task == "segment"
               else {"validation AP50": "val_ap50", "validation AP": "val_ap", "validation AP75": "val_ap75"})
    logs.plot_curves(out / "curves.png", history, title=task, metrics=metrics,
                     metric_title="mIoU" if task == "segment" else "COCO AP")


def fit_task(task: str, model: str | os.PathLike | nn.Module, train: str | os.PathLike,
             val: str | os.PathLike | None = None, *, out_dir: str | os.PathLike | None = None,
             plan: Plan | None = None, seed: int = 0, epochs: int | None = None, time_budget: float | None = None,
             size: int = 128, pretrained: bool = True, val_every: int = 1, trust: bool = False,
             log: Callable[[str], None] | None = None, max_iter: int | None = None, resume: bool = False,
             interrupt_after: int | None = None, quiet: bool | None = True, head: str | None = None) -> dict[str, Any]:
    """Train a `task` model with backbone `model` on `train` (mask folder / detection set); returns the summary.

    With out_dir: OUT/model.safetensors (weights + build arguments), OUT/transfer.json (where every tensor came
    from), OUT/checkpoint.pt (after every epoch, every plan.checkpoint_every iterations and on SIGINT/SIGTERM;
    `resume=True` continues it and ends with the same weights, bit for bit, as an uninterrupted run on the same
    thread count), OUT/log.csv, OUT/curves.png and OUT/summary.json. val_every=0 validates only at the end.
    The batch order and each sample's augmentation follow from (seed, epoch, index), as in classification."""
    say = log or (lambda m: None)
    plan = plan or task_plan()
    if epochs is not None:
        plan.solver.epochs = int(epochs)
    if time_budget is not None:
        plan.time_budget = float(time_budget)
    if max_iter is not None:
        plan.solver.max_iter = int(max_iter)
    plan.validate()
    out = Path(out_dir) if out_dir else None
    state = None
    if resume:
        if out is None:
            raise GraftError("resume needs the run folder", "pass out_dir (--out) of the run to continue")
        state = checkpoint.load(out / CHECKPOINT)
        if state.get("task") != task:
            raise GraftError(f"{out / CHECKPOINT}: the checkpoint is of a {state.get('task') or 'classification'} run, "
                             f"not --task {task}", f"resume with --task {state.get('task') or 'classify'}")
    elif out is not None and ((out / WEIGHTS).exists() or (out / CHECKPOINT).exists()):
        raise GraftError(f"{out} already holds a training run ({WEIGHTS} or {CHECKPOINT})",
                         "pass --resume to continue it, or choose another output folder")
    torch.manual_seed(seed)
    if task == "segment":
        train_ds, classes = open_masks(train, size, True)
        val_ds = open_masks(val, size, False, classes)[0] if val else None
        num_classes, collate = len(classes), None
    elif task == "detect":
        boxes = open_boxes(train, say=say)
        classes = boxes.classes
        train_ds = tdata.BoxSet(boxes, size, train=True)
        val_ds = None
        if val:
            vb = open_boxes(val, say=say)
            if vb.classes != classes:
                raise GraftError(f"{val}: its classes {vb.classes[:5]} differ from the training set's {classes[:5]}",
                                 "use the same category list in both")
            val_ds = tdata.BoxSet(vb, size, train=False)
        num_classes, collate = len(classes), tdata.collate_pairs
    else:
        raise GraftError(f"task {task!r} is not known", f"use one of {', '.join(TASKS)}")
    net = build(task, model, num_classes, pretrained=pretrained, size=size, seed=seed, trust=trust, head=head)
    net, tuning = apply(net, plan, new_heads=net.new_heads)
    s = plan.solver
    opt = make_optimizer(tuning.param_groups(net, s.lr, s.weight_decay), s)
    sampler = EpochBatches(len(train_ds), s.batch_size, seed, drop_last=len(train_ds) > s.batch_size)
    ipe = len(sampler.batches(0))
    if ipe == 0:
        raise GraftError("the training data gives no batch", "add images or lower solver.batch_size")
    loader = DataLoader(Seeded(train_ds, seed), batch_sampler=sampler, collate_fn=collate, num_workers=0)
    budget = plan.time_budget if plan.time_budget and not s.max_iter else None
    if plan.budget_clock == "cpu":  # CPU seconds per thread, as in classification
        threads = torch.get_num_threads()
        clock = lambda: time.process_time() / threads  # noqa: E731
    else:
        clock = time.perf_counter
    run = DenseRun(task=task, plan=plan, out=out, ctx=Context(), say=say, quiet=quiet, seed=seed, state=state,
                   data=SimpleNamespace(classes=classes), tuning=tuning, raw=net, opt=opt,
                   scaler=torch.amp.GradScaler("cuda", enabled=False), ipe=ipe, clock=clock, size=size)
    run.pos.epochs = math.ceil(s.max_iter / ipe) if s.max_iter else (10 ** 6 if budget and epochs is None else s.epochs)
    run.policy = LRPolicy(s, ipe, s.max_iter or (run.pos.epochs * ipe if not budget else max(ipe, 1)))
    if state is not None:
        _resume(run, state, size)
    pos = run.pos                            # the resumed position, if any
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    hooks = Callbacks([Unfreeze(), NaNGuard(), ProgressBar(), MaxIter(), TimeBudget(), DenseLogs()]
                      + ([Checkpoint(interrupt_after)] if out is not None else []))
    try:
        hooks("on_fit_start", run)
        run.t_start = run.clock() - pos.elapsed
        while pos.epoch < pos.epochs and not pos.stop_reason:
            sampler.set_epoch(pos.epoch, pos.batch)
            hooks("on_epoch_start", run)
            mark = time.perf_counter()           # train_seconds: loading the batch and the step
            for x, y in loader:
                hooks("on_batch_start", run)
                run.lr = run.policy.apply(opt, pos.it, run.spent)
                loss = _loss(task, net, x, y)
                run.batch_loss = float(loss.detach())
                hooks("on_before_backward", run, loss, x if task == "segment" else torch.stack(x))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if s.clip_grad_norm:
                    nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], s.clip_grad_norm)
                opt.step()
                pos.it, pos.batch = pos.it + 1, pos.batch + 1
                pos.loss_sum += run.batch_loss * len(x)
                pos.seen += len(x)
                now = time.perf_counter()
                run.train_seconds += now - mark
                pos.elapsed = run.elapsed()
                hooks("on_batch_end", run)
                mark = time.perf_counter()
                if hooks.should_stop(run):
                    break
            hooks("on_train_epoch_end", run)
            last = bool(pos.stop_reason) or pos.epoch + 1 == pos.epochs
            row = {"epoch": pos.epoch + 1, "iteration": pos.it,
                   "lr": opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_mult", 1.0),
                   "train_loss": pos.loss_sum / max(1, pos.seen), "train_seconds": round(run.train_seconds, 2)}
            if val_ds is not None and ((val_every and (pos.epoch + 1) % val_every == 0) or last):
                _add_val(row, task, net, val_ds, classes)
            pos.elapsed = run.elapsed()
            row["seconds"] = round(pos.elapsed, 2)
            run.history.append(row)
            pos.epoch, pos.batch, pos.loss_sum, pos.seen = pos.epoch + 1, 0, 0.0, 0
            hooks("on_epoch_end", run, row)
    finally:
        hooks("teardown", run)
    history = run.history
    if val_ds is not None and history and "val" not in history[-1]:   # the budget ran out at an epoch's end
        _add_val(history[-1], task, net, val_ds, classes)
    if out is not None and history:
        write_logs(out, task, history)
    final = history[-1].get("val") if history else None
    summary = {"task": task, "head": net.head_name, "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
               "pretrained": pretrained, "classes": classes, "train_images": len(train_ds),
               "val_images": len(val_ds) if val_ds is not None else 0, "size": size, "seed": seed,
               "data": {"train": str(train), "val": str(val) if val else None},
               "iterations": pos.it, "epochs": len(history), "train_seconds": round(run.train_seconds, 2),
               "seconds": round(pos.elapsed, 2), "stop_reason": pos.stop_reason or "finished",
               "history": history, "val": final, "tuning": tuning.summary(),
               "groups": tuning.groups(s.lr, s.weight_decay), "plan": plan.to_dict(),
               "transfer": transfer_report(net)["summary"]}
    if out is not None:
        save(net, out, classes)
        (out / "transfer.json").write_text(json.dumps(transfer_report(net), indent=1, default=str))
        summary["files"] = {n: str(out / n) for n in (WEIGHTS, "transfer.json", CHECKPOINT, "log.csv", "curves.png",
                                                      "summary.json")}
        logs.write_json(out / "summary.json", summary)
    summary["net"] = net
    return summary


def _evaluate(task: str, net: nn.Module, ds, classes: list[str]) -> dict[str, Any]:
    return evaluate_segmenter(net, ds, classes) if task == "segment" else evaluate_detector(net, ds)


def _line(task: str, row: dict) -> str:
    v = row.get("val")
    extra = ""
    if v:
        extra = f"  val mIoU {v['miou']:.3f}" if task == "segment" else f"  val AP {v['ap']:.3f} AP50 {v['ap50']:.3f}"
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f} ({row['iteration']} it, {row['seconds']:.0f} s)"
            + extra)


def _loss(task: str, net: nn.Module, x, y) -> torch.Tensor:
    if task == "segment":
        return F.cross_entropy(net(x), y, ignore_index=tdata.IGNORE)
    return sum(net(list(x), list(y)).values())


def _add_val(row: dict, task: str, net: nn.Module, ds, classes: list[str]) -> None:
    """The validation result in the row: the whole result under "val", the curves' numbers flattened."""
    v = _evaluate(task, net, ds, classes)
    row["val"] = v
    keys = ("miou", "pixel_accuracy") if task == "segment" else ("ap", "ap50", "ap75")
    row.update({f"val_{k}": v.get(k) for k in keys})


def _resume(run: DenseRun, state: dict[str, Any], size: int) -> None:
    """The checkpoint's model, optimizer, position, history and random state (train.checkpoint's format)."""
    was = state["plan"]["solver"]
    if state.get("classes") != run.data.classes:
        raise GraftError(f"{run.ckpt_path}: the checkpoint was trained on other classes than this data",
                         "resume with the same --train data")
    if state.get("size") != size:
        raise GraftError(f"{run.ckpt_path}: the run was trained at --size {state.get('size')}, not {size}",
                         f"resume with --size {state.get('size')}")
    run.raw.load_state_dict(state["model"])
    if was["optimizer"] == run.plan.solver.optimizer:
        run.opt.load_state_dict(state["optimizer"])
    else:
        run.say(f"the optimizer changed from {was['optimizer']} to {run.plan.solver.optimizer}: its state starts afresh")
    epochs = run.pos.epochs
    run.pos = Position(**state["position"])
    if not run.plan.solver.max_iter and epochs != run.pos.epochs and run.plan.solver.epochs != was["epochs"]:
        run.pos.epochs, run.pos.stop_reason = epochs, ""  # the user asked for a longer (or shorter) run
    run.history = list(state["history"])
    run.train_seconds = float(state.get("train_seconds", 0.0))
    checkpoint.set_rng_state(state["rng"])
    run.say(f"resuming {run.out} at epoch {run.pos.epoch + 1}, batch {run.pos.batch} (iteration {run.pos.it})")


def save(net: nn.Module, out: str | os.PathLike, classes: list[str]) -> Path:
    """The weights and what rebuilds the model (build arguments, classes) in one safetensors file."""
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = dict(net.build_args, classes=classes)
    tmp = out / (WEIGHTS + ".part")
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp),
              metadata={"graftkit.task": json.dumps(args)})
    os.replace(tmp, out / WEIGHTS)
    return out / WEIGHTS


def load(path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """A task model saved by `save`/`fit_task` (a folder or its model.safetensors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise GraftError(f"{p} does not exist", "give the output folder of a `graft train --task` run")
    with safe_open(str(p), "pt") as f:
        raw = (f.metadata() or {}).get("graftkit.task")
    if not raw:
        raise GraftError(f"{p}: not a graftkit task model", "give the output folder of a `graft train --task` run")
    args = json.loads(raw)
    ref = args["model"]
    if ref is None:
        raise GraftError(f"{p}: its backbone was a module passed in Python", "rebuild it with tasks.build and load_state_dict")
    from .. import builtin
    from ..nets import spec as specs
    random_ok = ref in builtin.NAMES or specs.is_arch_spec(ref)
    net = build(args["task"], ref, args["num_classes"], pretrained=not random_ok, size=args["size"],
                width=args["width"], strides=args["strides"], trust=trust, head=args.get("head"))
    net.load_state_dict(load_file(str(p)))
    net.classes = args["classes"]
    return net.eval()
