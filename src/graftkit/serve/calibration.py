"""Calibration: how far predicted probabilities are from observed accuracy, and the one-number fix.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides the logits by a scalar T fitted on held-out data by minimising the negative
log-likelihood. It never changes a prediction, only how sure it claims to be. A fitted T
is stored in the package (meta["calibration"]) and applied by inference.MainOutput, so
`graft predict`, `graftkit.load` and the exported ONNX file all give calibrated probabilities.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

BINS = 15  # the usual choice for expected calibration error (Guo et al.)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the cross-entropy of logits / T (fitted on log T, so T stays positive)."""
    logits, labels = logits.detach().double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def are_probabilities(scores: torch.Tensor) -> bool:
    """The scores [N, K] already are probabilities (a converted graph that ends in Softmax, as many
    Caffe, Keras and TFLite classifiers do)."""
    scores = scores.float()
    return bool(len(scores)) and bool(scores.min() >= 0) and bool(torch.allclose(scores.sum(1), torch.ones(()), atol=1e-3))


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins: mean confidence, accuracy and count of each non-empty bin."""
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    index = (conf * bins).long().clamp(max=bins - 1)
    rows = []
    for b in range(bins):
        take = index == b
        n = int(take.sum())
        if n:
            rows.append({"low": b / bins, "high": (b + 1) / bins, "confidence": float(conf[take].double().mean()),
                         "accuracy": float(right[take].mean()), "count": n})
    return rows


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""
    n = len(labels)
    return sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in reliability(probs, labels, bins)) / max(n, 1)


def calibration(logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None) -> dict[str, Any]:
    """ECE and reliability bins before and after dividing by `temperature` (fitted here when None).
    Scores that already are probabilities (a network ending in Softmax) are tempered on their logarithm:
    softmax(log p / T) is the same family, and p / T would not even sum to one."""
    kind = "probabilities" if are_probabilities(logits) else "logits"
    if kind == "probabilities":
        logits = logits.float().clamp_min(1e-12).log()
    t = fit_temperature(logits, labels) if temperature is None else float(temperature)
    before, after = logits.softmax(1), (logits / t).softmax(1)
    return {"temperature": t, "scores": kind, "ece_before": ece(before, labels), "ece_after": ece(after, labels),
            "nll_before": float(F.cross_entropy(logits, labels)), "nll_after": float(F.cross_entropy(logits / t, labels)),
            "bins_before": reliability(before, labels), "bins_after": reliability(after, labels), "n": len(labels)}


def temperature_of(meta: dict[str, Any]) -> float | None:
    """The package's fitted temperature, if it has one (a malformed value counts as none)."""
    t = (meta.get("calibration") or {}).get("temperature") if isinstance(meta.get("calibration"), dict) else None
    return float(t) if isinstance(t, (int, float)) and 0.01 <= t <= 100 else None


def store_temperature(package_path: str | os.PathLike, result: dict[str, Any], fitted_on: str) -> None:
    """Write the fitted temperature into the package's metadata (the file is replaced atomically)."""
    from ..package import update_meta
    update_meta(package_path, calibration={
        "temperature": result["temperature"], "scores": result.get("scores", "logits"), "fitted_on": fitted_on,
        "n": result["n"],
        "ece_before": round(result["ece_before"], 6), "ece_after": round(result["ece_after"], 6)})
