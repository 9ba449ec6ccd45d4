"""`graft train` (fine-tune under a plan) and `graft plan show` (the per-layer table): thin wrappers over
graftkit.train.fit and graftkit.tune."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import err, print_json, print_table


def _plan(plan_file: Optional[Path], **flags):
    from ..tune import Plan
    return Plan.load(plan_file, **{k: v for k, v in flags.items() if v not in (None, [], ())})


def register(app: typer.Typer) -> None:
    @app.command()
    def train(model: str = typer.Option("lite0", "--model", "-m", help="lite0, timm:NAME, torchvision:NAME, file.py:fn or a package"),
              strategy: Optional[str] = typer.Option(None, "--strategy", "-s",
                                                     help="auto (default: measure, then choose), probe, probe-at:DEPTH, "
                                                          "lp-ft, lp-ft-at:DEPTH, partial, partial-at:DEPTH, finetune or scratch"),
              cache: Optional[Path] = typer.Option(None, "--cache", help="feature cache folder (default ~/.cache/graftkit/features)"),
              train_data: Path = typer.Option(..., "--train", help="training data: class folder, .lst or RecordIO pack"),
              val_data: Optional[Path] = typer.Option(None, "--val", help="validation data (same kinds)"),
              out: Path = typer.Option(..., "--out", "-o", help="run folder (packages, checkpoint, logs, curves)"),
              plan_file: Optional[Path] = typer.Option(None, "--plan", help="plan YAML (see `graft plan show`)"),
              epochs: Optional[int] = typer.Option(None, "--epochs", help="number of epochs"),
              max_iter: Optional[int] = typer.Option(None, "--max-iter", help="iterations instead of epochs"),
              time_budget: Optional[float] = typer.Option(None, "--time-budget", help="seconds of training at most"),
              seed: int = typer.Option(0, "--seed", help="random seed (same seed, same run)"),
              resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
              lr: Optional[float] = typer.Option(None, "--lr", help="base learning rate"),
              batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per batch"),
              optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd, adamw, adam, rmsprop, ..."),
              policy: Optional[str] = typer.Option(None, "--policy", help="lr policy: fixed, step, multistep, exp, inv, poly, cosine, onecycle"),
              freeze: List[str] = typer.Option([], "--freeze", help="freeze parameters matching this pattern (repeatable; 'body' = all but the head)"),
              head: Optional[str] = typer.Option(None, "--head", help="classify: auto, new, keep or keep_matching; "
                                                 "--task detect: fcos (default), retinanet or fasterrcnn; "
                                                 "--task segment: fpn (default) or deeplabv3"),
              size: Optional[int] = typer.Option(None, "--size", help="input side in pixels (default: auto)"),
              workers: Optional[str] = typer.Option(None, "--workers", help="data loader worker processes, or auto "
                                                    "(default: measured in the first epochs); 0 loads in-process"),
              cache_ram: Optional[str] = typer.Option(None, "--cache-ram", help="decode the images once into RAM when "
                                                      "they fit this: 25% of available RAM (default), 2G, or 0 to stream"),
              checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="also checkpoint every N iterations"),
              device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if present)"),
              trust: bool = typer.Option(False, "--trust", help="build a package whose architecture is a Python file (runs its code)"),
              report: bool = typer.Option(True, "--report/--no-report", help="write report.html (errors, Grad-CAM, calibration, data audit) into the run folder"),
              task: str = typer.Option("classify", "--task", help="classify, segment (mask folders) or detect "
                                       "(COCO .json / VOC / YOLO): dense tasks put an FPN head on MODEL's features"),
              json_: bool = typer.Option(False, "--json", help="print summary.json on stdout")) -> None:
        """Train MODEL on your images with a strategy (auto: probe the features, then choose a linear probe, a
        partial or a full fine-tune); writes best/last packages, summary.json and, for fine-tunes, checkpoint,
        log.csv, TensorBoard events and curves.png into the run folder.

        --task segment|detect trains a segmenter (--head fpn|deeplabv3) or a detector (--head
        fcos|retinanet|fasterrcnn) on MODEL's multi-scale features (--strategy scratch: the same
        architecture from random initialisation)."""
        if task != "classify":
            _train_task(task, model, train_data, val_data, out, plan_file, strategy, epochs, max_iter, time_budget,
                        seed, resume, lr, batch_size, optimizer, policy, list(freeze), size, trust, json_,
                        checkpoint_every, head)
            if report:
                _report(out, trust, cache)
            return
        from ..advise import train as run
        from ..train import RunInterrupted
        plan = _plan(plan_file, strategy=strategy, epochs=epochs, max_iter=max_iter, lr=lr, batch_size=batch_size,
                     optimizer=optimizer, policy=policy, freeze=list(freeze), head=head, size=size, num_workers=workers,
                     cache_ram=cache_ram,
                     checkpoint_every=checkpoint_every, time_budget=time_budget)
        try:
            summary = run(model, train_data, val_data, out_dir=out, plan=plan, seed=seed, resume=resume, device=device,
                          trust=trust, cache_dir=cache, quiet=json_, log=err.print)
        except RunInterrupted as e:
            print(f"graft: stopped: {e}", file=sys.stderr)
            raise typer.Exit(130)
        if report:
            _report(out, trust, cache)
        if json_:
            print_json(summary)
        else:
            best = summary["best"].get("val_top1")
            how = (f"{summary['epochs']} epochs" if summary["epochs"] else summary["strategy"]["chosen"])
            err.print(f"done: {how}, {summary['seconds']:.0f} s"
                      + (f", best validation top-1 {best:.4f}" + (f" (epoch {summary['best_epoch']})" if summary["epochs"] else "")
                         if best is not None else "")
                      + f"; packages in {out}/best.safetensors and {out}/last.safetensors")

    def _train_task(task, model, train_data, val_data, out, plan_file, strategy, epochs, max_iter, time_budget, seed,
                    resume, lr, batch_size, optimizer, policy, freeze, size, trust, json_, checkpoint_every,
                    head=None) -> None:
        from ..errors import GraftError
        from ..tasks import fit_task, task_plan
        from ..tasks.train import TASKS
        from ..train import RunInterrupted
        if task not in TASKS:
            raise GraftError(f"--task {task!r} is not known", "use classify, segment or detect")
        if strategy not in (None, "finetune", "scratch"):
            raise GraftError(f"--strategy {strategy} is not available for --task {task}",
                             "use finetune (default) or scratch (random initialisation)")
        if plan_file is not None:
            plan = _plan(plan_file, lr=lr, batch_size=batch_size, optimizer=optimizer, policy=policy, freeze=freeze)
        else:
            plan = task_plan(lr=lr, batch_size=batch_size, optimizer=optimizer, policy=policy)
            if freeze:
                plan.freeze = list(freeze)
        if checkpoint_every is not None:
            plan.checkpoint_every = checkpoint_every
        try:
            summary = fit_task(task, model, train_data, val_data, out_dir=out, plan=plan, seed=seed, epochs=epochs,
                               max_iter=max_iter, time_budget=time_budget, size=size or 128,
                               pretrained=strategy != "scratch", trust=trust, log=None if json_ else err.print,
                               resume=resume, quiet=json_, head=head)
        except RunInterrupted as e:
            print(f"graft: stopped: {e}", file=sys.stderr)
            raise typer.Exit(130)
        summary.pop("net", None)
        if json_:
            print_json(summary)
            return
        v = summary["val"] or {}
        score = (f", val mIoU {v['miou']:.4f}" if task == "segment" else f", val AP {v['ap']:.4f} AP50 {v['ap50']:.4f}") if v else ""
        err.print(f"done: {summary['iterations']} iterations, {summary['train_seconds']:.0f} s{score}; model in "
                  f"{out}/model.safetensors, transfer report in {out}/transfer.json")

    def _report(run_dir: Path, trust: bool, cache) -> None:
        """The run's report; a report that cannot be made does not undo a finished training."""
        from ..errors import GraftError
        from ..report import run_report
        try:
            done = run_report(run_dir, trust=trust, cache_dir=cache, log=lambda m: err.print(m, soft_wrap=True))
        except GraftError as e:
            err.print(f"warning: no report: {e}", soft_wrap=True)
            return
        err.print(f"report: {done['files']['html']}", soft_wrap=True)

    plan_app = typer.Typer(no_args_is_help=True, help="Fine-tuning plans.")
    app.add_typer(plan_app, name="plan")

    @plan_app.command("show")
    def show(model: str = typer.Option("lite0", "--model", "-m", help="model reference"),
             plan_file: Optional[Path] = typer.Option(None, "--plan", help="plan YAML (default plan if omitted)"),
             classes: Optional[int] = typer.Option(None, "--classes", help="K: show the plan with a new head for K classes"),
             freeze: List[str] = typer.Option([], "--freeze", help="freeze pattern (repeatable)"),
             json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """Print the per-layer table: trainable or frozen, learning rate and weight decay of every parameter."""
        from ..models import resolve
        from ..tune import apply
        plan = _plan(plan_file, freeze=list(freeze))
        module = resolve(model)
        names = [f"class_{i}" for i in range(classes)] if classes else None
        _, tuning = apply(module, plan, names)
        rows = tuning.table(plan.solver.lr, plan.solver.weight_decay)
        if json_:
            print_json({"plan": plan.to_dict(), "summary": tuning.summary(), "parameters": rows})
            return
        print_table(f"plan for {model}" + (f" with a new head for {classes} classes" if classes else ""),
                    ["parameter", "shape", "status", "lr", "weight decay", "why"],
                    [(r["name"], "x".join(map(str, r["shape"])), r["status"], f"{r['lr']:.3g}",
                      f"{r['weight_decay']:.3g}", r["why"]) for r in rows])
        s = tuning.summary()
        err.print(f"{s['trainable']:,} trainable, {s['frozen']:,} frozen, {s['unfreeze_later']:,} unfrozen later; "
                  f"solver {plan.solver.optimizer} lr {plan.solver.lr:g} policy {plan.solver.policy}")
