"""Linear probes on cached features: multinomial logistic regression with its L2 strength chosen
by stratified k-fold cross-validation, plus a nearest-class-mean baseline.

Features are standardised (mean 0, std 1 per dimension, fitted on the training part only).
The regression is fitted full-batch with L-BFGS in torch, all folds in one run, warm-started
along the path of decreasing L2 strengths (stopped once past the best): on a few thousand images and a few thousand
dimensions that is a fraction of a second per strength; larger data is cross-validated on a stratified subsample of
MAX_CV_SAMPLES. The final probe is fitted on all the data and returned as a plain
linear layer on the raw (unstandardised) features, so it can be put on the network as a head.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError

L2_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)  # per-sample penalty, strong to weak (the warm-start path)
PATH_PATIENCE = 2     # stop the path after this many weaker penalties that each cross-validate worse
MAX_CV_SAMPLES = 5000  # cross-validate on a stratified subsample of large data (the final fit uses all of it)


def _subsample(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most n rows, every class kept in proportion (seeded); all rows when there are fewer."""
    if len(y) <= n:
        return x, y
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max(2, round(n * (labels == c).mean()))]
                           for c in np.unique(labels)])
    keep.sort()
    return x[keep], y[keep]


@dataclass
class ProbeResult:
    depth: str
    dim: int
    cv_acc: float             # mean over folds, at the chosen L2 strength
    cv_std: float
    l2: float
    ncm_acc: float            # nearest class mean, same folds
    seconds: float
    folds: int
    by_l2: dict[str, float] = field(default_factory=dict)
    head: nn.Linear | None = None  # fitted on all the data, on raw features
    val_acc: float | None = None   # the head's accuracy on separate validation data, when given

    def to_json(self) -> dict[str, Any]:
        return {"depth": self.depth, "dim": self.dim, "cv_acc": round(self.cv_acc, 4), "cv_std": round(self.cv_std, 4),
                "l2": self.l2, "ncm_acc": round(self.ncm_acc, 4), "seconds": round(self.seconds, 2),
                "folds": self.folds, "cv_acc_by_l2": {k: round(v, 4) for k, v in self.by_l2.items()},
                **({"val_acc": round(self.val_acc, 4)} if self.val_acc is not None else {})}


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint index sets, each holding about 1/k of every class (seeded)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds]


def check_folds(labels: np.ndarray, classes: list[str], k: int) -> int:
    """The number of folds to use (k, fewer for small classes); a clear error when a class has one image."""
    counts = np.bincount(labels, minlength=len(classes))
    present = counts[counts > 0]
    if len(present) < 2:
        raise GraftError("the data holds fewer than two classes", "a classifier needs at least two class folders")
    small = [classes[i] for i in np.flatnonzero(counts == 1)]
    if small:
        raise GraftError(f"class {small[0]!r} has a single image, so it cannot be cross-validated "
                         "(stratified folds need two or more per class)", "add images to it or remove the class")
    return int(min(k, present.min()))


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    return mean, std


def fit_logreg(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, init: tuple | None = None,
               max_iter: int = 100, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on (standardised) x: mean cross-entropy + l2/2 |W|^2.

    x [n, d], or [F, n, d] for F independent problems (the folds of a cross-validation) fitted in one
    L-BFGS run on the sum of their losses: on a thousand images the fit is bound by Python's
    per-step overhead, so F problems at once cost about what one does. `weight` [F, n] (0 for
    padding rows) makes each problem's loss its own rows' mean."""
    batched = x.dim() == 3
    if not batched:
        x, y = x[None], y[None]
        init = None if init is None else (init[0][None], init[1][None])
    n_problems, n, d = x.shape
    weight = torch.ones(n_problems, n, dtype=x.dtype) if weight is None else weight.to(x.dtype)
    weight = (weight / weight.sum(1, keepdim=True)).reshape(-1)
    w = torch.zeros(n_problems, d, k, dtype=x.dtype) if init is None else init[0].clone()
    b = torch.zeros(n_problems, 1, k, dtype=x.dtype) if init is None else init[1].reshape(n_problems, 1, k).clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")
    flat_y = y.reshape(-1)

    def closure():
        opt.zero_grad()
        logits = torch.baddbmm(b, x, w).reshape(-1, k)
        loss = (F.cross_entropy(logits, flat_y, reduction="none") * weight).sum() + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach().reshape(n_problems, k)
    return (w, b) if batched else (w[0], b[0])


def _ncm_acc(xtr, ytr, xte, yte, k) -> float:
    means = torch.stack([xtr[ytr == c].mean(0) if (ytr == c).any() else torch.full_like(xtr[0], float("inf"))
                         for c in range(k)])
    pred = torch.cdist(xte, means).argmin(1)
    return float((pred == yte).float().mean())


def _fold_problems(x: torch.Tensor, y: torch.Tensor, parts: list[np.ndarray]):
    """Each fold's training part standardised on its own statistics and padded to one size, to be
    fitted together (fit_logreg's [F, n, d] form): (x [F, n, d], y [F, n], rows [F, n] 1 or 0 for
    padding, [(standardised test x, test y)] per fold)."""
    trains = [np.setdiff1d(np.arange(len(y)), test) for test in parts]
    n = max(len(t) for t in trains)
    xtr = torch.zeros(len(parts), n, x.shape[1])
    ytr = torch.zeros(len(parts), n, dtype=torch.long)
    rows = torch.zeros(len(parts), n)
    tests = []
    for f, (train, test) in enumerate(zip(trains, parts)):
        mean, std = _stats(x[train])
        xtr[f, :len(train)], ytr[f, :len(train)], rows[f, :len(train)] = _standardise(x[train], mean, std), y[train], 1
        tests.append((_standardise(x[test], mean, std), y[test]))
    return xtr, ytr, rows, tests


def probe(x: torch.Tensor, y: torch.Tensor, classes: list[str], depth: str = "", *, folds: int = 5, seed: int = 0,
          grid=L2_GRID, fit_final: bool = True) -> ProbeResult:
    """Cross-validated probe at one depth: CV accuracy (mean, std) at the best L2 strength, the
    nearest-class-mean CV accuracy, and (fit_final) the head fitted on all the data."""
    t0 = time.perf_counter()
    x_all, y_all = x.float(), y.long()
    k_classes = len(classes)
    k = check_folds(y_all.numpy(), classes, folds)
    x, y = _subsample(x_all, y_all, MAX_CV_SAMPLES, seed)
    labels = y.numpy()
    parts = stratified_folds(labels, k, seed)
    acc = np.zeros((len(grid), k))
    xtr, ytr, rows, tests = _fold_problems(x, y, parts)
    ncm = [_ncm_acc(xtr[f][rows[f] > 0], ytr[f][rows[f] > 0], xte, yte, k_classes) for f, (xte, yte) in enumerate(tests)]
    init = None
    for g, l2 in enumerate(grid):
        init = fit_logreg(xtr, ytr, k_classes, l2, init, weight=rows)
        for f, (xte, yte) in enumerate(tests):
            acc[g, f] = float(((xte @ init[0][f] + init[1][f]).argmax(1) == yte).float().mean())
        means = acc[:g + 1].mean(1)
        if g >= PATH_PATIENCE and (means[-PATH_PATIENCE:] < means.max()).all():
            break  # worse at each of the last weaker penalties: past the peak (the weak end converges slowest)
    grid, acc = grid[:len(means)], acc[:len(means)]
    best = int(np.argmax(means + 1e-9 * np.arange(len(grid))[::-1]))  # ties: the stronger penalty
    head = None
    if fit_final:
        head = final_head(x_all, y_all, k_classes, grid[best], grid[:best + 1])
    return ProbeResult(depth, int(x_all.shape[1]), float(means[best]), float(acc[best].std()), float(grid[best]),
                       float(np.mean(ncm)), time.perf_counter() - t0, k,
                       {f"{l2:g}": float(m) for l2, m in zip(grid, means)}, head)


def final_head(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, path=()) -> nn.Linear:
    """The probe fitted on all the data, folded into one Linear layer on the raw features:
    W' = W / std, b' = b - (mean / std) W."""
    mean, std = _stats(x)
    xs = _standardise(x, mean, std)
    init = None
    for step in (*path[:-1], l2):
        init = fit_logreg(xs, y, k, step, init)
    w, b = init
    layer = nn.Linear(x.shape[1], k)
    with torch.no_grad():
        layer.weight.copy_((w / std[:, None]).T)
        layer.bias.copy_(b - (mean / std) @ w)
    return layer


def out_of_fold_probs(x: torch.Tensor, y: torch.Tensor, k: int, l2: float = 1e-2, *, folds: int = 5,
                      seed: int = 0) -> torch.Tensor:
    """Class probabilities of every sample from a probe that never saw it (k-fold): what confident
    learning needs to tell a wrong label from a hard image (Northcutt et al., JAIR 2021)."""
    x, y = x.float(), y.long()
    probs = torch.zeros(len(y), k)
    parts = stratified_folds(y.numpy(), max(2, min(folds, int(np.bincount(y.numpy()).max()))), seed)
    xtr, ytr, rows, tests = _fold_problems(x, y, parts)
    w, b = fit_logreg(xtr, ytr, k, l2, weight=rows)
    for f, (test, (xte, _)) in enumerate(zip(parts, tests)):
        probs[test] = (xte @ w[f] + b[f]).softmax(1)
    return probs
