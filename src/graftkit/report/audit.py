"""The data audit: likely label errors, exact and near duplicates (within a split and across
splits, i.e. leakage), class imbalance.

- Label errors follow confident learning (Northcutt et al., JAIR 2021): with out-of-sample
  probabilities p, a sample is flagged when another class j reaches p_j >= t_j, the mean
  probability class j's own samples give j. The list is ranked by self-confidence p[given],
  lowest first (cleanlab's default ranking; on the planted-noise benchmark it finds more
  flips in the top N than the margin p[given] - max p[other]).
- Near duplicates need three witnesses: the network's features (cosine), a 16x16 grey
  thumbnail (correlation: the same overall picture) and the fine detail of a 28x28 grey
  thumbnail (correlation of what a 3x3 blur removes: the same texture and edges). Look-alike
  products on a plain background (two pairs of trousers in Fashion-MNIST) pass the first two
  and fail the third; a copy re-encoded as JPEG and resized passes all three.
- Exact duplicates have the same decoded pixels.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_SIMILARITY = 0.90   # cosine of the network's features, both images
PIXEL_SIMILARITY = 0.95     # correlation of the 16x16 grey thumbnails
DETAIL_SIMILARITY = 0.96    # correlation of the 28x28 thumbnails' high-pass detail
THUMB, DETAIL = 16, 28
# (set on the Fashion-MNIST demo set with planted copies, benchmarks/audit.py: copies score
# >= 0.967 on detail, distinct look-alikes <= 0.949)
IMBALANCE = 3.0             # largest / smallest class count worth a warning (as `graft data check`)
MAX_LISTED = 200            # pairs or items listed per kind (the counts cover all)


@dataclass
class Split:
    """What the audit needs of one data split."""
    name: str
    dataset: Any                     # for image names and pixels
    labels: np.ndarray               # [N]
    features: torch.Tensor | None    # [N, C] (any network's pooled features)
    thumbs: torch.Tensor             # [N, THUMB*THUMB], zero-mean unit-norm
    details: torch.Tensor            # [N, DETAIL*DETAIL], high-pass, zero-mean unit-norm
    digests: list[str]               # decoded-pixel hashes


def _unit(t: torch.Tensor) -> torch.Tensor:
    t = t.flatten()
    t = t - t.mean()
    return t / t.norm().clamp_min(1e-6)


def _thumb(grey: torch.Tensor, side: int) -> torch.Tensor:
    """[1, 1, H, W] -> [1, 1, side, side]: area averaging down, bilinear up."""
    if min(grey.shape[2:]) >= side:
        return F.adaptive_avg_pool2d(grey, side)
    return F.interpolate(grey, size=(side, side), mode="bilinear", align_corners=False)


def pixels_of(dataset, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Thumbnails, detail thumbnails and pixel hashes of every image of an ImageDataset
    (undecodable ones: zeros and '')."""
    from ..data.decode import DecodeError
    from ..progress import make_progress
    thumbs, digests = torch.zeros(len(dataset), THUMB * THUMB), []
    details = torch.zeros(len(dataset), DETAIL * DETAIL)
    with make_progress("img", disable=None if progress is None else not progress) as bar:
        task = bar.add_task("audit: pixels", total=len(dataset), rate="")
        for i in range(len(dataset)):
            try:
                img = dataset.decode(i)
            except DecodeError:
                digests.append("")
                bar.update(task, advance=1)
                continue
            digests.append(hashlib.blake2b(img.numpy().tobytes() + str(tuple(img.shape)).encode(),
                                           digest_size=12).hexdigest())
            grey = img.float().mean(0, keepdim=True)[None]
            thumbs[i] = _unit(_thumb(grey, THUMB))
            d = _thumb(grey, DETAIL)
            details[i] = _unit(d - F.avg_pool2d(d, 3, 1, 1, count_include_pad=False))
            bar.update(task, advance=1)
    return thumbs, details, digests


def label_issues(probs: torch.Tensor, labels: np.ndarray, classes: Sequence[str], names: Sequence[str],
                 split: str, how: str) -> dict[str, Any]:
    """Likely label errors from out-of-sample probabilities [N, K] (see the module note)."""
    y = torch.as_tensor(labels, dtype=torch.long)
    k = probs.shape[1]
    given = probs.gather(1, y[:, None])[:, 0]
    other = probs.clone()
    other.scatter_(1, y[:, None], -1.0)
    p_other, suggested = other.max(1)
    thresholds = torch.tensor([float(probs[y == j, j].mean()) if (y == j).any() else 1.0 for j in range(k)])
    suspect = (p_other >= thresholds[suggested]) & (p_other > given)
    margin = given - p_other
    order = torch.argsort(given, stable=True)
    rows = [{"split": split, "index": int(i), "name": names[int(i)], "given": classes[int(y[i])],
             "suggested": classes[int(suggested[i])], "p_given": round(float(given[i]), 4),
             "p_suggested": round(float(p_other[i]), 4), "margin": round(float(margin[i]), 4),
             "flagged": bool(suspect[i])} for i in order[:MAX_LISTED]]
    return {"split": split, "how": how, "flagged": int(suspect.sum()), "n": len(y), "ranked": rows}


def _pairs(a: Split, b: Split, same: bool) -> tuple[list[dict[str, Any]], int]:
    """Near-duplicate pairs between two splits (or within one), by both witnesses."""
    found: list[tuple[float, int, int, float]] = []
    fa = F.normalize(a.features.float(), dim=1) if a.features is not None else None
    fb = F.normalize(b.features.float(), dim=1) if b.features is not None else None
    for start in range(0, len(a.labels), 1024):
        stop = min(start + 1024, len(a.labels))
        pix = a.thumbs[start:stop] @ b.thumbs.T
        hit = (pix >= PIXEL_SIMILARITY) & (a.details[start:stop] @ b.details.T >= DETAIL_SIMILARITY)
        if fa is not None and fb is not None:
            feat = fa[start:stop] @ fb.T
            hit &= feat >= FEATURE_SIMILARITY
        if same:  # each pair once, never an image with itself
            rows = torch.arange(start, stop)[:, None]
            hit &= torch.arange(len(b.labels))[None, :] > rows
        for i, j in hit.nonzero().tolist():
            found.append((float(pix[i, j]), start + i, j, float(feat[i, j]) if fa is not None and fb is not None else None))
    found.sort(reverse=True)
    return [{"a": a.name, "a_index": i, "a_name": a.dataset.name(i), "b": b.name, "b_index": j,
             "b_name": b.dataset.name(j), "pixel_similarity": round(p, 4),
             "feature_similarity": None if f is None else round(f, 4),
             "same_label": bool(a.labels[i] == b.labels[j])} for p, i, j, f in found[:MAX_LISTED]], len(found)


def _exact(a: Split, b: Split, same: bool) -> tuple[list[dict[str, Any]], int]:
    where: dict[str, list[int]] = {}
    for j, d in enumerate(b.digests):
        if d:
            where.setdefault(d, []).append(j)
    found = [(i, j) for i, d in enumerate(a.digests) if d for j in where.get(d, ()) if not same or j > i]
    return [{"a": a.name, "a_index": i, "a_name": a.dataset.name(i), "b": b.name, "b_index": j,
             "b_name": b.dataset.name(j), "same_label": bool(a.labels[i] == b.labels[j])}
            for i, j in found[:MAX_LISTED]], len(found)


def duplicates(splits: Sequence[Split]) -> dict[str, Any]:
    """Exact and near duplicates within every split and across every pair of splits."""
    out: dict[str, Any] = {"exact": [], "near": [], "counts": {}}
    for x, a in enumerate(splits):
        for b in splits[x:]:
            same = a is b
            key = a.name if same else f"{a.name}/{b.name}"
            exact, n_exact = _exact(a, b, same)
            near, n_near = _pairs(a, b, same)
            exact_pairs = {(e["a_index"], e["b_index"]) for e in exact}
            near = [p for p in near if (p["a_index"], p["b_index"]) not in exact_pairs]
            out["exact"] += exact
            out["near"] += near
            out["counts"][key] = {"exact": n_exact, "near": max(0, n_near - n_exact), "across": not same}
    return out


def imbalance(splits: Sequence[Split], classes: Sequence[str]) -> dict[str, Any]:
    rows = {}
    for s in splits:
        counts = np.bincount(s.labels, minlength=len(classes))
        present = counts[counts > 0]
        ratio = float(present.max() / present.min()) if len(present) else 0.0
        rows[s.name] = {"counts": {c: int(n) for c, n in zip(classes, counts)}, "ratio": round(ratio, 2),
                        "empty": [c for c, n in zip(classes, counts) if n == 0], "flagged": ratio > IMBALANCE}
    return rows
