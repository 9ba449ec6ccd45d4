"""ONNX export of task models, checked against onnxruntime: segmenters whole (logits), detectors whole
(post-processing included); TorchScript of a task model refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graftkit import tasks
from graftkit.errors import GraftError
from graftkit.serve.task_export import export_task as export, export_task_onnx
from graftkit.tasks.train import save

from conftest import require, run_graft


def _saved(tmp_path, task, head, k=3):
    torch.manual_seed(0)
    net = tasks.build(task, "lite0", k, head=head, size=64)
    save(net, tmp_path / "run", [f"c{i}" for i in range(k)])
    return tmp_path / "run"


def _onnx_meta(path):
    onnx = require("onnx")
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["graftkit"])


@pytest.mark.parametrize("head", ["fpn", pytest.param("deeplabv3", marks=pytest.mark.slow)])
def test_segmenter_exports_whole_and_matches_onnxruntime(tmp_path, head):
    torch.set_num_threads(1)
    ort = require("onnxruntime")
    run = _saved(tmp_path, "segment", head)
    (done,) = export(str(run), onnx=tmp_path / "seg.onnx")
    assert done["task"] == "segment" and done["checked_batches"] == [1, 3] and done["max_abs_err"] < 1e-4
    # an independent check on a batch size the export never saw
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    (got,) = ort.InferenceSession(str(tmp_path / "seg.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x.numpy()})
    with torch.no_grad():
        ref = tasks.load(run)(x).numpy()
    assert got.shape == (2, 3, 64, 64) and np.abs(got - ref).max() < 1e-4
    meta = _onnx_meta(tmp_path / "seg.onnx")
    assert meta["head"] == head and meta["classes"] == ["c0", "c1", "c2"] and meta["size"] == 64


@pytest.mark.slow
@pytest.mark.parametrize("head", ["fcos", "retinanet", "fasterrcnn"])
def test_detectors_export_with_post_processing(tmp_path, head):
    torch.set_num_threads(1)
    ort = require("onnxruntime")
    net = tasks.load(_saved(tmp_path, "detect", head))
    # an untrained RetinaNet scores ~0.01 everywhere: spread its class scores and let every candidate through,
    # so there is something to compare
    (net.model.roi_heads if head == "fasterrcnn" else net.model).score_thresh = 0.0
    if head == "retinanet":
        torch.nn.init.normal_(net.model.head.classification_head.cls_logits.weight, std=0.3)
    done = export_task_onnx(net, tmp_path / "det.onnx")
    assert done["detections"] > 0 and done["max_abs_err"] < 1e-3
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7))
    boxes, scores, labels = ort.InferenceSession(str(tmp_path / "det.onnx"),
                                                 providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = net([x])[0]
    assert len(boxes) == len(ref["boxes"]) > 0
    # the order of equal scores is each runtime's own: compare sorted scores, label counts and box sets
    assert np.abs(np.sort(scores) - np.sort(ref["scores"].numpy())).max() < 1e-4
    assert sorted(labels.tolist()) == sorted(ref["labels"].tolist())
    assert np.abs(np.sort(boxes, 0) - np.sort(ref["boxes"].numpy(), 0)).max() < 1e-2


@pytest.mark.slow
def test_detector_that_finds_nothing_is_not_written_unchecked(tmp_path):
    net = tasks.load(_saved(tmp_path, "detect", "retinanet"))   # untrained: every score below 0.05
    with pytest.raises(GraftError, match="cannot be checked"):
        export_task_onnx(net, tmp_path / "det.onnx")
    assert not list(tmp_path.glob("*.onnx*"))


def test_torchscript_of_a_task_model_is_one_line_with_the_fix(tmp_path):
    run = _saved(tmp_path, "segment", "fpn")
    with pytest.raises(GraftError, match="TorchScript export of detection/segmentation models.*use --onnx"):
        export(str(run), torchscript=tmp_path / "x.pt")
    r = run_graft("export", run, "--torchscript", tmp_path / "x.pt")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "use --onnx" in r.stderr
    assert not list(tmp_path.glob("x.pt*"))
