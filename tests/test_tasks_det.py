"""Detection: annotation readers (COCO/VOC/YOLO) agree and round-trip, mistakes are reported with file and
id/line, boxes move with their images, COCO mAP is pycocotools', a short FCOS training lowers its loss."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit import tasks
from graftkit.errors import GraftError
from graftkit.tasks.data import BoxSet, Boxes, clean_boxes, read_coco, read_voc, read_yolo, write_coco


def _scene_set(tmp_path) -> Path:
    tasks.write_scenes(tmp_path / "s", train=6, val=2, size=64, sides=(14, 30))
    return tmp_path / "s"


def test_coco_round_trip_is_identical(tmp_path):
    s = _scene_set(tmp_path)
    doc = json.loads((s / "train" / "annotations.json").read_text())
    boxes, issues = read_coco(s / "train" / "annotations.json")
    assert not [i for i in issues if i.fatal]
    back = write_coco(boxes)
    assert back["categories"] == doc["categories"]
    assert back["images"] == doc["images"]
    keys = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
    assert [{k: a[k] for k in keys} for a in back["annotations"]] == [{k: a[k] for k in keys} for a in doc["annotations"]]


def _as_voc(boxes: Boxes, folder: Path) -> None:
    folder.mkdir()
    for rec in boxes.images:
        objs = "".join(
            f"<object><name>{boxes.classes[lab]}</name><bndbox><xmin>{b[0] + 1:g}</xmin><ymin>{b[1] + 1:g}</ymin>"
            f"<xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>" for b, lab in zip(rec["boxes"], rec["labels"]))
        (folder / (Path(rec["file"]).stem + ".xml")).write_text(
            f"<annotation><filename>{rec['file']}</filename><size><width>{rec['width']}</width><height>{rec['height']}"
            f"</height></size>{objs}</annotation>")


def _as_yolo(boxes: Boxes, folder: Path) -> None:
    (folder / "labels").mkdir(parents=True)
    (folder / "images").symlink_to(boxes.root.resolve(), target_is_directory=True)
    (folder / "classes.txt").write_text("\n".join(boxes.classes))
    for rec in boxes.images:
        w, h = rec["width"], rec["height"]
        lines = [f"{lab} {(b[0] + b[2]) / 2 / w:.8f} {(b[1] + b[3]) / 2 / h:.8f} {(b[2] - b[0]) / w:.8f} "
                 f"{(b[3] - b[1]) / h:.8f}" for b, lab in zip(rec["boxes"], rec["labels"])]
        (folder / "labels" / (Path(rec["file"]).stem + ".txt")).write_text("\n".join(lines))


def test_voc_and_yolo_give_the_same_boxes_as_coco(tmp_path):
    s = _scene_set(tmp_path)
    coco, _ = read_coco(s / "train" / "annotations.json")
    _as_voc(coco, tmp_path / "voc")
    _as_yolo(coco, tmp_path / "yolo")
    voc, vi = read_voc(tmp_path / "voc", images=coco.root, classes=coco.classes)
    yolo, yi = read_yolo(tmp_path / "yolo" / "images")
    assert not [i for i in vi + yi if i.fatal], [i.line() for i in vi + yi]
    assert yolo.classes == coco.classes
    by_file = {r["file"]: r for r in coco.images}
    for other in (voc, yolo):
        assert len(other.images) == len(coco.images)
        for rec in other.images:
            ref = by_file[rec["file"]]
            assert rec["labels"] == ref["labels"]
            np.testing.assert_allclose(np.array(rec["boxes"]).reshape(-1, 4), np.array(ref["boxes"]).reshape(-1, 4),
                                       atol=1e-4)


def _bad_coco(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "b.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40},
                      {"id": 2, "file_name": "b.png", "width": 50, "height": 40},
                      {"id": 3, "file_name": "gone.png", "width": 50, "height": 40}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 4, "name": "dog"}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},      # degenerate
                           {"id": 11, "image_id": 1, "category_id": 4, "bbox": [40, 30, 20, 20]},   # out of bounds
                           {"id": 12, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},       # unknown category
                           {"id": 13, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]}]}      # missing image
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    return p


def test_each_coco_mistake_is_reported_with_file_and_id(tmp_path):
    p = _bad_coco(tmp_path)
    _, issues = read_coco(p)
    got = {i.problem: i for i in issues}
    assert "annotation id 10" in got["degenerate"].where and str(p) in got["degenerate"].where
    assert "annotation id 11" in got["out_of_bounds"].where and "50x40" in got["out_of_bounds"].message
    assert "annotation id 12" in got["unknown_category"].where
    assert "gone.png" in got["missing_image"].line()
    assert not got["gapped_ids"].fatal and "[1, 4]" in got["gapped_ids"].message
    assert not got["empty_image"].fatal and "image id 2" in got["empty_image"].where


def test_voc_and_yolo_mistakes_name_file_and_object_or_line(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>50</width><height>40</height></size>"
        "<object><name>cat</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>5</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>80</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>")
    _, vi = read_voc(tmp_path / "voc")
    got = {i.problem: i.line() for i in vi}
    assert "a.xml object 1" in got["degenerate"] and "a.xml object 2" in got["out_of_bounds"]
    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "labels").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "y" / "images" / "a.png")
    (tmp_path / "y" / "classes.txt").write_text("cat\n")
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0 0.2\n0 0.95 0.5 0.3 0.2\n3 0.5 0.5 0.1 0.1\nfoo\n")
    _, yi = read_yolo(tmp_path / "y" / "images")
    got = {i.problem: i.line() for i in yi}
    assert "a.txt line 1" in got["degenerate"] and "a.txt line 2" in got["out_of_bounds"]
    assert "a.txt line 3" in got["unknown_category"] and "a.txt line 4" in got["bad_box"]


def test_training_data_with_mistakes_is_one_line_or_cleaned(tmp_path):
    p = _bad_coco(tmp_path)
    with pytest.raises(GraftError) as e:
        tasks.open_boxes(p, say=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "annotation id 12" in msg and "graft data check" in msg
    boxes, _ = read_coco(p)
    done = clean_boxes(boxes)
    assert done == {"clipped": 1, "dropped": 1}
    assert boxes.images[0]["boxes"] == [[40.0, 30.0, 50, 40]]


def test_boxes_move_with_the_image(tmp_path):
    (tmp_path / "images").mkdir()
    img = np.zeros((60, 90, 3), np.uint8)
    img[10:30, 5:25] = 255                              # the object: box [5, 10, 25, 30]
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    b = Boxes([{"id": 1, "file": "a.png", "width": 90, "height": 60, "boxes": [[5, 10, 25, 30]], "labels": [0]}],
              ["thing"], [1], tmp_path / "images")
    ds = BoxSet(b, size=64, train=True)
    seen_left = seen_right = False
    for seed in range(10):
        torch.manual_seed(seed)
        x, t = ds[0]
        on = torch.nonzero(x[0] > 0.5)
        ys, xs = on[:, 0], on[:, 1]
        box = t["boxes"][0]
        assert abs(float(xs.min()) - float(box[0])) <= 1 and abs(float(xs.max()) + 1 - float(box[2])) <= 1
        assert abs(float(ys.min()) - float(box[1])) <= 1 and abs(float(ys.max()) + 1 - float(box[3])) <= 1
        seen_left |= float(box[0]) < 32
        seen_right |= float(box[0]) > 32
    assert seen_left and seen_right                   # flipped and not flipped, boxes followed both ways


def test_coco_map_is_pycocotools_on_files(tmp_path):
    """Our mAP (built from graftkit's records) equals pycocotools run on COCO files written independently."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    rng = np.random.default_rng(0)
    recs, dets, gt_anns, dt_list = [], [], [], []
    for i in range(1, 9):
        n = int(rng.integers(1, 4))
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(5, 30, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 3, n)
        recs.append({"id": i, "file": f"{i}.png", "width": 100, "height": 100, "boxes": boxes.tolist(),
                     "labels": labels.tolist()})
        for b, lab in zip(boxes, labels):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": [1, 3, 7][lab],
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                            "iscrowd": 0})
        pb = boxes + rng.normal(0, 3, boxes.shape)
        extra = rng.uniform(0, 70, (2, 2))
        pb = np.concatenate([pb, np.concatenate([extra, extra + 15], 1)])
        pl = np.concatenate([labels, rng.integers(0, 3, 2)])
        ps = rng.uniform(0.1, 1, len(pb))
        dets.append({"image_id": i, "boxes": pb, "scores": ps, "labels": pl})
        for b, lab, sc in zip(pb, pl, ps):
            dt_list.append({"image_id": i, "category_id": [1, 3, 7][lab],
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": sc})
    ours = tasks.coco_map(recs, dets, [1, 3, 7], ["a", "b", "c"])
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": r["id"], "width": 100, "height": 100} for r in recs], "annotations": gt_anns,
        "categories": [{"id": c} for c in (1, 3, 7)]}, default=float))
    (tmp_path / "dt.json").write_text(json.dumps(dt_list, default=float))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert 0.05 < ours["ap50"] < 1
    assert abs(ours["ap"] - ev.stats[0]) < 1e-6 and abs(ours["ap50"] - ev.stats[1]) < 1e-6
    assert abs(ours["ap75"] - ev.stats[2]) < 1e-6


def test_perfect_detections_score_one():
    recs = [{"id": 1, "file": "a", "width": 50, "height": 50, "boxes": [[1, 2, 30, 40]], "labels": [1]}]
    dets = [{"image_id": 1, "boxes": np.array([[1, 2, 30, 40.0]]), "scores": np.array([0.9]), "labels": np.array([1])}]
    r = tasks.coco_map(recs, dets, [0, 1], ["zero", "one"])   # category id 0 is a real class, not background
    assert r["ap"] == pytest.approx(1.0) and r["per_class"]["one"] == pytest.approx(1.0)


def test_short_detector_training_lowers_its_loss(tmp_path):
    torch.set_num_threads(1)
    tasks.write_scenes(tmp_path / "s", train=16, val=4, size=64, sides=(14, 30))
    s = tasks.fit_task("detect", "lite0", tmp_path / "s/train", tmp_path / "s/val", epochs=4, size=64,
                       plan=tasks.task_plan(batch_size=8, lr=1e-3), val_every=0, out_dir=tmp_path / "run")
    losses = [r["train_loss"] for r in s["history"]]
    assert losses[-1] < losses[0], losses
    assert "ap50" in s["val"] and s["transfer"]["backbone_tensors"] > 100
    # predict draws the boxes it reports onto a copy of the image
    from graftkit.tasks.predict import predict
    src = tmp_path / "s/val/images/00000.png"
    res = predict(tmp_path / "run", [str(src)], out_dir=tmp_path / "drawn", score_thresh=0.0)
    assert res[0]["boxes"] and res[0]["drawn"].endswith("00000.png")
    before = np.asarray(Image.open(src).convert("RGB")).astype(int)
    after = np.asarray(Image.open(res[0]["drawn"])).astype(int)
    x1, y1 = (int(round(v)) for v in res[0]["boxes"][0]["box"][:2])
    x1, y1 = min(max(x1, 0), 63), min(max(y1, 0), 63)
    assert after.shape == before.shape and (after != before).any()
    assert (np.abs(after[y1, :, :] - before[y1, :, :]).sum() > 0) or (np.abs(after[:, x1] - before[:, x1]).sum() > 0)
