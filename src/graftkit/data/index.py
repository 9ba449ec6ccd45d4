"""Index a folder of class sub-folders (or a CSV of path,label) into an im2rec `.lst` + class map.

Order is sorted and stable: folders and files are walked the way im2rec walks them
(`os.walk` with sorted names), so the same tree always gives the same list, and
labels are the class folders' positions in sorted order (0..K-1). A class is a
top-level sub-folder; with `recursive` the images below it belong to it too (as in
torchvision's ImageFolder; im2rec instead makes every leaf folder a class - the
same thing for the usual one-level layout).

`make_lists` reproduces im2rec's `--list` (optional shuffle with Python's
`random.seed(100)`, `--train-ratio`/`--test-ratio` cut), so a list made here pairs
the same images with the same labels as im2rec's.
"""
from __future__ import annotations

import csv
import logging
import os
import random
from pathlib import Path
from typing import Sequence

from ..errors import GraftError
from .lists import IMAGE_EXTS, Entry, ImageList, classes_path, resolve_in_root, save_classes, write_lst

log = logging.getLogger("graftkit.data")
# Folder names that mean a dataset split, not a class (torchvision, Kaggle and im2rec layouts).
SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "dev", "test", "testing"}


def _norm_exts(exts: Sequence[str] | None) -> tuple[str, ...]:
    exts = exts or IMAGE_EXTS
    return tuple(("." + e.lstrip(".")).lower() for e in exts)


def _walk_images(folder: Path, exts: tuple[str, ...], recursive: bool) -> list[str]:
    """Image files below `folder` (relative, '/'-separated) in im2rec's walk order."""
    found = []
    for path, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        files.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in exts and os.path.isfile(os.path.join(path, name)):
                found.append(os.path.relpath(os.path.join(path, name), folder).replace(os.sep, "/"))
        if not recursive:
            break
    return found


def index_folder(root: str | os.PathLike, exts: Sequence[str] | None = None, recursive: bool = True,
                 keep_empty_classes: bool = False) -> ImageList:
    """Class sub-folders of `root` -> an ImageList (labels 0..K-1 in sorted folder order)."""
    root = Path(root)
    if not root.is_dir():
        raise GraftError(f"{root}: no such folder", "give a folder with one sub-folder per class")
    exts = _norm_exts(exts)
    class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise GraftError(f"{root}: has no class sub-folders",
                         "put each class's images in its own sub-folder, e.g. ROOT/cat/*.jpg")
    _refuse_split_folders(root, class_dirs)
    classes, entries = [], []
    for name in class_dirs:
        files = _walk_images(root / name, exts, recursive)
        if not files and not keep_empty_classes:
            log.warning("%s: class folder %r has no images with extensions %s; it is left out",
                        root, name, ", ".join(exts))
            continue
        label = len(classes)
        classes.append(name)
        for rel in files:
            entries.append(Entry(len(entries), (float(label),), f"{name}/{rel}"))
    if not entries:
        raise GraftError(f"{root}: no images with extensions {', '.join(exts)} in its sub-folders",
                         "check the folder or pass --ext")
    return ImageList(entries, root, classes, str(root))


def _refuse_split_folders(root: Path, class_dirs: list[str]) -> None:
    """ROOT/train/cat/*.jpg, ROOT/val/cat/*.jpg: indexing ROOT would make train and val the classes."""
    if not all(d.lower() in SPLIT_NAMES for d in class_dirs):
        return
    if all(any(c.is_dir() and not c.name.startswith(".") for c in (root / d).iterdir()) for d in class_dirs):
        first = next((d for d in class_dirs if d.lower().startswith("train")), class_dirs[0])
        raise GraftError(f"{root}: its sub-folders {', '.join(class_dirs)} are dataset splits holding class folders, "
                         "not classes", f"index each split on its own, e.g. graft data index {root / first} "
                         f"-o lists/{first}")


def index_csv(csv_file: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """A CSV of `path,label` rows (optional header; labels are class names or integers) -> an ImageList."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise GraftError(f"{csv_file}: no such file", "check the path")
    root = Path(root) if root is not None else csv_file.parent
    with open(csv_file, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    bad = next((i for i, r in enumerate(rows) if len(r) < 2), None)
    if bad is not None:
        raise GraftError(f"{csv_file}: row {bad + 1} has no label", "each row must be `path,label`")
    raw = [r[1].strip() for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        labels = [int(v) for v in raw]
        classes = [str(i) for i in range(max(labels) + 1)] if labels else []
    else:
        classes = sorted(set(raw))
        pos = {c: i for i, c in enumerate(classes)}
        labels = [pos[v] for v in raw]
    entries = [Entry(i, (float(lab),), r[0].strip().replace("\\", "/")) for i, (r, lab) in enumerate(zip(rows, labels))]
    return ImageList(entries, root, classes, str(csv_file))


def index(source: str | os.PathLike, root: str | os.PathLike | None = None, exts: Sequence[str] | None = None,
          recursive: bool = True) -> ImageList:
    """A folder of class sub-folders or a CSV/text list of path,label -> an ImageList."""
    p = Path(source)
    if p.is_dir():
        return index_folder(p, exts, recursive)
    if p.suffix.lower() in (".csv", ".txt"):
        return index_csv(p, root)
    if not p.exists():
        raise GraftError(f"{p}: no such folder or file", "give a folder of class sub-folders or a CSV of path,label")
    raise GraftError(f"{p}: cannot index this file", "give a folder of class sub-folders or a .csv of path,label")


def make_lists(source: str | os.PathLike, out: str | os.PathLike, *, root: str | os.PathLike | None = None,
               exts: Sequence[str] | None = None, recursive: bool = True, shuffle: bool = False,
               seed: int = 100, train_ratio: float = 1.0, test_ratio: float = 0.0) -> dict[str, Path]:
    """Write `OUT.lst` (or im2rec-style `OUT_train/_val/_test.lst`) + class maps; returns the written lists.

    With shuffle, entries are shuffled by Python's `random.seed(seed); random.shuffle` exactly
    as im2rec does (its seed is 100) before the train/test/val cut, so the result matches im2rec's.
    """
    if not (0.0 < train_ratio <= 1.0) or not (0.0 <= test_ratio < 1.0) or train_ratio + test_ratio > 1.0 + 1e-9:
        raise GraftError(f"train ratio {train_ratio} / test ratio {test_ratio} are not valid fractions",
                         "use 0 < train <= 1, 0 <= test, train + test <= 1")
    lst = index(source, root, exts, recursive)
    entries = list(lst.entries)
    if shuffle:
        random.seed(seed)
        random.shuffle(entries)
    out = Path(str(out)[:-4] if str(out).endswith(".lst") else out)
    parts: dict[str, list[Entry]]
    if train_ratio == 1.0:
        parts = {"": entries}
    else:
        n = len(entries)
        sep, sep_test = int(n * train_ratio), int(n * test_ratio)
        parts = {}
        if test_ratio:
            parts["_test"] = entries[:sep_test]
        if train_ratio + test_ratio < 1.0:
            parts["_val"] = entries[sep_test + sep:]
        parts["_train"] = entries[sep_test:sep_test + sep]
    written = {}
    for suffix, part in parts.items():
        path = out.with_name(out.name + suffix + ".lst")
        write_lst(path, part)
        save_classes(classes_path(path), lst.classes, lst.root)
        written[suffix.lstrip("_") or "all"] = path
    return written


def check_inside(lst: ImageList) -> list[Entry]:
    """Entries whose path leaves the root (`../`, absolute paths, links out)."""
    return [e for e in lst.entries if resolve_in_root(lst.root, e.path) is None]
