"""Data for detection and segmentation demos and tests, written as images + masks + COCO JSON.

- `write_scenes`: a SYNTHETIC scene set. The objects are real Fashion-MNIST items (the demo subset
  graftkit ships; train scenes use its train items, val scenes its val items, so no item is in both),
  but their layouts are made up: each item is scaled to one of several sizes, tinted, and pasted
  (non-overlapping) onto a procedurally textured background. Boxes and masks are exact: the mask
  is the item's pixels above a threshold after scaling, the box is that mask's extent.
- `write_nuclei_tiles`: the one real fluorescence image in ../shared/datasets/nuclei, tiled;
  every tile comes from the same image, so any number measured on them is about one image.

Layout of a written split (what `tasks.data` reads):
    OUT/<split>/images/NNNNN.png     RGB
    OUT/<split>/masks/NNNNN.png      class-indexed, 0 = background, k = class k (classes.txt order)
    OUT/<split>/annotations.json     COCO: boxes [x, y, w, h] in pixels, category ids 1..K
    OUT/classes.txt                  background + the object classes, one a line
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import GraftError

THRESHOLD = 0.2          # an item pixel belongs to the object when its Fashion-MNIST intensity is above 20 %
SYNTHETIC_NOTE = ("Synthetic scenes: real Fashion-MNIST items placed by a program on generated textured "
                  "backgrounds; the layouts, scales, colours and backgrounds are synthetic.")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float RGB background in [0, 1]: smooth noise, stripes or checks, in two random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:
        g = rng.random((6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       np.float32) / 255
    elif kind == 1:
        ang, freq = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    else:
        n = rng.integers(3, 9)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32) * 0.8 + 0.1
    a, b = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    img = img * 0.6 + 0.2                                    # keep the contrast moderate
    return np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1)


def make_scene(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int = 128,
               count: tuple[int, int] = (1, 4), sides: tuple[int, int] = (20, 64)):
    """(uint8 RGB image, uint8 class-indexed mask, boxes [[x, y, w, h]], labels 0..9) of one scene."""
    img = _texture(rng, size)
    mask = np.zeros((size, size), np.uint8)
    boxes, labs, taken = [], [], []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        k = int(rng.integers(len(items)))
        side = int(rng.integers(sides[0], min(sides[1], size) + 1))
        alpha = np.asarray(Image.fromarray(items[k]).resize((side, side), Image.BILINEAR), np.float32) / 255
        on = alpha > THRESHOLD
        if not on.any():
            continue
        ys, xs = np.nonzero(on)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        for _try in range(30):
            ox, oy = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = (ox + x0, oy + y0, ox + x1, oy + y1)
            if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1] or t[3] + 2 <= box[1]
                   for t in taken):
                break
        else:
            continue                                # no free place: fewer items in this scene
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        if abs(float(colour.mean()) - float(img[oy:oy + side, ox:ox + side].mean())) < 0.25:
            colour = 1 - colour                    # keep the item visible against its background
        a = alpha[..., None]
        region = img[oy:oy + side, ox:ox + side]
        img[oy:oy + side, ox:ox + side] = region * (1 - a) + colour[None, None] * a
        mask[oy:oy + side, ox:ox + side][on] = int(labels[k]) + 1
        taken.append(box)
        boxes.append([int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1])])
        labs.append(int(labels[k]))
    return (img * 255 + 0.5).astype(np.uint8), mask, boxes, labs


def _coco(files: list[str], sizes: list[tuple[int, int]], boxes: list, labels: list, classes: list[str],
          note: str) -> dict:
    images, anns = [], []
    for i, (f, (w, h), bs, ls) in enumerate(zip(files, sizes, boxes, labels)):
        images.append({"id": i + 1, "file_name": f, "width": w, "height": h})
        for b, lab in zip(bs, ls):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                         "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 0})
    return {"info": {"description": note}, "images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}


def _fresh(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GraftError(f"{out}: already exists and is not an empty folder", "choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))


def _write_split(folder: Path, samples, classes: list[str], note: str) -> int:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    files, sizes, boxes, labels = [], [], [], []
    for i, (img, mask, bs, ls) in enumerate(samples):
        name = f"{i:05d}.png"
        Image.fromarray(img).save(folder / "images" / name)
        Image.fromarray(mask, "L").save(folder / "masks" / name)
        files.append(name)
        sizes.append((img.shape[1], img.shape[0]))
        boxes.append(bs)
        labels.append(ls)
    (folder / "annotations.json").write_text(json.dumps(_coco(files, sizes, boxes, labels, classes, note)))
    return len(files)


def _commit(tmp: Path, out: Path, classes: list[str], note: str) -> None:
    (tmp / "classes.txt").write_text("\n".join(["background", *classes]) + "\n")
    (tmp / "README.txt").write_text(note + "\n")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def write_scenes(out: str | os.PathLike, train: int = 200, val: int = 100, size: int = 128, seed: int = 0,
                 count: tuple[int, int] = (1, 4), sides: tuple[int, int] = (20, 64)) -> dict[str, int]:
    """Write the synthetic scene set (see the module's docstring); deterministic in (arguments, seed)."""
    from ..data.demo_set import FASHION_MNIST_CLASSES, demo_arrays
    if size < 32 or sides[0] < 8 or sides[0] > sides[1]:
        raise GraftError(f"scene size {size} / item sides {sides} are not usable", "use size >= 32, 8 <= min <= max")
    out = Path(out)
    tmp = _fresh(out)
    counts = {}
    try:
        for split, n, items_split, offset in (("train", train, "train", 0), ("val", val, "val", 1)):
            items, labels = demo_arrays(items_split)
            rng = np.random.default_rng([seed, offset])
            samples = (make_scene(rng, items, labels, size, count, sides) for _ in range(n))
            counts[split] = _write_split(tmp / split, samples, FASHION_MNIST_CLASSES, SYNTHETIC_NOTE)
        _commit(tmp, out, FASHION_MNIST_CLASSES, SYNTHETIC_NOTE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


NUCLEI_NOTE = ("Tiles of ONE real image (2018 Data Science Bowl, via stardist's sample data, BSD-3-Clause): every "
               "tile, train or val, comes from the same 512x512 fluorescence image.")


def _read_tif(path: Path) -> np.ndarray:
    if not path.is_file():
        raise GraftError(f"{path} is missing", "point root at the folder holding img2d.tif and mask2d.tif")
    try:
        return np.asarray(Image.open(path))
    except OSError:
        import tifffile
        return tifffile.imread(path)


def write_nuclei_tiles(out: str | os.PathLike, root: str | os.PathLike, tile: int = 128,
                       val_columns: int = 1) -> dict[str, int]:
    """Tile the nuclei image into non-overlapping tile x tile crops; the rightmost `val_columns` columns
    of tiles are the val split (a fixed, spatially separate split). One class: nucleus."""
    root = Path(root)
    img = _read_tif(root / "img2d.tif").astype(np.float32)
    inst = _read_tif(root / "mask2d.tif").astype(np.int64)
    lo, hi = np.percentile(img, [1, 99.8])
    grey = (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8)
    h, w = grey.shape
    cols, rows = w // tile, h // tile
    if cols <= val_columns:
        raise GraftError(f"a {w}x{h} image gives {cols} tile columns of {tile} px", "use smaller tiles")
    splits: dict[str, list] = {"train": [], "val": []}
    for r in range(rows):
        for c in range(cols):
            sl = np.s_[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
            g, m = grey[sl], inst[sl]
            boxes = []
            for i in np.unique(m):
                if i == 0:
                    continue
                ys, xs = np.nonzero(m == i)
                boxes.append([int(xs.min()), int(ys.min()), int(xs.max() + 1 - xs.min()), int(ys.max() + 1 - ys.min())])
            sample = (np.repeat(g[..., None], 3, 2), (m > 0).astype(np.uint8), boxes, [0] * len(boxes))
            splits["val" if c >= cols - val_columns else "train"].append(sample)
    out = Path(out)
    tmp = _fresh(out)
    try:
        counts = {s: _write_split(tmp / s, v, ["nucleus"], NUCLEI_NOTE) for s, v in splits.items()}
        _commit(tmp, out, ["nucleus"], NUCLEI_NOTE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
