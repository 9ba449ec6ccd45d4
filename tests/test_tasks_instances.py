"""Instance masks with ids as input: read into boxes and class masks, every mistake named with its file and id."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftkit import tasks
from graftkit.errors import GraftError
from graftkit.tasks.data import read_coco
from graftkit.tasks.instances import InstanceMaskFolder, check_instances, read_instances
from graftkit.tasks.train import open_boxes, open_masks

from conftest import run_graft


def _instances_from_scenes(tmp_path, mapping: bool) -> tuple[Path, Path]:
    """The synthetic scenes rewritten as id masks (ids 1000 + k, so 16-bit) plus either instances.json
    (class names) or the scenes' own class masks; objects never overlap, so box + class picks each one's pixels."""
    tasks.write_scenes(tmp_path / "s", train=4, val=1, size=64, sides=(14, 30))
    src = tmp_path / "s" / "train"
    dst = tmp_path / "inst"
    shutil.copytree(src / "images", dst / "images")
    (dst / "instances").mkdir()
    boxes, _ = read_coco(src / "annotations.json")
    table = {}
    for rec in boxes.images:
        stem = Path(rec["file"]).stem
        cls = np.asarray(Image.open(src / "masks" / f"{stem}.png")).astype(np.int64)
        ids = np.zeros(cls.shape, np.uint16)
        table[stem] = {}
        for k, (b, lab) in enumerate(zip(rec["boxes"], rec["labels"])):
            x0, y0, x1, y1 = (int(v) for v in b)
            sub = cls[y0:y1, x0:x1] == lab + 1
            ids[y0:y1, x0:x1][sub] = 1000 + k
            table[stem][str(1000 + k)] = boxes.classes[lab]
        Image.fromarray(ids).save(dst / "instances" / f"{stem}.png")
    if mapping:
        (dst / "instances.json").write_text(json.dumps(table))
    else:
        shutil.copytree(src / "masks", dst / "masks")
    shutil.copy(tmp_path / "s" / "classes.txt", dst / "classes.txt")
    return src, dst


@pytest.mark.parametrize("mapping", [True, False], ids=["instances.json", "class masks"])
def test_instance_masks_give_the_scenes_boxes_and_class_masks(tmp_path, mapping):
    src, dst = _instances_from_scenes(tmp_path, mapping)
    coco, _ = read_coco(src / "annotations.json")
    ours = open_boxes(dst)                      # what `graft train --task detect` reads
    assert ours.classes == coco.classes
    for a, b in zip(coco.images, ours.images):
        assert a["file"] == b["file"]
        got = sorted(zip(map(tuple, b["boxes"]), b["labels"]))
        assert got == sorted(zip(map(tuple, a["boxes"]), a["labels"]))
    ds, classes = open_masks(dst, 64, False)    # what `graft train --task segment` reads
    assert classes[0] == "background" and classes[1:] == coco.classes
    for i, img in enumerate(ds.images):
        want = np.asarray(Image.open(src / "masks" / f"{img.stem}.png"))
        assert np.array_equal(ds.read_mask(i), want)
    issues, _ = check_instances(dst)
    assert not [i for i in issues if i.fatal]


def _one(root: Path, ids: np.ndarray, name="a", size=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "instances").mkdir(exist_ok=True)
    h, w = size or ids.shape[:2]
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / f"{name}.png")
    Image.fromarray(ids).save(root / "instances" / f"{name}.png")


def test_each_instance_mistake_is_named_with_its_file_and_id(tmp_path):
    r = tmp_path / "m"
    ids = np.zeros((16, 16), np.uint8)
    ids[1:4, 1:4], ids[6:9, 6:9], ids[10:12, 10:12] = 1, 2, 3
    _one(r, ids, "a")
    _one(r, np.zeros((8, 8), np.uint8), "small", size=(16, 16))
    _one(r, np.zeros((16, 16, 3), np.uint8), "rgb")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(r / "images" / "lonely.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(r / "instances" / "orphan.png")
    (r / "classes.txt").write_text("background\ncat\ndog\n")
    (r / "instances.json").write_text(json.dumps({"a": {"1": "cat", "2": "horse", "7": "dog"}}))
    issues, _ = check_instances(r)
    got = {(i.problem, Path(i.where.split(" ")[0]).name, i.where.split(" id ")[-1] if " id " in i.where else None)
           for i in issues}
    assert ("unknown_id", "a.png", "3") in got            # id 3 has no class
    assert ("unknown_class", "a.png", "2") in got         # "horse" is not a class
    assert ("absent_id", "a.png", "7") in got             # the mapping names an id the mask lacks
    assert ("size_mismatch", "small.png", None) in got
    assert ("mask_mode", "rgb.png", None) in got
    assert ("missing_mask", "lonely.png", None) in got
    assert ("missing_image", "orphan.png", None) in got
    assert not [i for i in issues if i.problem == "absent_id" and i.fatal]
    # training stops with one line naming the first problem and the command that lists them all
    with pytest.raises(GraftError, match=r"orphan\.png: no image of this name.*\(and 5 more\).*graft data check"):
        open_boxes(r)
    ds = InstanceMaskFolder(r, 16)
    with pytest.raises(GraftError, match=r"a\.png id 2: class 'horse' is not among"):
        ds.read_mask(ds.images.index(r / "images" / "a.png"))
    res = run_graft("data", "check", r, "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["kind"] == "instances"


def test_class_mask_mistakes_mixed_and_background_objects(tmp_path):
    r = tmp_path / "c"
    ids = np.zeros((16, 16), np.uint8)
    ids[1:4, 1:4], ids[6:9, 6:9], ids[10:12, 10:12] = 1, 2, 3
    _one(r, ids)
    cls = np.zeros((16, 16), np.uint8)
    cls[1:4, 1:4] = 1                     # object 1: class 1
    cls[6:9, 6:8], cls[6:9, 8] = 1, 2     # object 2: classes 1 and 2
    (r / "masks").mkdir()                 # object 3: on background
    Image.fromarray(cls).save(r / "masks" / "a.png")
    (r / "classes.txt").write_text("background\ncat\ndog\n")
    boxes, issues = read_instances(r)
    probs = {i.problem: i.where for i in issues}
    assert probs["mixed_classes"].endswith("a.png id 2") and probs["background_object"].endswith("a.png id 3")
    assert boxes.images[0]["boxes"] == [[1.0, 1.0, 4.0, 4.0]] and boxes.images[0]["labels"] == [0]


def test_no_class_source_is_one_clear_error(tmp_path):
    _one(tmp_path / "n", np.ones((8, 8), np.uint8))
    with pytest.raises(GraftError, match="need each object's class"):
        read_instances(tmp_path / "n")
