"""`graft demo`: the whole graftkit path on the shipped Fashion-MNIST subset, in one run folder.

    data/{train,val,test}/<class>/*.png    the demo set written out as image folders
    data/{train,val,test}.lst (+ .classes.json)   indexed, then checked
    data/packs/{train,val,test}.rec (+ .idx)      packed RecordIO
    run/   best.safetensors, last.safetensors, summary.json (+ log.csv, curves.png when it fine-tunes)  (graftkit.advise.train)
    eval/  metrics.json, confusion.png       (the best model on the held-out test split)
    predictions.json                         a few test images, top-3 each
    report.html (+ report.json, audit.json)  curves, errors with Grad-CAM, calibration, data audit (graftkit.report)
    report.md, summary.json                  what happened, with the numbers and where the files are

Everything is graftkit's own API (data, train, serve): the demo is the README's first
command, so it exercises exactly what a user would run by hand.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_open
from ..errors import GraftError

MODEL = "lite0"
DEFAULT_TIME_BUDGET = 300.0   # seconds of training: with data prep and evaluation, under 10 minutes on 2 cores
SPLITS = ("train", "val", "test")


def run_demo(out_dir: str | os.PathLike = "graft-demo", *, time_budget: float = DEFAULT_TIME_BUDGET,
             seed: int = 0, epochs: int | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare the demo data, fine-tune lite0 with the default plan, evaluate, predict, report."""
    from .. import data as gdata
    from ..data.check import check, fix
    from ..data.pack import PackOptions, pack
    from ..advise import train as train_with_strategy
    from ..tune import Plan
    from .evaluate import evaluate
    from .predict import predict

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise GraftError(f"{out}: already exists and is not empty", "choose a new folder with -o")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = round(time.perf_counter() - started, 2)

    # 1. the data: folders -> lists -> check -> packs
    t = time.perf_counter()
    folders = out / "data"
    counts = gdata.write_demo_set(folders)
    say(f"wrote the Fashion-MNIST demo set to {folders}: "
        + ", ".join(f"{counts[s]} {s}" for s in SPLITS) + " images")
    packs, checks = {}, {}
    for s in SPLITS:
        lst = gdata.make_lists(folders / s, folders / f"{s}.lst")["all"]
        # Fashion-MNIST is 28x28 by design: that size is no problem to report.
        report = check(lst, min_size=28, progress=False)
        checks[s] = {"images": report.images, "errors": len(report.errors), "warnings": len(report.warnings)}
        if report.errors:  # the shipped set is clean; should it not be, train on the repaired list
            lst, _ = fix(report, folders / f"{s}.clean.lst")
        result = pack(lst, folders / "packs" / s, options=PackOptions(encoding=".png", color=0), progress=False)
        packs[s] = Path(result.prefix)
    say(f"indexed, checked ({sum(c['errors'] for c in checks.values())} errors) and packed into "
        f"{folders / 'packs'}")
    step("data", t)

    # 2. train: strategy auto measures the features, then probes or fine-tunes
    t = time.perf_counter()
    run_dir = out / "run"
    say(f"training {MODEL} (ImageNet weights) for at most {time_budget:g} s; strategy auto measures first")
    summary = train_with_strategy(MODEL, packs["train"], packs["val"], out_dir=run_dir, seed=seed,
                                  time_budget=time_budget, plan=Plan.load(None, epochs=epochs), log=say)
    step("train", t)
    best = run_dir / "best.safetensors"

    # the report fits the temperature on the validation split first, so what follows is calibrated
    t = time.perf_counter()
    from ..report import run_report
    report = run_report(run_dir, packs["test"], out=out / "report.html", log=say)
    say(f"report: {out / 'report.html'}")
    step("report", t)

    # 3. evaluate on the held-out test split, predict a few of its images
    t = time.perf_counter()
    metrics = evaluate(best, packs["test"], out_dir=out / "eval")
    step("evaluate", t)
    t = time.perf_counter()
    samples = _one_per_class(folders / "test")
    predictions = predict(best, samples, top_k=3)
    with atomic_open(out / "predictions.json", "w") as f:
        json.dump(predictions, f, indent=2)
    step("predict", t)

    timings["total"] = round(time.perf_counter() - t0, 2)
    doc = _summary(summary, metrics, predictions, timings, time_budget)
    doc["calibration"] = {k: report["calibration"].get(k) for k in ("applied", "temperature", "ece_before", "ece_after")}
    for k in ("curves", "train_log"):  # a probe run has no epochs, so no curves or log
        if not (out / doc["files"][k]).exists():
            del doc["files"][k]
    doc["data_checks"] = checks
    with atomic_open(out / "summary.json", "w") as f:
        json.dump(doc, f, indent=2)
    with atomic_open(out / "report.md", "w") as f:
        f.write(_report(doc, metrics, predictions))
    return doc


def _one_per_class(folder: Path) -> list[str]:
    """The first image of each class folder (sorted), to show predictions on."""
    picks = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        first = next(iter(sorted(cls.glob("*.png"))), None)
        if first is not None:
            picks.append(str(first))
    return picks


def _summary(train: dict[str, Any], metrics: dict[str, Any], predictions: list[dict[str, Any]],
             timings: dict[str, float], time_budget: float) -> dict[str, Any]:
    right = sum(1 for p in predictions if "predictions" in p
                and Path(p["input"]).parent.name == p["predictions"][0]["class"])
    return {
        "model": MODEL,
        "test_top1": metrics["top1"], "test_top5": metrics["top5"], "test_images": metrics["n"],
        "val_top1": (train.get("best") or {}).get("val_top1"),
        "strategy": {k: train["strategy"].get(k) for k in ("chosen", "why", "scenario")},
        "train_images": train.get("train_images"), "epochs": train.get("epochs"),
        "train_seconds": train.get("seconds"), "time_budget": time_budget,
        "stop_reason": train.get("stop_reason"), "warnings": train.get("warnings", []),
        "sample_predictions_right": f"{right}/{len(predictions)}",
        # accuracy within a time budget depends on the machine: say which one it was
        "machine": {"device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count()},
        "seconds": timings,
        # relative to the run folder, so the folder can be moved or shared as it is
        "files": {
            "report": "report.html", "report_md": "report.md", "model": "run/best.safetensors", "curves": "run/curves.png",
            "confusion": "eval/confusion.png", "metrics": "eval/metrics.json", "predictions": "predictions.json",
            "train_log": "run/log.csv", "train_summary": "run/summary.json", "data": "data",
            "packs": "data/packs",
        },
    }


def _report(doc: dict[str, Any], metrics: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    files = doc["files"]
    lines = [
        "# graftkit demo: EfficientNet-Lite0 fine-tuned on Fashion-MNIST", "",
        f"- test top-1 **{doc['test_top1']:.1%}**, top-5 {doc['test_top5']:.1%} on {doc['test_images']} held-out images",
        f"- trained on {doc['train_images']} images for {doc['epochs']} epoch{'' if doc['epochs'] == 1 else 's'} "
        f"in {doc['train_seconds']} s (budget {doc['time_budget']:g} s; {doc['stop_reason']}) "
        f"on {doc['machine']['device']} with {doc['machine']['threads']} threads",
        f"- strategy **{doc['strategy']['chosen']}** (auto): {doc['strategy']['scenario']}; {doc['strategy']['why']}",
        f"- whole demo: {doc['seconds']['total']:.0f} s", "",
        "## Per-class test accuracy", "", "| class | accuracy |", "|---|---:|",
        *[f"| {c} | {'-' if a is None else f'{a:.1%}'} |" for c, a in metrics["per_class"].items()], "",
        "## Sample predictions (top-3)", "", "| image | true | predicted |", "|---|---|---|",
        *[f"| {Path(p['input']).name} | {Path(p['input']).parent.name} | "
          + ", ".join(f"{q['class']} {q['prob']:.2f}" for q in p.get("predictions", [])) + " |" for p in predictions],
        "", "## Files (in this folder)", "", *[f"- {k}: `{v}`" for k, v in files.items()], "",
        *(["![curves](run/curves.png)", ""] if "curves" in files else []), "![confusion](eval/confusion.png)", "",
    ]
    if doc["warnings"]:
        lines += ["## Warnings", "", *[f"- {w}" for w in doc["warnings"]], ""]
    return "\n".join(lines)
