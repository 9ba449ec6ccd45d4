"""graftkit's COCO mAP is pycocotools' COCOeval, so comparing it with pycocotools alone could not fail if both
were wrong in the same call: here it is checked against a second, independent computation, COCO's AP written
out in numpy (greedy matching by score, 101-point interpolated precision, mean over IoU .50:.05:.95)."""
from __future__ import annotations

import numpy as np
import pytest

from graftkit import tasks

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """xyxy boxes a (N,4), b (M,4) -> (N,M), areas w*h as COCO computes them."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def numpy_ap(records, detections, k: int, max_dets: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """AP per (IoU threshold, class), NaN for a class without ground truth."""
    dets = {d["image_id"]: d for d in detections}
    ap = np.full((len(THRESHOLDS), k), np.nan)
    for c in range(k):
        for ti, t in enumerate(THRESHOLDS):
            scores, hits, n_gt = [], [], 0
            for rec in records:
                gt = np.array([b for b, lab in zip(rec["boxes"], rec["labels"]) if lab == c]).reshape(-1, 4)
                n_gt += len(gt)
                d = dets.get(rec["id"])
                if d is None:
                    continue
                mine = np.asarray(d["labels"]) == c
                box, sc = np.asarray(d["boxes"])[mine].reshape(-1, 4), np.asarray(d["scores"])[mine]
                order = np.argsort(-sc, kind="mergesort")[:max_dets]
                box, sc = box[order], sc[order]
                taken = np.zeros(len(gt), bool)
                iou = _iou(box, gt) if len(gt) and len(box) else np.zeros((len(box), len(gt)))
                for i in range(len(box)):
                    best, m = min(t, 1 - 1e-10), -1
                    for g in range(len(gt)):
                        if not taken[g] and iou[i, g] >= best:
                            best, m = iou[i, g], g
                    if m >= 0:
                        taken[m] = True
                    scores.append(sc[i])
                    hits.append(m >= 0)
            if n_gt == 0:
                continue
            order = np.argsort(-np.array(scores), kind="mergesort")
            tp = np.cumsum(np.array(hits, bool)[order])
            fp = np.cumsum(~np.array(hits, bool)[order])
            recall = tp / n_gt
            precision = tp / np.maximum(tp + fp, np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
            at = np.searchsorted(recall, RECALLS, side="left")
            ap[ti, c] = np.mean([precision[i] if i < len(precision) else 0.0 for i in at])
    return ap


def _random_case(seed: int, k: int = 3, images: int = 10):
    rng = np.random.default_rng(seed)
    recs, dets = [], []
    for i in range(1, images + 1):
        n = int(rng.integers(0, 5))                              # some images without objects
        xy = rng.uniform(0, 70, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (n, 2))], 1)
        labels = rng.integers(0, k, n)
        recs.append({"id": i, "file": f"{i}.png", "width": 100, "height": 100, "boxes": boxes.tolist(),
                     "labels": labels.tolist()})
        pb = boxes + rng.normal(0, 2.5, boxes.shape)             # near hits, some below the IoU thresholds
        dup = pb[: max(0, n - 1)] + rng.normal(0, 1, (max(0, n - 1), 4))   # duplicates: false positives
        extra = rng.uniform(0, 70, (3, 2))
        pb = np.concatenate([pb, dup, np.concatenate([extra, extra + rng.uniform(5, 25, (3, 2))], 1)])
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)        # a detector's boxes have positive sides
        pl = np.concatenate([labels, labels[: max(0, n - 1)], rng.integers(0, k, 3)])
        dets.append({"image_id": i, "boxes": pb, "scores": rng.uniform(0.05, 1, len(pb)), "labels": pl})
    return recs, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_equals_an_independent_numpy_ap(seed):
    recs, dets = _random_case(seed)
    ours = tasks.coco_map(recs, dets, [1, 3, 7], ["a", "b", "c"])
    ap = numpy_ap(recs, dets, 3)
    per_class = np.nanmean(ap, axis=0)
    assert 0.05 < ours["ap50"] < 0.99                          # neither trivial nor perfect
    assert ours["ap"] == pytest.approx(np.nanmean(ap), abs=1e-6)
    assert ours["ap50"] == pytest.approx(np.nanmean(ap[0]), abs=1e-6)
    assert ours["ap75"] == pytest.approx(np.nanmean(ap[5]), abs=1e-6)
    for c, name in enumerate(["a", "b", "c"]):
        assert ours["per_class"][name] == pytest.approx(per_class[c], abs=1e-6), name


def test_the_numpy_ap_tells_a_worse_detector_apart():
    """The oracle is not blind: shifting every detection lowers its AP50 (so the equality above means something)."""
    recs, dets = _random_case(0)
    shifted = [dict(d, boxes=np.asarray(d["boxes"]) + 6.0) for d in dets]
    assert np.nanmean(numpy_ap(recs, shifted, 3)[0]) < np.nanmean(numpy_ap(recs, dets, 3)[0]) - 0.1
