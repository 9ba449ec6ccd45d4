"""Heads chosen by argument: FCOS / RetinaNet / Faster R-CNN detectors and FPN / DeepLabV3 segmenters on the
same backbone train, predict sane outputs, and are rebuilt with their head by load()."""
from __future__ import annotations

import pytest
import torch

from graftkit import tasks
from graftkit.errors import GraftError
from graftkit.tasks.heads import DET_HEADS, SEG_HEADS

from conftest import run_graft


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads") / "s"
    tasks.write_scenes(root, train=8, val=2, size=64, sides=(14, 30))
    return root


@pytest.mark.parametrize("head", [*DET_HEADS, *SEG_HEADS])
def test_each_head_trains_saves_and_reloads_with_its_head(scenes, tmp_path, head):
    torch.set_num_threads(1)
    task = "detect" if head in DET_HEADS else "segment"
    s = tasks.fit_task(task, "lite0", scenes / "train", scenes / "val", out_dir=tmp_path / "run", max_iter=2,
                       size=64, plan=tasks.task_plan(batch_size=4), val_every=0, head=head)
    assert s["head"] == head and s["iterations"] == 2
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in s["history"])
    net = tasks.load(tmp_path / "run")
    assert net.head_name == head and net.build_args["head"] == head
    x = torch.rand(3, 64, 64)
    trained = s["net"].eval()
    with torch.no_grad():
        if task == "segment":
            got, ref = net(x[None]), trained(x[None])
            assert got.shape == (1, 11, 64, 64)
            assert torch.allclose(got, ref, atol=1e-5)
        else:
            got, ref = net([x])[0], trained([x])[0]
            assert torch.allclose(got["boxes"], ref["boxes"], atol=1e-4) and torch.equal(got["labels"], ref["labels"])
            b = got["boxes"]
            assert ((b >= 0) & (b <= 64)).all() and (b[:, 2:] >= b[:, :2]).all()
            assert got["labels"].numel() == 0 or (0 <= int(got["labels"].min()) and int(got["labels"].max()) < 10)
            assert ((got["scores"] >= 0) & (got["scores"] <= 1)).all()
    assert "ap50" in s["val"] if task == "detect" else "miou" in s["val"]


def test_faster_rcnn_sees_labels_shifted_past_its_background_class():
    """Faster R-CNN's class 0 is background: our class 0 must reach it as 1 and come back as 0."""
    net = tasks.build("detect", "lite0", 3, head="fasterrcnn", size=64)
    seen = []

    def fake(images, targets=None):
        seen.append(targets)
        return {"loss": torch.zeros(())} if targets is not None else [{"labels": torch.tensor([1, 3])}]

    net.model.forward = fake
    net.train()
    net([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([0])}])
    assert seen[0][0]["labels"].tolist() == [1]
    net.eval()
    assert net([torch.rand(3, 64, 64)])[0]["labels"].tolist() == [0, 2]
    fcos = tasks.build("detect", "lite0", 3, head="fcos", size=64)
    assert fcos.shift == 0 and fcos.new_heads == ["model.backbone.fpn", "model.head"]
    assert net.new_heads == ["model.backbone.fpn", "model.rpn", "model.roi_heads"]


def test_deeplab_head_trains_on_a_batch_of_one():
    """torchvision's ASPP fails on a training batch of one (BatchNorm on its 1x1 pooled map); ours does not."""
    net = tasks.build("segment", "lite0", 3, head="deeplabv3").train()
    net(torch.rand(1, 3, 64, 64)).sum().backward()
    assert net.head.classifier.weight.grad is not None


def test_unknown_head_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(GraftError, match="fcos or retinanet or fasterrcnn"):
        tasks.build("detect", "lite0", 3, head="deeplabv3")
    with pytest.raises(GraftError, match="fpn or deeplabv3"):
        tasks.build("segment", "lite0", 3, head="yolo")
    tasks.write_scenes(tmp_path / "s", train=2, val=1, size=64, sides=(14, 30))
    r = run_graft("train", "--task", "segment", "--head", "fcos", "--train", tmp_path / "s/train",
                  "-o", tmp_path / "o", "--max-iter", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--head fpn or deeplabv3" in r.stderr
