"""Dense runs get what classification runs get: an exact resume (also after kill -9), log.csv, summary.json,
curves.png, the HTML report, and `graft evaluate` on a task model."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from graftkit import tasks
from graftkit.errors import GraftError
from graftkit.train import RunInterrupted

from conftest import run_graft

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    tasks.write_scenes(root / "s", train=8, val=4, size=64, sides=(14, 30))
    return root / "s"


def _plan(**kw):
    plan = tasks.task_plan(batch_size=4, lr=2e-3)
    for k, v in kw.items():
        setattr(plan, k, v)
    return plan


def tiny() -> nn.Module:
    """A small user network (conv + BatchNorm + ReLU stages, then a classifier), the same at every call: the
    quick tests need a backbone that costs little; the slow one trains lite0."""
    torch.manual_seed(0)
    stage = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
    return nn.Sequential(stage(3, 8), stage(8, 16), stage(16, 24), stage(24, 32), stage(32, 48), nn.Flatten(0))


def _fit(task, scenes, out, model=None, **kw):
    torch.set_num_threads(1)
    kw.setdefault("plan", _plan())
    kw.setdefault("max_iter", 6)
    return tasks.fit_task(task, model or tiny(), scenes / "train", scenes / "val", out_dir=out, size=64, seed=3,
                          **kw)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_segment_run_interrupted_mid_epoch_resumes_bit_identical(scenes, tmp_path):
    full = _fit("segment", scenes, tmp_path / "full")
    with pytest.raises(RunInterrupted, match="--resume"):
        _fit("segment", scenes, tmp_path / "cut", interrupt_after=3)     # iteration 3 is in the middle of epoch 2
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = _fit("segment", scenes, tmp_path / "cut", resume=True)
    _assert_same_weights(tmp_path / "full", tmp_path / "cut")
    assert resumed["iterations"] == full["iterations"] == 6
    drop = ("seconds", "train_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _csv(tmp_path / "cut" / "log.csv")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _csv(tmp_path / "full" / "log.csv")]
    rows = _csv(tmp_path / "full" / "log.csv")
    assert list(rows[0]) == ["epoch", "iteration", "lr", "train_loss", "val_miou", "val_pixel_accuracy", "seconds",
                             "train_seconds"]
    assert len(rows) == 3 and all(0 <= float(r["val_miou"]) <= 1 for r in rows)
    s = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s["task"] == "segment" and s["val"]["ignore_index"] == 255 and set(s["val"]["iou"]) == set(s["classes"])
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000


def test_resume_refuses_what_it_cannot_continue(scenes, tmp_path):
    with pytest.raises(GraftError, match="no checkpoint to resume from"):
        _fit("segment", scenes, tmp_path / "none", resume=True)
    with pytest.raises(RunInterrupted):
        _fit("segment", scenes, tmp_path / "cut", interrupt_after=1)
    with pytest.raises(GraftError, match="already holds a training run.*--resume"):
        _fit("segment", scenes, tmp_path / "cut")
    with pytest.raises(GraftError, match="checkpoint is of a segment run, not --task detect"):
        _fit("detect", scenes, tmp_path / "cut", resume=True)


KILLED = """
import sys, torch
sys.path.insert(0, {src!r})
torch.set_num_threads(1)
from graftkit import tasks
plan = tasks.task_plan(batch_size=4, lr=2e-3)
plan.checkpoint_every = 1
tasks.fit_task("detect", "lite0", {train!r}, {val!r}, out_dir={out!r}, size=64, seed=3, max_iter=8, plan=plan)
"""


@pytest.mark.slow
def test_detect_run_killed_with_sigkill_resumes_to_the_same_weights(scenes, tmp_path):
    """kill -9 gives the run no chance to save anything: the resume starts from the last periodic checkpoint
    (written atomically, so never half-written) and still ends bit-identical to an uninterrupted run."""
    cut = tmp_path / "cut"
    script = KILLED.format(src=str(SRC), train=str(scenes / "train"), val=str(scenes / "val"), out=str(cut))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (cut / "log.csv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # epoch 1 (2 iterations) is done and checkpointed; epoch 2 is running
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err[-500:]}"
    assert not (cut / "model.safetensors").exists()
    plan = _plan(checkpoint_every=1)
    _fit("detect", scenes, cut, "lite0", plan=plan, max_iter=8, resume=True)
    _fit("detect", scenes, tmp_path / "full", "lite0", plan=_plan(checkpoint_every=1), max_iter=8)
    _assert_same_weights(tmp_path / "full", cut)
    rows = _csv(cut / "log.csv")
    assert len(rows) == 4 and rows[-1]["iteration"] == "8" and float(rows[-1]["val_ap50"]) >= 0


SMALL = "timm:mobilenetv3_small_050"   # an architecture spec: a saved model rebuilds it (random init, no download)


@pytest.fixture(scope="module")
def det_run(scenes, tmp_path_factory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("det") / "run"
    s = tasks.fit_task("detect", SMALL, scenes / "train", scenes / "val", out_dir=out, size=64, seed=1, max_iter=4,
                       pretrained=False, plan=_plan())
    return out, s


def test_detect_report_shows_curves_and_coco_metrics(det_run):
    from graftkit.report import run_report
    out, s = det_run
    done = run_report(out)
    page = (out / "report.html").read_text()
    doc = json.loads((out / "report.json").read_text())
    assert doc["task"] == "detect" and doc["metrics"]["ap50"] == s["val"]["ap50"]
    assert set(doc["metrics"]["per_class"]) <= set(s["classes"]) and len(doc["history"]) == 2
    for what in ("AP50", "AP75", "Per class (AP@[.50:.95])", "Curves", "pycocotools"):
        assert what in page, what
    assert page.count("data:image/png;base64,") == 1 + len(doc["gallery"]) and len(doc["gallery"]) == 4
    assert done["files"]["html"].endswith("report.html")


@pytest.mark.slow
def test_evaluate_a_detector_gives_its_validation_ap_and_json(det_run, scenes):
    out, s = det_run
    r = run_graft("evaluate", out, scenes / "val", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["task"] == "detect" and got["images"] == 4
    for k in ("ap", "ap50", "ap75", "per_class"):
        assert got[k] == s["val"][k], k
    r = run_graft("evaluate", out, scenes / "nowhere")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a detection set" in r.stderr


def test_evaluate_a_segmenter_is_miou_of_its_masks_with_the_ignore_index(scenes, tmp_path):
    """evaluate_task's mIoU equals numpy's over the model's own argmax masks, and names the ignore index."""
    import numpy as np
    from graftkit.tasks.data import MaskFolder
    from graftkit.tasks.metrics import miou_numpy
    torch.set_num_threads(1)
    s = tasks.fit_task("segment", SMALL, scenes / "train", scenes / "val", out_dir=tmp_path / "run", size=64,
                       max_iter=2, pretrained=False, plan=_plan())
    got = tasks.evaluate_task(tmp_path / "run", scenes / "val")
    assert got["miou"] == pytest.approx(s["val"]["miou"], abs=1e-12) and got["ignore_index"] == 255
    import shutil
    from PIL import Image
    val = shutil.copytree(scenes / "val", tmp_path / "val")
    first = sorted((val / "masks").glob("*.png"))[0]
    m = np.array(Image.open(first))
    m[:20] = 255                                     # an ignored band: it must count for neither side
    Image.fromarray(m).save(first)
    got = tasks.evaluate_task(tmp_path / "run", val)
    net = tasks.load(tmp_path / "run")
    ds = MaskFolder(val, size=64, train=False, num_classes=len(s["classes"]))
    preds, targets = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            preds.append(net(x[None]).argmax(1)[0].numpy())
            targets.append(y.numpy())
    assert (targets[0] == 255).sum() >= 20 * 64 // 2
    assert got["miou"] == pytest.approx(miou_numpy(preds, targets, len(s["classes"])), abs=1e-9)
    assert got["pixels"] == sum(int((t != 255).sum()) for t in targets)


def _mobilenet_caffemodel(path: Path) -> Path:
    """A caffemodel for the MobileNet fixture prototxt, written by graftkit's Caffe writer with seeded weights (the
    shared fixture's caffemodel holds seeded weights too, and 17 MB stay out of the repository)."""
    import numpy as np
    from graftkit.formats.caffe import net_layers, write_caffemodel
    from graftkit.formats.caffe_prototxt import parse_file
    from graftkit.nets import caffe
    from conftest import fixture
    proto = fixture("caffe/mobilenet.deploy.prototxt")
    shapes = {k: tuple(v.shape) for k, v in caffe.convert([proto]).state_dict().items()}
    rng = np.random.default_rng(0)
    layers = []
    for layer in net_layers(parse_file(proto)):
        key, kind = layer["name"].replace("/", "_"), layer["type"]
        if kind == "BatchNorm":
            n = shapes[f"{key}.running_mean"]
            blobs = [rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n), np.ones(1)]
        elif f"{key}.weight" in shapes:
            w = shapes[f"{key}.weight"]
            fan = max(1, int(np.prod(w[1:])))
            blobs = [rng.normal(0, (2 / fan) ** 0.5 if kind != "Scale" else 0.1, w) + (kind == "Scale")]
            if f"{key}.bias" in shapes:
                blobs.append(rng.normal(0, 0.01, shapes[f"{key}.bias"]))
        else:
            continue
        layers.append((layer["name"], kind, [b.astype(np.float32) for b in blobs]))
    return write_caffemodel(path, layers)


def test_caffe_mobilenet_with_its_caffemodel_is_a_detector_backbone_end_to_end(scenes, tmp_path):
    """Caffe files (prototxt + a caffemodel) converted, cut into features, trained as an FCOS backbone, saved,
    evaluated and drawn; the backbone starts from the caffemodel's tensors."""
    from graftkit import package
    from graftkit.nets import caffe
    from graftkit.tasks.predict import predict
    from conftest import fixture
    torch.set_num_threads(1)
    model = _mobilenet_caffemodel(tmp_path / "mobilenet.caffemodel")
    net = caffe.convert([fixture("caffe/mobilenet.deploy.prototxt"), model])
    pkg = tmp_path / "mobilenet.safetensors"
    package.save(net, pkg)
    source = load_file(str(pkg))
    det = tasks.build("detect", str(pkg), 10, size=64)
    body = {k.split("model.backbone.fb.body.", 1)[1]: v for k, v in det.state_dict().items()
            if k.startswith("model.backbone.fb.body.")}
    shared = [k for k in body if k in source]
    assert len(shared) > 50 and all(torch.equal(body[k], source[k]) for k in shared)
    s = tasks.fit_task("detect", str(pkg), scenes / "train", scenes / "val", out_dir=tmp_path / "run", size=64,
                       max_iter=2, plan=_plan())
    assert s["iterations"] == 2 and s["transfer"]["backbone_tensors"] > 50
    got = tasks.evaluate_task(tmp_path / "run", scenes / "val")
    assert got["ap50"] == s["val"]["ap50"]
    res = predict(tmp_path / "run", [str(scenes / "val" / "images" / "00000.png")], out_dir=tmp_path / "drawn",
                  score_thresh=0.0)
    assert res[0]["boxes"] and Path(res[0]["drawn"]).is_file()
