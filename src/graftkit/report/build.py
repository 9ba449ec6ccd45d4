"""Assemble the report of a run or an evaluation: one pass of the model over the data, then the
numbers (report.json), the audit (audit.json) and the page (report.html)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import atomic_open
from ..errors import GraftError
from ..train.logs import read_csv
from . import audit as auditing

GALLERY = 12       # top-loss images shown, each with its Grad-CAM
MOST_CONFUSED = 10
TEMPERATURE_TOLERANCE = 0.05   # |T - 1| below this is noise, not miscalibration
LABEL_L2 = 0.1     # probe penalty for finding label errors (on standardised features)


def run_report(run_dir: str | os.PathLike, data: str | os.PathLike | None = None, *,
               out: str | os.PathLike | None = None, trust: bool = False, cache_dir=None,
               progress: bool | None = None, device: str | None = None,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report of a `graft train` run folder. `data` (default: the run's validation data) is
    what the errors are shown on; the temperature is fitted on the validation data and stored in
    best.safetensors; the audit covers the training data, the validation data and `data`."""
    from ..meta import meta_of
    from ..package import load, update_meta
    from ..serve.calibration import calibration, store_temperature
    from ..serve.evaluate import score
    from ..serve.inference import preprocessing_of
    t0 = time.perf_counter()
    run = Path(run_dir)
    dense = _task_summary(run)
    if dense is not None:  # a detection or segmentation run has its own report (report.dense)
        from .dense import task_run_report
        return task_run_report(run, dense, data, out=out, trust=trust, log=log)
    if not (run / "summary.json").is_file() or not (run / "best.safetensors").is_file():
        raise GraftError(f"{run}: not a run folder (no summary.json and best.safetensors)",
                         "give the folder `graft train -o` wrote")
    try:
        summary = json.loads((run / "summary.json").read_text())
        where = summary.get("data") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise GraftError(f"{run / 'summary.json'}: not a run summary (corrupt JSON)",
                         "train again, or give the folder of an intact run") from None
    val, train = where.get("val"), where.get("train")
    shown = str(data) if data is not None else val
    package = run / "best.safetensors"
    model = load(package, trust=trust)
    model_meta = meta_of(model)
    doc: dict[str, Any] = {"kind": "run", "run": str(run), "summary": _run_summary(summary, model),
                           "history": read_csv(run / "log.csv")}
    kept = dict(batch_size=64, device=device, progress=progress, calibrated=False)
    val_scores = score(model, val, keep_features=shown == val, **kept) if val else None
    cal, kept_out = None, None
    if val_scores is not None:
        fitted = calibration(val_scores.logits, _targets(val_scores))
        kept_out = _not_worth_it(fitted)
        if kept_out is None:
            cal = fitted
            store_temperature(package, cal, fitted_on=val)
        elif model_meta.get("calibration"):  # an earlier report's temperature no longer holds
            update_meta(package, calibration=None)
        if log:
            log(f"calibration: temperature {fitted['temperature']:.3f} fitted on {val}, "
                + (f"stored in {package}" if kept_out is None else f"not applied: {kept_out}"))
    scores = val_scores if shown == val else (score(model, shown, keep_features=True, **kept) if shown else None)
    if scores is not None:
        doc.update(_errors(model, scores, shown))
        doc["calibration"] = _calibration(scores, cal, fitted_on=val, why=kept_out)
    else:
        doc["calibration"] = {"applied": False, "why": "the run had no validation data and no --data was given"}
    splits = [(n, p) for n, p in (("train", train), ("val", val), ("evaluated", shown if shown != val else None)) if p]
    scored = None if scores is None else ("val" if shown == val else "evaluated", scores)
    doc["audit"] = _audit(splits, scored, _feature_net(summary.get("model"), trust, preprocessing_of(model)), cache_dir, progress)
    return _write(doc, Path(out) if out else run / "report.html", t0)


def _task_summary(run: Path) -> dict[str, Any] | None:
    """The summary of a `graft train --task` run folder, else None."""
    from .dense import is_task_run
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return summary if isinstance(summary, dict) and is_task_run(summary) else None


def evaluation_report(model: nn.Module | str | os.PathLike, data, out_dir: str | os.PathLike, *,
                      trust: bool = False, progress: bool | None = None, device: str | None = None,
                      batch_size: int = 64) -> dict[str, Any]:
    """The report of scoring `model` on `data`: metrics, errors, calibration (with the package's
    temperature if it has one), and an audit of `data` from the model's own out-of-sample outputs.
    Writes metrics.json, confusion.png, report.json, audit.json and report.html into out_dir."""
    from ..models import resolve
    from ..serve.calibration import temperature_of
    from ..serve.evaluate import metrics, score, write_report
    from ..meta import meta_of
    t0 = time.perf_counter()
    model = resolve(model, trust=trust)
    scores = score(model, data, batch_size=batch_size, device=device, progress=progress, calibrated=False,
                   keep_features=True)
    write_report(metrics(scores), out_dir)
    doc: dict[str, Any] = {"kind": "evaluation", "summary": _model_summary(model), **_errors(model, scores, str(data))}
    t = temperature_of(meta_of(model))
    doc["calibration"] = _calibration(scores, None if t is None else {"temperature": t}, fitted_on=None)
    doc["audit"] = _audit([("evaluated", str(data))], ("evaluated", scores), None, None, progress)
    doc["seconds_scoring"] = round(scores.seconds, 2)
    return _write(doc, Path(out_dir) / "report.html", t0)


# -- sections ----------------------------------------------------------------------------------------

def _targets(scores) -> torch.Tensor:
    """Each image's true class as a model output index."""
    return torch.as_tensor(scores.mapping, dtype=torch.long)[scores.labels]


def _model_summary(model: nn.Module) -> dict[str, Any]:
    from ..meta import meta_of
    meta = meta_of(model)
    rep = meta.get("report") if isinstance(meta.get("report"), dict) else {}
    spec = meta.get("spec")
    return {"spec": spec if isinstance(spec, str) else f"converted {(spec or {}).get('converter', '?')} network",
            "classes": len(meta.get("classes") or []), "source": (meta.get("provenance") or {}).get("source"),
            "transplant": rep.get("summary"),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def _run_summary(summary: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    strategy = summary.get("strategy") or {}
    return {**_model_summary(model), "model": summary.get("model"),
            "strategy": {k: strategy.get(k) for k in ("asked", "chosen", "scenario", "why")},
            "train_images": summary.get("train_images"), "val_images": summary.get("val_images"),
            "epochs": summary.get("epochs"), "seconds": summary.get("seconds"),
            "seconds_measuring": summary.get("seconds_measuring"), "stop_reason": summary.get("stop_reason"),
            "best": summary.get("best"), "tuning": summary.get("tuning"), "groups": summary.get("groups"),
            # the budget asked for (a strategy's measuring came out of it before the plan's share)
            "time_budget": (summary.get("strategy") or {}).get("time_budget")
            or (summary.get("plan") or {}).get("time_budget"), "data": summary.get("data"),
            "warnings": summary.get("warnings", [])}


def _errors(model: nn.Module, scores, where: str) -> dict[str, Any]:
    """Metrics, per-class precision/recall/F1, the most-confused pairs and the top-loss gallery."""
    from ..serve.evaluate import metrics
    result = metrics(scores)
    conf = np.asarray(result["confusion"])
    classes = result["classes"]
    k = len(classes)
    per_class = []
    for i, c in enumerate(classes):
        tp, true, pred = conf[i, i], conf[i].sum(), conf[:k, i].sum()
        p = tp / pred if pred else None
        r = tp / true if true else None
        f1 = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
        per_class.append({"class": c, "precision": p, "recall": r, "f1": f1, "support": int(true)})
    pairs = [(int(conf[i, j]), classes[i], result["columns"][j]) for i in range(k)
             for j in range(conf.shape[1]) if i != j and conf[i, j]]
    pairs.sort(key=lambda t: -t[0])
    target = _targets(scores)
    losses = F.cross_entropy(scores.logits, target, reduction="none")
    top = torch.argsort(losses, descending=True)[:GALLERY]
    return {"data": where, "metrics": {k_: result[k_] for k_ in ("top1", "top5", "n", "k")},
            "per_class": per_class, "confusion": result["confusion"], "columns": result["columns"],
            "classes": classes, "most_confused": [{"true": t, "predicted": p, "count": n}
                                                  for n, t, p in pairs[:MOST_CONFUSED]],
            "gallery": _gallery(model, scores, top, losses)}


def _gallery(model: nn.Module, scores, rows: torch.Tensor, losses: torch.Tensor) -> list[dict[str, Any]]:
    from ..data.transforms import Normalize, eval_pipeline
    from ..serve.inference import classes_of, preprocessing_of, probabilities
    from .gradcam import grad_cam
    if not len(rows):
        return []
    pre = preprocessing_of(model)
    view, normalize = eval_pipeline(pre, normalize=False), Normalize(pre)
    ds = scores.dataset.dataset if hasattr(scores.dataset, "dataset") else scores.dataset
    images = torch.stack([view(ds.decode(int(scores.index[r]))) for r in rows])
    probs = probabilities(scores.logits[rows])
    pred = probs.argmax(1)
    names = classes_of(model) or [str(i) for i in range(scores.logits.shape[1])]
    try:
        cams = grad_cam(model, normalize(images), pred)
        cam_error = None
    except GraftError as e:
        cams, cam_error = None, str(e)
    out = []
    for n, r in enumerate(rows.tolist()):
        t = int(scores.mapping[int(scores.labels[r])])
        out.append({"name": ds.name(int(scores.index[r])), "true": names[t], "predicted": names[int(pred[n])],
                    "p_predicted": round(float(probs[n, pred[n]]), 4), "p_true": round(float(probs[n, t]), 4),
                    "loss": round(float(losses[r]), 4), "image": images[n],
                    "cam": None if cams is None else cams[n], "cam_error": cam_error})
    return out


def _not_worth_it(fitted: dict[str, Any]) -> str | None:
    """Why a fitted temperature is not applied, or None: one within 5 % of 1, or one that does not
    lower the validation ECE, changes nothing but the noise of the data it was fitted on."""
    t = fitted["temperature"]
    if abs(t - 1.0) < TEMPERATURE_TOLERANCE:
        return f"the model is calibrated already (T = {t:.3f}, within {TEMPERATURE_TOLERANCE:.0%} of 1)"
    if fitted["ece_after"] >= fitted["ece_before"]:
        return (f"T = {t:.3f} does not lower the validation ECE ({fitted['ece_before']:.3f} -> "
                f"{fitted['ece_after']:.3f})")
    return None


def _calibration(scores, fitted: dict[str, Any] | None, fitted_on: str | None, why: str | None = None) -> dict[str, Any]:
    from ..serve.calibration import calibration
    target = _targets(scores)
    if fitted is None:
        c = calibration(scores.logits, target, temperature=1.0)
        return {"applied": False, "why": why or "the model has no fitted temperature (a run's report fits one on "
                                                "its validation data)", "ece_before": c["ece_before"],
                "bins_before": c["bins_before"], "n": c["n"]}
    c = calibration(scores.logits, target, temperature=fitted["temperature"])
    return {"applied": True, "fitted_on": fitted_on, **c}


def _audit(splits: list[tuple[str, str]], scored: tuple[str, Any] | None, feature_net: tuple | None,
           cache_dir, progress) -> dict[str, Any]:
    """Label errors, duplicates and imbalance over the (name, data path) splits.

    scored: (split name, Scores) of the model on one split, whose out-of-sample probabilities
    show its label errors and whose captured features stand in when there is no feature network.
    feature_net: (network, description) whose pooled pre-logit features witness near duplicates
    and feed the cross-validated probe that finds label errors in the training data."""
    from ..advise import features as features_of
    from ..advise.probe import out_of_fold_probs
    from ..data import ImageDataset
    from ..serve.inference import probabilities
    t0 = time.perf_counter()
    parts, issues, how = [], [], None
    for name, path in splits:
        ds = ImageDataset.open(path)
        labels = np.asarray(ds.targets, dtype=np.int64)
        names = [ds.name(i) for i in range(len(ds))]
        thumbs, details, digests = auditing.pixels_of(ds, progress)
        feats, depths = None, {}
        if feature_net is not None:  # every default depth: one forward pass, and the strategy's cache
            depths = features_of(feature_net[0], ds, preprocessing=feature_net[2], cache_dir=cache_dir,
                                 progress=progress, description=f"audit: {name} features").at
            feats = depths["pre_logits"]
            how = feature_net[1]
        elif scored is not None and scored[0] == name and scored[1].features is not None:
            feats = torch.zeros(len(ds), scored[1].features.shape[1])
            feats[scored[1].index] = scored[1].features
            how = "the evaluated model's pre-logit features"
        parts.append(auditing.Split(name, ds, labels, feats, thumbs, details, digests))
        if scored is not None and scored[0] == name:
            s = scored[1]
            probs = torch.full((len(ds), s.logits.shape[1]), 1.0 / s.logits.shape[1])
            probs[s.index] = probabilities(s.logits)
            issues.append(auditing.label_issues(probs[:, s.mapping], labels, ds.classes, names, name,
                                                "the trained model's probabilities on data it did not train on"))
        elif name == "train" and depths:
            # Probes at every depth, averaged: no single depth is best on every data set, and the strong
            # penalty keeps a probe from learning the wrong labels it is meant to find.
            y = torch.as_tensor(labels)
            probs = sum(out_of_fold_probs(x, y, len(ds.classes), l2=LABEL_L2) for x in depths.values()) / len(depths)
            issues.append(auditing.label_issues(probs, labels, ds.classes, names, name,
                                                f"5-fold linear probes at {len(depths)} depths, averaged (out of fold)"))
    classes = list(parts[0].dataset.classes) if parts else []
    return {"features": how, "label_issues": issues, "duplicates": auditing.duplicates(parts),
            "imbalance": auditing.imbalance(parts, classes), "checks": _checks(splits),
            "splits": {p.name: len(p.labels) for p in parts}, "seconds": round(time.perf_counter() - t0, 2),
            "_datasets": {p.name: p.dataset for p in parts}}  # for pictures on the page, not for JSON


def _checks(splits: list[tuple[str, str]]) -> dict[str, Any]:
    """What `graft data check` finds in each split given as a folder or a list (packs were checked
    when they were packed)."""
    from ..data.check import check
    out = {}
    for name, path in splits:
        p = Path(path)
        if not (p.is_dir() or p.suffix in (".lst", ".csv")):
            out[name] = {"checked": False, "why": "a RecordIO pack (checked when it was packed)"}
            continue
        rep = check(p, min_size=1, progress=False)
        problems = [{"severity": x.severity, "kind": x.kind, "path": x.path, "message": x.message}
                    for x in rep.errors + rep.warnings]
        out[name] = {"checked": True, "images": rep.images, "errors": len(rep.errors),
                     "warnings": len(rep.warnings), "problems": problems[:auditing.MAX_LISTED]}
    return out


def _feature_net(model_ref, trust: bool, preprocessing: dict[str, Any]):
    """The pretrained network a run started from, for audit features: with the run's preprocessing,
    the strategy's cached features are reused."""
    if not model_ref:
        return None
    from ..models import resolve
    try:
        net = resolve(model_ref, trust=trust)
    except GraftError:
        return None
    from ..tune.head import find_head
    return (net, f"pre-logit features of {model_ref} (pretrained)", preprocessing) if find_head(net) else None


def _write(doc: dict[str, Any], html_path: Path, t0: float) -> dict[str, Any]:
    """report.html, report.json and audit.json beside it, each written atomically."""
    from .html import render
    html_path.parent.mkdir(parents=True, exist_ok=True)
    doc["_datasets"] = (doc.get("audit") or {}).pop("_datasets", {})
    doc["seconds_report"] = round(time.perf_counter() - t0, 2)
    page = render(doc)
    public = {k: v for k, v in doc.items() if k not in ("audit", "_datasets")}
    public["gallery"] = [{k: v for k, v in g.items() if k not in ("image", "cam")} for g in doc.get("gallery", [])]
    files = {"html": html_path, "json": html_path.with_name("report.json"), "audit": html_path.with_name("audit.json")}
    with atomic_open(files["json"], "w") as f:
        json.dump(public, f, indent=1, default=_plain)
    with atomic_open(files["audit"], "w") as f:
        json.dump(doc.get("audit", {}), f, indent=1, default=_plain)
    with atomic_open(files["html"], "w") as f:
        f.write(page)
    public["files"] = {k: str(v) for k, v in files.items()}
    return public


def _plain(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(type(x).__name__)
