"""The confusion-matrix picture (matplotlib, Agg: no display needed)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..atomic import atomic_path


def confusion_png(confusion: Sequence[Sequence[int]], rows: Sequence[str], columns: Sequence[str],
                  path: str | os.PathLike, title: str = "") -> None:
    """Rows = true class, columns = predicted class; cells coloured by the share of the row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size, size * len(rows) / max(len(columns), 1) + 0.8))
    try:
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(columns)), labels=list(columns), rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), labels=list(rows))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(columns) <= 30:  # numbers stay readable up to about 30 classes
            for i, j in np.ndindex(counts.shape):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
