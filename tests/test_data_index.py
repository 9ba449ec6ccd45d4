"""Lists and indexing: im2rec's .lst format and list making, checked against the real im2rec's output."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import fixture, run_graft
from graftkit.data.index import index_csv, index_folder, make_lists
from graftkit.data.lists import Entry, classes_path, open_list, read_lst, resolve_in_root, write_lst
from graftkit.errors import GraftError

IM2REC = "mxnet/im2rec"


def _pairs(path):
    return {(e.path, e.labels) for e in read_lst(path)}


def test_lists_match_im2rec_as_sets_and_byte_for_byte(tmp_path):
    """`--list --recursive --train-ratio 0.75` with im2rec's shuffle (Python random, seed 100)."""
    written = make_lists(fixture(f"{IM2REC}/imgs"), tmp_path / "fmnist", shuffle=True, train_ratio=0.75)
    assert set(written) == {"train", "val"}
    for split in ("train", "val"):
        ours, theirs = written[split], fixture(f"{IM2REC}/fmnist_{split}.lst")
        # the contract: the same (image, label) pairs in each split ...
        assert _pairs(ours) == _pairs(theirs)
        assert {e.index: e.path for e in read_lst(ours)} == {e.index: e.path for e in read_lst(theirs)}
        # ... and because the walk order and Python's seeded shuffle are the same, the same bytes
        assert ours.read_bytes() == theirs.read_bytes()
    doc = json.loads(classes_path(written["train"]).read_text())
    assert doc["classes"] == ["sneaker", "trouser", "tshirt"]


def test_unshuffled_index_is_sorted_with_labels_from_folders(tmp_path):
    lst = index_folder(fixture(f"{IM2REC}/imgs"))
    assert lst.classes == ["sneaker", "trouser", "tshirt"]
    assert [e.path for e in lst.entries] == sorted(e.path for e in lst.entries)
    assert all(e.path.split("/")[0] == lst.classes[e.label] for e in lst.entries)
    assert [e.index for e in lst.entries] == list(range(24))
    only_png = index_folder(fixture(f"{IM2REC}/imgs"), exts=["png"])
    assert len(only_png) == 12 and all(e.path.endswith(".png") for e in only_png.entries)


def test_list_round_trip_and_root(tmp_path):
    entries = [Entry(0, (1.0,), "a/x.jpg"), Entry(7, (0.0, 2.5), "b/y z.png")]
    p = write_lst(tmp_path / "l.lst", entries)
    assert read_lst(p) == entries
    assert p.read_text().splitlines()[0] == "0\t1.000000\ta/x.jpg"
    assert resolve_in_root(tmp_path, "../etc/passwd") is None
    assert resolve_in_root(tmp_path, "/etc/passwd") is None
    assert resolve_in_root(tmp_path, "a/../../x.jpg") is None and resolve_in_root(tmp_path, "C:/x.jpg") is None
    assert resolve_in_root(tmp_path, "a/x.jpg") == tmp_path.absolute() / "a/x.jpg"


def test_a_folder_of_links_to_images_elsewhere_is_fine(tmp_path):
    from graftkit.data import ImageDataset
    (tmp_path / "links" / "sneaker").mkdir(parents=True)
    for src in sorted(fixture(f"{IM2REC}/imgs/sneaker").iterdir())[:3]:
        (tmp_path / "links" / "sneaker" / src.name).symlink_to(src.resolve())
    ds = ImageDataset.open(tmp_path / "links")
    assert len(ds) == 3 and [ds[i][0].shape[0] for i in range(3)] == [3, 3, 3] and ds.num_failed == 0


def test_list_root_travels_with_the_class_map(tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(fixture(f"{IM2REC}/imgs"), imgs)
    written = make_lists(imgs, tmp_path / "lists" / "all")
    lst = open_list(written["all"])
    assert lst.root.resolve() == imgs.resolve() and lst.classes == ["sneaker", "trouser", "tshirt"]


def test_bad_lists_and_csv(tmp_path):
    bad = tmp_path / "bad.lst"
    bad.write_text("0\t1.0\ta.jpg\nzero\t1\tb.jpg\n")
    with pytest.raises(GraftError, match=r"bad.lst:2"):
        read_lst(bad)
    with pytest.raises(GraftError, match="no such list"):
        read_lst(tmp_path / "missing.lst")
    csv = tmp_path / "d.csv"
    csv.write_text("path,label\nx/1.jpg,dog\nx/2.jpg,cat\nx/3.jpg,dog\n")
    lst = index_csv(csv)
    assert lst.classes == ["cat", "dog"] and lst.labels() == [1, 0, 1]


def test_cli_index(tmp_path):
    r = run_graft("data", "index", fixture(f"{IM2REC}/imgs"), "-o", tmp_path / "all", "--ext", "jpg", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["classes"] == ["sneaker", "trouser", "tshirt"] and doc["lists"]["all"]["images"] == 12
    r = run_graft("data", "index", tmp_path / "nope", "-o", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such folder" in r.stderr
    assert not (tmp_path / "x.lst").exists()


@pytest.mark.parametrize("line, message", [
    ("0\t3000000000\ta.png", "label 3000000000.0 is not a class index"),
    ("0\tnan\ta.png", "label nan is not a class index"),
    ("0\tinf\ta.png", "label inf is not a class index"),
    ("18446744073709551616\t1\ta.png", r"is outside 0..2\^63-1"),
    ("0\t1\ta\0.png", "NUL byte"),
])
def test_hostile_list_lines_are_one_error(tmp_path, line, message):
    from graftkit.data.lists import read_lst
    from graftkit.errors import GraftError
    (tmp_path / "x.lst").write_text(line + "\n")
    with pytest.raises(GraftError, match=message):
        read_lst(tmp_path / "x.lst")


def test_a_stray_large_label_never_builds_a_million_class_names(tmp_path):
    from graftkit.data import ImageDataset
    from graftkit.errors import GraftError
    (tmp_path / "x.lst").write_text("0\t0\ta.png\n1\t2000000\tb.png\n")
    with pytest.raises(GraftError, match="b.png has label 2000000, which would make 2,000,001 classes"):
        ImageDataset.open(tmp_path / "x.lst")


def _tree(root, layout):
    for rel in layout:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")  # indexing reads names, not pixels


def test_a_folder_of_split_folders_is_refused_not_taken_as_classes(tmp_path):
    _tree(tmp_path / "ds", ["train/cat/a.png", "train/dog/b.png", "val/cat/c.png", "val/dog/d.png",
                            "test/cat/e.png"])
    with pytest.raises(GraftError, match="are dataset splits holding class folders") as e:
        index_folder(tmp_path / "ds")
    assert "graft data index" in e.value.hint and "train" in e.value.hint
    assert index_folder(tmp_path / "ds" / "train").classes == ["cat", "dog"]  # what the hint says to do
    r = run_graft("data", "index", tmp_path / "ds", "-o", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "dataset splits" in r.stderr
    assert not (tmp_path / "x.lst").exists()
    # split-like names with images right inside them are classes after all
    _tree(tmp_path / "flat", ["train/a.png", "test/b.png"])
    assert index_folder(tmp_path / "flat").classes == ["test", "train"]
