"""Train and evaluate a segmenter or a detector under a graftkit plan.

The plan is the classification plan (tune.Plan): optimizer, lr policy, warm-up, weight decay,
freeze / lr_mult / decay_mult / layer_decay / unfreeze / stop_gradient patterns (over names such
as `backbone.body.blocks.0` for a segmenter, `model.backbone.fb.body.blocks.0` for a detector, or
the keywords `head` / `body`), batch size, epochs and time budget, applied by the same tune.apply
and train.solver code. The loop itself is this module's: classification's `train.loop.fit` is
built around (image, label) batches, top-1 metrics and classifier packages, and is not reused.
Not yet here (see the README): exact mid-epoch resume, the curves/report callbacks, DDP.

Time budget: loading the batches and the training steps count against it (validation runs outside it);
a decaying lr policy follows the spent fraction of the budget, as in classification.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..errors import GraftError
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


def evaluate_detector(model: Detector, ds: tdata.BoxSet) -> dict[str, Any]:
    dets = predict_boxes(model, ds)
    b = ds.boxes
    return coco_map(b.images, dets, b.category_ids, b.classes)


# -- training --------------------------------------------------------------------------------------------------
def fit_task(task: str, model: str | os.PathLike | nn.Module, train: str | os.PathLike,
             val: str | os.PathLike | None = None, *, out_dir: str | os.PathLike | None = None,
             plan: Plan | None = None, seed: int = 0, epochs: int | None = None, time_budget: float | None = None,
             size: int = 128, pretrained: bool = True, val_every: int = 1, trust: bool = False,
             log: Callable[[str], None] | None = None, max_iter: int | None = None,
             head: str | None = None) -> dict[str, Any]:
    """Train a `task` model with backbone `model` on `train` (mask folder / detection set); returns the summary.

    Writes OUT/model.safetensors (weights + build arguments), OUT/transfer.json (where every tensor came
    from) and OUT/summary.json when out_dir is given. val_every=0 validates only at the end."""
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
    if out is not None and (out / WEIGHTS).exists():
        raise GraftError(f"{out} already holds a trained model ({WEIGHTS})", "choose another output folder")
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
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=s.batch_size, shuffle=True, drop_last=len(train_ds) > s.batch_size,
                        generator=g, collate_fn=collate, num_workers=0)
    ipe = len(loader)
    budget = plan.time_budget if plan.time_budget and not s.max_iter else None
    epochs_max = math.ceil(s.max_iter / ipe) if s.max_iter else (10 ** 6 if budget and epochs is None else s.epochs)
    total = s.max_iter or (epochs_max * ipe if not budget else max(ipe, 1))
    policy = LRPolicy(s, ipe, total)
    torch.manual_seed(seed)                  # the same draws (augmentation) for any backbone
    history, it, spent, stop = [], 0, 0.0, ""
    t_train = 0.0
    for epoch in range(epochs_max):
        tuning.set_epoch(net, epoch)
        tuning.train_mode(net, epoch)
        loss_sum, seen = 0.0, 0
        mark = time.perf_counter()           # the budget counts loading the batch and the step
        for x, y in loader:
            lr = policy.apply(opt, it, (t_train / budget) if budget else None)
            if task == "segment":
                loss = F.cross_entropy(net(x), y, ignore_index=tdata.IGNORE)
            else:
                losses = net(list(x), list(y))
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise GraftError(f"the loss became {float(loss)} at iteration {it} (lr {lr:.2g})",
                                 "lower the learning rate (solver.lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.clip_grad_norm:
                nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], s.clip_grad_norm)
            opt.step()
            it += 1
            bs = len(x)
            loss_sum += float(loss.detach()) * bs
            seen += bs
            now = time.perf_counter()
            t_train += now - mark
            mark = now
            if (budget and t_train >= budget) or (s.max_iter and it >= s.max_iter):
                stop = "time budget" if budget and t_train >= budget else "max_iter"
                break
        row = {"epoch": epoch + 1, "iteration": it, "train_loss": loss_sum / max(1, seen),
               "train_seconds": round(t_train, 2)}
        last = bool(stop) or epoch + 1 == epochs_max
        if val_ds is not None and ((val_every and (epoch + 1) % val_every == 0) or last):
            row["val"] = _evaluate(task, net, val_ds, classes)
        history.append(row)
        say(_line(task, row))
        if stop:
            break
    final = history[-1].get("val") if history else None
    summary = {"task": task, "head": net.head_name, "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
               "pretrained": pretrained, "classes": classes, "train_images": len(train_ds),
               "val_images": len(val_ds) if val_ds is not None else 0, "size": size, "seed": seed,
               "iterations": it, "epochs": len(history), "train_seconds": round(t_train, 2),
               "stop_reason": stop or "finished", "history": history, "val": final,
               "tuning": tuning.summary(), "plan": plan.to_dict(),
               "transfer": transfer_report(net)["summary"]}
    if out is not None:
        save(net, out, classes)
        (out / "transfer.json").write_text(json.dumps(transfer_report(net), indent=1, default=str))
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["net"] = net
    return summary


def _evaluate(task: str, net: nn.Module, ds, classes: list[str]) -> dict[str, Any]:
    return evaluate_segmenter(net, ds, classes) if task == "segment" else evaluate_detector(net, ds)


def _line(task: str, row: dict) -> str:
    v = row.get("val")
    extra = ""
    if v:
        extra = f"  val mIoU {v['miou']:.3f}" if task == "segment" else f"  val AP {v['ap']:.3f} AP50 {v['ap50']:.3f}"
    return f"epoch {row['epoch']}: loss {row['train_loss']:.4f} ({row['iteration']} it, {row['train_seconds']:.0f} s){extra}"


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
