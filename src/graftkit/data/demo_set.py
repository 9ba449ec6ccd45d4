"""Fashion-MNIST: the small demo subset shipped with graftkit, and the full set from Debian's package.

The demo subset (resources/fashion_mnist_demo, MIT licence, see its LICENSE) is
stratified: train 100, val 50 (both from Fashion-MNIST's training set, disjoint)
and test 50 (from its test set) images per class, 28x28 grayscale.

    write_demo_set("demo")              # demo/train/<class>/*.png, demo/val/..., demo/test/...
    write_demo_set("demo", "train")     # demo/<class>/*.png
    images, labels = demo_arrays("train")
    images, labels = load_fashion_mnist("test")          # the full 10,000 test images
    images, labels = fashion_mnist_subset(100, seed=0)   # 100 training images per class
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import mode_for
from ..errors import GraftError

RESOURCE = Path(__file__).resolve().parent.parent / "resources" / "fashion_mnist_demo" / "fashion_mnist_demo.npz"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST's class names in label order, and the folder names the demo set uses for them.
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
FOLDER_NAMES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                "ankle_boot"]
DEMO_SPLITS = ("train", "val", "test")


def demo_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N,28,28, int64 labels in Fashion-MNIST's order) of a demo split."""
    if split not in DEMO_SPLITS:
        raise GraftError(f"demo split {split!r} does not exist", f"use one of {', '.join(DEMO_SPLITS)}")
    with np.load(RESOURCE) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)


def _write_split(folder: Path, images: np.ndarray, labels: np.ndarray, source_index: np.ndarray) -> int:
    for name in FOLDER_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for img, lab, src in zip(images, labels, source_index):
        Image.fromarray(img, "L").save(folder / FOLDER_NAMES[lab] / f"{int(src):05d}.png", optimize=False)
    return len(images)


def write_demo_set(out: str | os.PathLike, split: str = "all") -> dict[str, int]:
    """Write the demo subset as class sub-folders of PNG files; returns images written per split.

    split "all" writes OUT/train, OUT/val and OUT/test; a single split writes OUT/<class>/ directly.
    OUT must be absent or empty; it appears complete or not at all.
    """
    splits = DEMO_SPLITS if split == "all" else (split,)
    if split != "all" and split not in DEMO_SPLITS:
        raise GraftError(f"demo split {split!r} does not exist", "use train, val, test or all")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GraftError(f"{out}: already exists and is not an empty folder", "choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    counts = {}
    try:
        with np.load(RESOURCE) as z:
            for s in splits:
                folder = tmp / s if split == "all" else tmp
                counts[s] = _write_split(folder, z[f"{s}_images"], z[f"{s}_labels"], z[f"{s}_source_index"])
        os.chmod(tmp, mode_for(out, directory=True))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0,0,dtype,ndim; big-endian uint32 dims; data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise GraftError(f"{path}: cannot read ({e})", "reinstall with `apt-get install --reinstall dataset-fashion-mnist`") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise GraftError(f"{path}: not a uint8 IDX file", "reinstall with `apt-get install --reinstall dataset-fashion-mnist`")
    ndim = data[3]
    dims = np.frombuffer(data[4:4 + 4 * ndim], ">u4").astype(np.int64)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise GraftError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} bytes)",
                         "reinstall with `apt-get install --reinstall dataset-fashion-mnist`")
    return body.reshape(tuple(dims))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The full Fashion-MNIST split ("train": 60,000, "test": 10,000) as (uint8 N,28,28, int64 labels).

    Read from the Debian package `dataset-fashion-mnist` (or `root`); nothing is downloaded.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise GraftError(f"Fashion-MNIST split {split!r} does not exist", "use train or test")
    root = Path(root) if root else DEBIAN_DIR
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [root / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        path = next((c for c in cands if c.is_file()), None)
        if path is None:
            raise GraftError(f"Fashion-MNIST is not installed ({cands[0]} is missing)",
                             "install it with `apt-get install dataset-fashion-mnist`")
        found[kind] = _read_idx(path)
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"].astype(np.int64)
    if len(images) != len(labels):
        raise GraftError(f"{root}: {len(images)} images but {len(labels)} labels", "reinstall dataset-fashion-mnist")
    return images, labels


def fashion_mnist_subset(per_class: int = 100, split: str = "train", seed: int = 0,
                         root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random subset: `per_class` images of each class from the full split (seeded)."""
    images, labels = load_fashion_mnist(split, root)
    rng = np.random.default_rng(seed)
    sel = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
                          for c in range(len(FASHION_MNIST_CLASSES))])
    return images[sel], labels[sel]
