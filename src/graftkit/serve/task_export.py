"""ONNX export of detection and segmentation models (graftkit.tasks), checked with onnxruntime before it is kept.

What is exported (the README says the same):
- a segmenter (FPN or DeepLabV3 head): the whole model. Input "image": N x 3 x S x S float32 RGB in [0, 1]
  (normalisation is inside the graph), dynamic batch; output "logits": N x K x S x S (class 0 = background).
- a detector (FCOS, RetinaNet, Faster R-CNN): the whole torchvision graph, post-processing included (resize
  to S, anchors or proposals, RoI pooling, box decoding, score threshold, top-k, batched NMS) at a fixed
  input size, one image per run. Input "image": 3 x S x S float32 RGB in [0, 1]; outputs "boxes" (D x 4,
  x1 y1 x2 y2 in that S x S frame), "scores" (D), "labels" (D, 0..K-1; Faster R-CNN's background shift
  is inside the graph). The check compares the detections clear of the score threshold.
TorchScript export of task models is refused with the fix (use ONNX).
A file whose onnxruntime outputs differ from PyTorch's on probe inputs is never written.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_path
from ..errors import GraftError
from .export import DEFAULT_OPSET, compare

EXPORTABLE_DETECTORS = ("fcos", "retinanet", "fasterrcnn")
MARGIN = 1e-3   # detections this close to the score threshold may fall either side of it in two runtimes


class _Detections(nn.Module):
    """One image -> (boxes, scores, labels): a fixed output order (torchvision's dicts differ by head)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        d = self.net([image])[0]
        return d["boxes"], d["scores"], d["labels"]


def _meta(net: nn.Module, what: str) -> str:
    args = net.build_args
    return json.dumps({"task": net.task, "head": net.head_name, "classes": net.classes, "size": args["size"],
                       "backbone": args["model"], "exported": what})


def _export(module: nn.Module, args: tuple, tmp: Path, opset: int, inputs: list[str], outputs: list[str],
            axes: dict | None) -> None:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GraftError(f"ONNX export at opset {opset} failed: {first[:200]}", "try another --opset") from None


def _stamp(tmp: Path, meta: str) -> None:
    import onnx
    proto = onnx.load(str(tmp))
    proto.doc_string = "exported by graftkit"
    entry = proto.metadata_props.add()
    entry.key, entry.value = "graftkit", meta
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))


def _check_detections(got: list, ref: dict, thresh: float) -> dict[str, float]:
    """The detections clear of the score threshold must be the same ones: equal count, and each PyTorch
    detection matched to an ONNX one of its label (nearest box; the order of equal scores is the runtime's)."""
    ours = torch.from_numpy(got[1]) >= thresh + MARGIN
    theirs = ref["scores"] >= thresh + MARGIN
    n = int(theirs.sum())
    if int(ours.sum()) != n:
        raise GraftError(f"the ONNX detector keeps {int(ours.sum())} detections where PyTorch keeps {n}; nothing "
                         "was written", "try another --opset")
    if not n:
        return {"max_abs_err": 0.0, "max_rel_err": 0.0, "detections": 0}
    ob, os_, ol = torch.from_numpy(got[0])[ours], torch.from_numpy(got[1])[ours], torch.from_numpy(got[2])[ours]
    rb, rs, rl = ref["boxes"][theirs], ref["scores"][theirs], ref["labels"][theirs]
    dist = (ob[None] - rb[:, None]).abs().amax(-1) + (os_[None] - rs[:, None]).abs()
    dist[rl[:, None] != ol[None]] = float("inf")
    order = []
    for i in range(n):                      # greedy: each PyTorch detection takes its nearest free ONNX one
        j = int(dist[i].argmin())
        if not torch.isfinite(dist[i, j]):
            raise GraftError("the ONNX detector's labels differ from PyTorch's; nothing was written",
                             "try another --opset")
        order.append(j)
        dist[:, j] = float("inf")
    b = compare(ob[order], rb, "ONNX detector's boxes (onnxruntime)")
    s = compare(os_[order], rs, "ONNX detector's scores (onnxruntime)")
    return {"max_abs_err": max(b["max_abs_err"], s["max_abs_err"]),
            "max_rel_err": max(b["max_rel_err"], s["max_rel_err"]), "detections": n}


def export_task_onnx(model: str | os.PathLike | nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                     dynamic_batch: bool = True, trust: bool = False, probes: list[torch.Tensor] | None = None
                     ) -> dict[str, Any]:
    """Write a task model (a `graft train --task` folder, or a loaded one) as ONNX at `path` once onnxruntime
    reproduces PyTorch on probe images (random ones unless `probes`, images 3 x S x S in [0, 1], are given)."""
    import onnxruntime as ort
    from ..tasks.train import load
    net = (load(model, trust=trust) if isinstance(model, (str, os.PathLike)) else model).cpu().eval()
    size = net.build_args["size"]
    path = Path(path)
    gen = torch.Generator().manual_seed(0)
    probes = probes or [torch.rand(3, size, size, generator=gen) for _ in range(3)]
    checks = []
    if net.task == "segment":
        what = "whole segmenter: image N x 3 x S x S in [0, 1] -> logits N x K x S x S"
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        batches = [torch.stack(probes[:1]), torch.stack(probes)] if dynamic_batch else [torch.stack(probes[:1])]
        with atomic_path(path) as tmp:
            _export(net, (torch.stack(probes[:2]) if dynamic_batch else batches[0],), tmp, opset, ["image"],
                    ["logits"], axes)
            _stamp(tmp, _meta(net, what))
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            for x in batches:
                (got,) = session.run(["logits"], {"image": x.numpy()})
                with torch.no_grad():
                    checks.append(compare(torch.from_numpy(got), net(x), "ONNX segmenter (onnxruntime)"))
        shape, checked = [batches[-1].shape[0], 3, size, size], [int(b.shape[0]) for b in batches]
    else:
        if net.head_name not in EXPORTABLE_DETECTORS:
            raise GraftError(f"ONNX export of a {net.head_name} detector is not supported (its RoI stage does not "
                             "export)", "train with --head fcos or --head retinanet to export, or serve the "
                             "PyTorch model with `graft predict`")
        what = ("whole detector with post-processing: image 3 x S x S in [0, 1] -> boxes D x 4 (x1 y1 x2 y2, "
                "S x S frame), scores D, labels D (0..K-1)")
        roi = getattr(net.model, "roi_heads", None)
        thresh = float(roi.score_thresh if roi is not None else net.model.score_thresh)
        with atomic_path(path) as tmp:
            _export(_Detections(net).eval(), (probes[0],), tmp, opset, ["image"], ["boxes", "scores", "labels"], None)
            _stamp(tmp, _meta(net, what))
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            for x in probes:
                got = session.run(["boxes", "scores", "labels"], {"image": x.numpy()})
                with torch.no_grad():
                    checks.append(_check_detections(got, net([x])[0], thresh))
            if not sum(c["detections"] for c in checks):   # inside atomic_path: nothing is written
                raise GraftError(f"the detector finds nothing above its score threshold ({thresh:g}) on the probe "
                                 "images, so the export cannot be checked; nothing was written",
                                 "give images with objects: --probe IMAGE (API: probes=...)")
        shape, checked = [3, size, size], [1] * len(probes)
    check = {k: max(c[k] for c in checks) for k in ("max_abs_err", "max_rel_err")}
    if net.task == "detect":
        check["detections"] = sum(c["detections"] for c in checks)
    return {"path": str(path), "format": "onnx", "opset": opset, "task": net.task, "head": net.head_name,
            "exported": what, "input_shape": shape, "checked_batches": checked,
            "dynamic_batch": bool(dynamic_batch and net.task == "segment"), **check}


def export_task(model: str | os.PathLike, *, onnx: str | os.PathLike | None = None,
                torchscript: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                trust: bool = False, probes: list[torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """`graft export` of a `graft train --task` folder: ONNX only."""
    if torchscript is not None:
        raise GraftError(f"{model}: TorchScript export of detection/segmentation models is not available",
                         "use --onnx OUT.onnx")
    if onnx is None:
        raise GraftError("nothing to export", "give --onnx OUT.onnx")
    return [export_task_onnx(model, onnx, opset=opset, dynamic_batch=dynamic_batch, trust=trust, probes=probes)]
