"""What a run leaves for people: log.csv, TensorBoard events, curves.png, summary.json.

All files are rewritten whole and atomically from the run's history, so a
resumed run's logs are exactly those of an uninterrupted one (TensorBoard
events after the resume point are purged on reopening).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_open, atomic_path

COLUMNS = ("epoch", "iteration", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "seconds")


def write_csv(path: Path, history: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> None:
    """One row per epoch; `columns` (dense tasks log mAP or mIoU instead of top-1)."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def read_csv(path: Path) -> list[dict[str, str]]:
    """log.csv's rows (as strings), or [] when the run wrote none."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, doc: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


TOP1 = {"train top-1": "train_top1", "validation top-1": "val_top1", "validation top-5": "val_top5"}


def plot_curves(path: Path, history: list[dict[str, Any]], title: str = "", metrics: dict[str, str] | None = None,
                metric_title: str = "accuracy") -> None:
    """Loss and a [0, 1] metric per epoch as a PNG; `metrics` maps a legend label to a history key
    (default: top-1/top-5; dense tasks pass AP/AP50 or mIoU)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    if any(r.get("val_loss") is not None for r in history):
        a.plot(ep, [r.get("val_loss") for r in history], "o-", label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_title("loss"), a.legend(), a.grid(alpha=.3)
    for n, (label, key) in enumerate((metrics or TOP1).items()):
        if any(r.get(key) is not None for r in history):
            b.plot(ep, [r.get(key) for r in history], "o-" if n < 2 else "--", label=label)
    b.set_xlabel("epoch"), b.set_ylabel(metric_title), b.set_ylim(0, 1), b.set_title(metric_title)
    if b.get_lines():  # a run without validation has no metric to show
        b.legend()
    b.grid(alpha=.3)
    from matplotlib.ticker import MaxNLocator
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class Board:
    """TensorBoard scalars per iteration and per epoch (torch.utils.tensorboard)."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        self.w = SummaryWriter(str(folder), purge_step=purge_step)

    def step(self, it: int, loss: float, lr: float) -> None:
        self.w.add_scalar("train/loss_iter", loss, it)
        self.w.add_scalar("train/lr", lr, it)

    def epoch(self, row: dict[str, Any], it: int) -> None:
        for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            if row.get(k) is not None:
                self.w.add_scalar(k.replace("_", "/", 1), row[k], it)
        self.w.flush()

    def close(self) -> None:
        self.w.close()
