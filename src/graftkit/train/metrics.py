"""Classification metrics from a confusion matrix: top-1, top-5, per-class accuracy."""
from __future__ import annotations

from typing import Any

import torch


class Meter:
    """Accumulates a confusion matrix and top-k hits over batches of logits."""

    def __init__(self, num_classes: int, k: int = 5):
        self.k = min(k, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.topk = 0
        self.loss_sum = 0.0
        self.n = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float | None = None) -> None:
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        pred = logits.argmax(1)
        k = self.confusion.shape[0]
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).view(k, k)
        self.topk += int((logits.topk(self.k, 1).indices == target[:, None]).any(1).sum())
        if loss is not None:
            self.loss_sum += float(loss) * len(target)
        self.n += len(target)

    def result(self, classes: list[str] | None = None) -> dict[str, Any]:
        n = max(1, self.n)
        diag = self.confusion.diag().double()
        support = self.confusion.sum(1).double()
        per = (diag / support.clamp(min=1)).tolist()
        names = classes or [str(i) for i in range(len(per))]
        return {"top1": float(diag.sum() / n), "top5": self.topk / n, "loss": self.loss_sum / n, "n": self.n,
                "per_class": {c: (round(a, 6) if s else None) for c, a, s in zip(names, per, support.tolist())},
                "confusion": self.confusion.tolist()}
