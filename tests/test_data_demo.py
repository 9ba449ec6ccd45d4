"""The shipped Fashion-MNIST demo subset and the full set from Debian's package."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_graft
from graftkit.data import demo_set
from graftkit.errors import GraftError


def test_demo_arrays_are_stratified_and_small():
    assert demo_set.RESOURCE.stat().st_size < 2_000_000
    for split, per in (("train", 100), ("val", 50), ("test", 50)):
        x, y = demo_set.demo_arrays(split)
        assert x.dtype == np.uint8 and x.shape == (10 * per, 28, 28)
        assert np.bincount(y, minlength=10).tolist() == [per] * 10
    lic = (demo_set.RESOURCE.parent / "LICENSE").read_text()
    assert "MIT" in lic and "Zalando" in lic


@pytest.mark.skipif(not demo_set.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_demo_images_are_the_real_fashion_mnist_images():
    with np.load(demo_set.RESOURCE) as z:
        idx, imgs, labs = z["train_source_index"], z["train_images"], z["train_labels"]
        tidx, timgs = z["test_source_index"], z["test_images"]
        vidx = z["val_source_index"]
    full, full_y = demo_set.load_fashion_mnist("train")
    assert full.shape == (60000, 28, 28)
    assert np.array_equal(full[idx], imgs) and np.array_equal(full_y[idx], labs)
    assert not set(idx.tolist()) & set(vidx.tolist())  # train and val are disjoint
    test, _ = demo_set.load_fashion_mnist("test")
    assert test.shape == (10000, 28, 28) and np.array_equal(test[tidx], timgs)
    sub, sub_y = demo_set.fashion_mnist_subset(100, seed=0)
    assert sub.shape == (1000, 28, 28) and np.bincount(sub_y).tolist() == [100] * 10


def test_missing_full_set_says_how_to_install(tmp_path):
    with pytest.raises(GraftError, match="apt-get install dataset-fashion-mnist"):
        demo_set.load_fashion_mnist("test", root=tmp_path)


def test_cli_demo_set_writes_class_folders_of_png(tmp_path):
    out = tmp_path / "demo"
    r = run_graft("data", "demo-set", out, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == {"test": 500}
    classes = sorted(p.name for p in out.iterdir())
    assert classes == sorted(demo_set.FOLDER_NAMES)
    files = sorted(out.glob("*/*.png"))
    assert len(files) == 500
    x, y = demo_set.demo_arrays("test")
    # every PNG decodes to exactly one of the shipped arrays, in its class folder
    lookup = {x[i].tobytes(): demo_set.FOLDER_NAMES[y[i]] for i in range(len(x))}
    for f in files[::25]:
        a = np.asarray(Image.open(f))
        assert a.shape == (28, 28) and lookup[a.tobytes()] == f.parent.name
    r = run_graft("data", "demo-set", out)
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    umask = os.umask(0o022)
    try:
        counts = demo_set.write_demo_set(tmp_path / "all")
    finally:
        os.umask(umask)
    assert counts == {"train": 1000, "val": 500, "test": 500}
    assert (tmp_path / "all").stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["test", "train", "val"]
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".part")]
