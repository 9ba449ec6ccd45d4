"""The report of a detection or segmentation run (`graft train --task detect|segment`): the run's facts, its
curves (loss, lr, and AP/AP50/AP75 or mIoU per epoch, from log.csv), the task metrics with their reduction
(per-class AP, or per-class IoU with the ignore index), and a few validation images with the model's boxes
or masks drawn on them. Written as report.html and report.json beside it, atomically."""
from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_open
from ..errors import GraftError

SHOWN = 6   # validation images drawn with the model's predictions


def is_task_run(summary: dict[str, Any]) -> bool:
    return summary.get("task") in ("segment", "detect")


def task_run_report(run_dir: str | os.PathLike, summary: dict[str, Any], data: str | os.PathLike | None = None, *,
                    out: str | os.PathLike | None = None, trust: bool = False,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report of a dense run folder. The metrics are the run's last validation (summary.json), or, with
    `data`, the model's evaluation on that data (tasks.evaluate)."""
    from ..tasks import evaluate_task
    from ..train.logs import read_csv
    t0 = time.perf_counter()
    run = Path(run_dir)
    task = summary["task"]
    if not (run / "model.safetensors").is_file():
        raise GraftError(f"{run}: the run has no model.safetensors (it was interrupted before its end)",
                         "finish it with `graft train --task ... --resume`, then make the report")
    where = data if data is not None else (summary.get("data") or {}).get("val")
    if data is not None:
        metrics = evaluate_task(run, data, trust=trust)
        if log:
            log(f"evaluated {run} on {data}")
    else:
        metrics = summary.get("val")
    doc: dict[str, Any] = {
        "kind": "run", "task": task, "run": str(run), "data": str(where) if where else None,
        "summary": {k: summary.get(k) for k in ("model", "pretrained", "classes", "train_images", "val_images", "size",
                                                 "seed", "iterations", "epochs", "seconds", "train_seconds",
                                                 "stop_reason", "transfer", "groups", "data")},
        "time_budget": (summary.get("plan") or {}).get("time_budget"),
        "history": read_csv(run / "log.csv"), "metrics": metrics,
        "gallery": _gallery(run, where, task, trust) if where else []}
    doc["seconds_report"] = round(time.perf_counter() - t0, 2)
    from .html import render_task
    page = render_task(doc)
    html_path = Path(out) if out else run / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in doc.items() if k != "gallery"}
    public["gallery"] = [{k: v for k, v in g.items() if k != "png"} for g in doc["gallery"]]
    files = {"html": html_path, "json": html_path.with_name("report.json")}
    with atomic_open(files["json"], "w") as f:
        json.dump(public, f, indent=1, default=str)
    with atomic_open(files["html"], "w") as f:
        f.write(page)
    public["files"] = {k: str(v) for k, v in files.items()}
    return public


def _images(where: str | os.PathLike) -> list[Path]:
    """The first SHOWN images of a mask folder or a detection set (COCO folder/.json, VOC, YOLO)."""
    from ..tasks.data import IMAGE_EXTS
    p = Path(where)
    folder = p.parent / "images" if p.is_file() else (p / "images" if (p / "images").is_dir() else p)
    return sorted(q for q in folder.glob("*") if q.suffix.lower() in IMAGE_EXTS)[:SHOWN]


def _gallery(run: Path, where, task: str, trust: bool) -> list[dict[str, Any]]:
    """Drawn by tasks.predict (the same pictures `graft predict -o` writes), embedded as PNG."""
    from ..tasks.predict import predict
    files = _images(where)
    if not files:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        results = predict(run, [str(f) for f in files], out_dir=tmp, trust=trust)
        shown = []
        for r in results:
            what = (", ".join(f"{b['class']} {b['score']:.2f}" for b in r["boxes"][:5]) or "no box above 0.3"
                    if "boxes" in r else ", ".join(f"{k} {v:.0%}" for k, v in r["classes"].items()))
            shown.append({"name": Path(r["input"]).name, "what": what,
                          "png": base64.b64encode(Path(r["drawn"]).read_bytes()).decode()})
    return shown
