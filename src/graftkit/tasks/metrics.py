"""Dense-task metrics: mIoU from a confusion matrix accumulated over the whole data set, and COCO mAP.

mIoU reduction (stated, because implementations differ): pixels whose target is the ignore index
are left out; one K x K confusion matrix is summed over every pixel of every image; per class
IoU = TP / (TP + FP + FN); the mean is over the classes that occur in the targets or the
predictions (a class with TP + FP + FN = 0 has no IoU and is not counted). Not a per-image mean.

COCO mAP: pycocotools' COCOeval (bbox), the reference implementation: AP = AP@[.50:.95], AP50, AP75,
and per-class AP@[.50:.95] from its precision array (-1 entries, classes without ground truth, left out).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from ..errors import GraftError


class ConfusionMeter:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.k = int(num_classes)
        self.ignore = ignore_index
        self.matrix = torch.zeros(self.k, self.k, dtype=torch.int64)   # rows: target, columns: prediction

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: class indices (N,H,W) or logits (N,K,H,W); target: (N,H,W) with the ignore index."""
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        pred, target = pred.reshape(-1).cpu(), target.reshape(-1).cpu().long()
        keep = target != self.ignore
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.k):
            raise GraftError(f"a mask holds class {int(target.max())} but there are {self.k} classes",
                             f"mask values must be 0..{self.k - 1} or {self.ignore} (ignore)")
        self.matrix += torch.bincount(target * self.k + pred.long(), minlength=self.k * self.k).reshape(self.k, self.k)

    def result(self, classes: list[str] | None = None) -> dict[str, Any]:
        m = self.matrix.double()
        tp = m.diag()
        denom = m.sum(0) + m.sum(1) - tp
        iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = ~torch.isnan(iou)
        names = classes or [str(i) for i in range(self.k)]
        return {"miou": float(iou[valid].mean()) if valid.any() else 0.0,
                "pixel_accuracy": float(tp.sum() / m.sum().clamp(min=1)),
                "iou": {names[i]: (None if not valid[i] else float(iou[i])) for i in range(self.k)},
                "ignore_index": self.ignore, "pixels": int(m.sum()),
                "reduction": "one confusion matrix over all non-ignored pixels of the data set; mean of per-class "
                             "IoU over classes present in targets or predictions"}


def miou_numpy(preds: list[np.ndarray], targets: list[np.ndarray], k: int, ignore: int = 255) -> float:
    """A direct numpy computation of the same reduction (the tests' oracle)."""
    p = np.concatenate([a.ravel() for a in preds])
    t = np.concatenate([a.ravel() for a in targets])
    keep = t != ignore
    p, t = p[keep], t[keep]
    ious = []
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)) if ious else 0.0


def _coco_gt(records: list[dict], category_ids: list[int], classes: list[str]):
    from pycocotools.coco import COCO
    images, anns = [], []
    for rec in records:
        images.append({"id": rec["id"], "width": rec["width"], "height": rec["height"]})
        for b, lab in zip(rec["boxes"], rec["labels"]):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": rec["id"], "category_id": category_ids[lab],
                         "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in zip(category_ids, classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_map(records: list[dict], detections: list[dict], category_ids: list[int], classes: list[str]) -> dict:
    """records: ground truth in graftkit's internal form (xyxy boxes, labels 0..K-1, image ids);
    detections: [{"image_id", "boxes" Nx4 xyxy, "scores" N, "labels" N}] in the same pixel frame."""
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise GraftError("COCO mAP needs pycocotools", "pip install pycocotools") from None
    gt = _coco_gt(records, category_ids, classes)
    dets = []
    for d in detections:
        for b, s, lab in zip(np.asarray(d["boxes"]).reshape(-1, 4), np.asarray(d["scores"]), np.asarray(d["labels"])):
            dets.append({"image_id": int(d["image_id"]), "category_id": int(category_ids[int(lab)]),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "score": float(s)})
    empty = {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class": {c: 0.0 for c in classes}, "detections": 0}
    if not dets or not gt.dataset["annotations"]:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]            # [T, R, K, A, M]
    per_class = {}
    for k, (cid, name) in enumerate(zip(category_ids, classes)):
        if cid in ev.params.catIds:
            p = prec[:, :, ev.params.catIds.index(cid), 0, -1]
            p = p[p > -1]
            per_class[name] = float(p.mean()) if p.size else None
    return {"ap": float(ev.stats[0]), "ap50": float(ev.stats[1]), "ap75": float(ev.stats[2]),
            "per_class": per_class, "detections": len(dets),
            "reduction": "pycocotools COCOeval bbox: area all, maxDets 100"}
