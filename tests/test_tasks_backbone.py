"""Multi-scale backbones from any model graftkit builds, and the `graft` verbs for dense tasks."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from graftkit import tasks
from graftkit.errors import GraftError

from conftest import fixture, run_graft


def _shapes(fb, size=64):
    return {k: tuple(v.shape) for k, v in fb(torch.rand(2, 3, size, size)).items()}


def test_timm_backbone_is_cut_at_its_stages():
    fb = tasks.backbone("lite0", pretrained=False)
    assert fb.mode == "fx" and fb.strides == [4, 8, 16, 32] and fb.out_channels_list == [24, 40, 112, 320]
    assert _shapes(fb) == {"4": (2, 24, 16, 16), "8": (2, 40, 8, 8), "16": (2, 112, 4, 4), "32": (2, 320, 2, 2)}
    names = {n for n, _ in fb.body.named_parameters()}
    assert "conv_stem.weight" in names and not any(n.startswith("classifier") for n in names)


class Plain(nn.Module):
    """A user's own network (no feature_info, not timm): conv stages, then a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.s2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.s3 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU())
        self.s4 = nn.Sequential(nn.Conv2d(24, 32, 3, 2, 1), nn.ReLU())
        self.s5 = nn.Sequential(nn.Conv2d(32, 48, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = self.s5(self.s4(self.s3(self.s2(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def test_any_module_is_cut_by_probing_and_the_classifier_never_runs():
    m = Plain()
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    fb = tasks.backbone(m, strides=(8, 16, 32), input_size=64)
    assert fb.mode == "hooks" and fb.out_channels_list == [24, 32, 48]
    assert fb.nodes == [("s3.1", 0), ("s4.1", 0), ("s5.1", 0)]       # after each stage's ReLU
    x = torch.rand(1, 3, 64, 64)
    feats = fb(x)
    with torch.no_grad():
        expect = Plain()
        expect.load_state_dict(ref)
        want = expect.s3(expect.s2(expect.stem(x)))
    assert torch.allclose(feats["8"], want)
    assert "fc.weight" in fb.source["dropped_tensors"] and isinstance(fb.body.fc, nn.Identity)


def test_missing_stride_is_one_clear_error():
    with pytest.raises(GraftError, match=r"no feature map at stride 64 \(strides found: 2, 4, 8, 16, 32\)"):
        tasks.backbone(Plain(), strides=(8, 64), input_size=64)


def test_torchvision_spec_backbone():
    fb = tasks.backbone("torchvision:resnet18", pretrained=False, strides=(8, 16, 32))
    assert fb.out_channels_list == [128, 256, 512]
    assert _shapes(fb, 64)["32"] == (2, 512, 2, 2)


def _caffe_package(tmp_path, name="mobilenet"):
    from graftkit import package
    from graftkit.nets import caffe
    net = caffe.convert([fixture(f"caffe/{name}.deploy.prototxt")])   # the prototxt's fillers: no caffemodel here
    path = tmp_path / f"{name}.safetensors"
    package.save(net, path)
    return path


def test_caffe_googlenet_is_cut_at_its_inception_outputs(tmp_path):
    fb = tasks.backbone(_caffe_package(tmp_path, "googlenet"), strides=(8, 16, 32))
    assert fb.mode == "blobs" and [n for n, _ in fb.nodes] == ["inception_3b/output", "inception_4e/output",
                                                              "inception_5b/output"]
    assert fb.out_channels_list == [480, 832, 1024] and fb.bgr


def test_caffe_mobilenet_detector_end_to_end_on_scenes(tmp_path):
    torch.set_num_threads(1)
    pkg = _caffe_package(tmp_path)
    tasks.write_scenes(tmp_path / "s", train=8, val=4, size=64, sides=(14, 30))
    s = tasks.fit_task("detect", str(pkg), tmp_path / "s/train", tmp_path / "s/val", max_iter=3, size=64,
                       plan=tasks.task_plan(batch_size=4), out_dir=tmp_path / "run", val_every=0)
    assert s["iterations"] == 3 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in s["history"])
    assert s["transfer"]["backbone_tensors"] > 50
    net = tasks.load(tmp_path / "run")
    out = net([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


@pytest.mark.slow
def test_cli_scenes_check_and_train_segment(tmp_path):
    r = run_graft("data", "scenes", tmp_path / "sc", "--train", "8", "--val", "4", "--size", "64")
    assert r.returncode == 0, r.stderr
    r = run_graft("data", "check", tmp_path / "sc" / "train", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["errors"] == 0
    r = run_graft("train", "--task", "segment", "--train", tmp_path / "sc/train", "--val", tmp_path / "sc/val",
                  "-o", tmp_path / "run", "--max-iter", "2", "--size", "64", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "val mIoU" in r.stderr and (tmp_path / "run" / "model.safetensors").is_file()
    rep = json.loads((tmp_path / "run" / "transfer.json").read_text())
    assert rep["backbone"]["model"] == "lite0" and rep["summary"]["new_tensors"] > 0


def test_cli_check_reports_annotation_mistakes_in_one_line_each(tmp_path):
    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "labels").mkdir()
    from PIL import Image
    Image.new("RGB", (20, 20)).save(tmp_path / "y" / "images" / "a.png")
    (tmp_path / "y" / "classes.txt").write_text("cat\n")
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0 0.2\n")
    r = run_graft("data", "check", tmp_path / "y", "--json")
    assert r.returncode == 1
    issue = json.loads(r.stdout)["issues"][0]
    assert issue["problem"] == "degenerate" and issue["where"].endswith("a.txt line 1")
    r = run_graft("train", "--task", "detect", "--train", tmp_path / "nowhere", "-o", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a detection set" in r.stderr
