"""The report's pictures, as PNG/JPEG bytes to embed (matplotlib Agg: no display needed)."""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


TOP1 = {"train top-1": "train_top1", "validation top-1": "val_top1"}


def curves(history: Sequence[dict[str, Any]], metrics: dict[str, str] | None = None,
           metric_title: str = "accuracy") -> bytes:
    """Loss (with the learning rate on a second axis) and a [0, 1] metric per epoch; `metrics` maps a legend
    label to a log.csv column (default top-1; a dense run passes AP/AP50/AP75 or mIoU)."""
    plt = _plt()
    num = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else np.nan  # noqa: E731
    ep = [int(r["epoch"]) for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [num(r, "train_loss") for r in history], "o-", label="train loss")
    if any(r.get("val_loss") not in (None, "") for r in history):
        a.plot(ep, [num(r, "val_loss") for r in history], "o-", label="validation loss")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.grid(alpha=.3)
    if any(r.get("lr") not in (None, "") for r in history):
        lr = a.twinx()
        lr.plot(ep, [num(r, "lr") for r in history], "--", color="grey", label="learning rate")
        lr.set_ylabel("learning rate", color="grey")
        lines = a.get_lines() + lr.get_lines()
        a.legend(lines, [line.get_label() for line in lines], loc="upper right")
    else:
        a.legend()
    for label, key in (metrics or TOP1).items():
        if any(r.get(key) not in (None, "") for r in history):
            b.plot(ep, [num(r, key) for r in history], "o-", label=label)
    b.set_xlabel("epoch"), b.set_ylabel(metric_title), b.set_ylim(0, 1), b.grid(alpha=.3)
    if b.get_lines():
        b.legend()
    a.set_title("loss and learning rate"), b.set_title(metric_title)
    from matplotlib.ticker import MaxNLocator
    for ax in (a, b):   # epochs are whole: a 2-epoch run would otherwise get ticks at 1.25, 1.5...
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def confusion(matrix: Sequence[Sequence[int]], rows: Sequence[str], columns: Sequence[str]) -> bytes:
    """The confusion matrix twice: normalised per true class (recall on the diagonal) and raw counts."""
    plt = _plt()
    counts = np.asarray(matrix, dtype=np.int64)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.5, 0.45 * len(columns) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side * 0.9))
    for ax, values, title, fmt in ((axes[0], norm, "normalised (rows sum to 1)", "{:.2f}"),
                                   (axes[1], counts, "counts", "{:d}")):
        ax.imshow(values if values is norm else norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(columns)), [str(c)[:14] for c in columns], rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), [str(r)[:14] for r in rows])
        ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
        if len(columns) <= 20:
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    v = values[i, j]
                    ax.text(j, i, fmt.format(v.item()), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _png(fig)


def reliability(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]] | None,
                ece_before: float, ece_after: float | None, temperature: float | None) -> bytes:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for bins, label, style in ((before, f"raw (ECE {ece_before:.3f})", "o-"),
                               (after, None if after is None else
                                f"T = {temperature:.2f} (ECE {ece_after:.3f})", "s-")):
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=label)
    ax.set_xlabel("confidence (top-1 probability)"), ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.grid(alpha=.3), ax.legend(loc="upper left")
    ax.set_title("reliability")
    fig.tight_layout()
    return _png(fig)


def tile(image: torch.Tensor, cam: torch.Tensor | None = None, side: int = 160) -> bytes:
    """A JPEG of an image (uint8 CHW or float HWC in [0,1]), with a heat map blended on top when given."""
    from PIL import Image
    img = image.permute(1, 2, 0).numpy() if image.dim() == 3 and image.shape[0] in (1, 3) else image.numpy()
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if cam is not None:
        from matplotlib import colormaps
        heat = colormaps["jet"](cam.numpy())[..., :3].astype(np.float32)
        img = 0.55 * img + 0.45 * heat
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    scale = side / max(pil.size)
    pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=88)
    return buf.getvalue()
