"""Image lists in MXNet im2rec's `.lst` format and the class map saved beside them.

A `.lst` line is `index<TAB>label[<TAB>label...]<TAB>relative/path` (labels written
as `%f`, exactly as im2rec writes them). The class map `NAME.classes.json` (which
im2rec only prints) holds the class names in label order and where the images
live (`root`, relative to the list's folder), so a list can be used from anywhere.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from ..atomic import atomic_open
from ..errors import GraftError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CLASSES_FORMAT = "graftkit.classes"


@dataclass(frozen=True)
class Entry:
    """One image of a list: its key (im2rec's index), label(s) and path relative to the root."""
    index: int
    labels: tuple[float, ...]
    path: str

    @property
    def label(self) -> int:
        return int(self.labels[0])


@dataclass
class ImageList:
    """Entries plus what is needed to find and name them."""
    entries: list[Entry]
    root: Path
    classes: list[str] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def labels(self) -> list[int]:
        return [e.label for e in self.entries]


def classes_path(list_path: str | os.PathLike) -> Path:
    """Where the class map of `NAME.lst` (or of a pack `NAME`) lives: `NAME.classes.json`."""
    p = Path(list_path)
    stem = p.name[:-len(p.suffix)] if p.suffix in (".lst", ".rec", ".idx", ".csv", ".txt") else p.name
    return p.with_name(stem + ".classes.json")


def format_line(e: Entry) -> str:
    return "\t".join([str(e.index), *("%f" % v for v in e.labels), e.path]) + "\n"


def write_lst(path: str | os.PathLike, entries: Iterable[Entry]) -> Path:
    """Write entries as an im2rec `.lst` file, atomically."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        for e in entries:
            if "\t" in e.path or "\n" in e.path:
                raise GraftError(f"{e.path!r}: a path with a tab or newline cannot go in a .lst file",
                                 "rename the file")
            f.write(format_line(e))
    return path


MAX_LABEL = 2**31 - 1


def check_label(value: float, where: str) -> None:
    """A label read from a file is finite and fits an int32 (as im2rec's are), or one clean error."""
    if not math.isfinite(value) or abs(value) > MAX_LABEL:
        raise GraftError(f"{where}: label {value!r} is not a class index (finite, at most {MAX_LABEL})",
                         "labels are class indices 0..K-1; rebuild the list with `graft data index`")


def read_lst(path: str | os.PathLike) -> list[Entry]:
    """Parse an im2rec `.lst` file; a malformed line is a GraftError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{path}: no such list file", "check the path, or make one with `graft data index`")
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise GraftError(f"{path}:{n}: expected `index<TAB>label<TAB>path`, got {line[:80]!r}",
                                 "lines of a .lst file are tab-separated")
            try:
                index = int(parts[0])
                labels = tuple(float(v) for v in parts[1:-1])
            except ValueError:
                raise GraftError(f"{path}:{n}: index or label is not a number in {line[:80]!r}",
                                 "lines are `index<TAB>label<TAB>path`") from None
            if not 0 <= index < 2**63:
                raise GraftError(f"{path}:{n}: index {index} is outside 0..2^63-1", "number the lines 0, 1, 2, ...")
            for v in labels:
                check_label(v, f"{path}:{n}")
            if "\0" in parts[-1]:
                raise GraftError(f"{path}:{n}: the path holds a NUL byte", "list real file names")
            entries.append(Entry(index, labels, parts[-1]))
    return entries


def save_classes(path: str | os.PathLike, classes: Sequence[str] | None, root: str | os.PathLike | None = None,
                 **extra) -> Path:
    """Write the class map (and the images' root, relative to the map's folder) atomically."""
    path = Path(path)
    doc = {"format": CLASSES_FORMAT, "classes": list(classes) if classes is not None else None}
    if root is not None:
        doc["root"] = os.path.relpath(Path(root).resolve(), path.parent.resolve()).replace(os.sep, "/")
    doc.update(extra)
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path


def load_classes(path: str | os.PathLike) -> dict | None:
    """The class-map document at `path`, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GraftError(f"{path}: not a valid class map ({e})", "delete it and re-run `graft data index`") from None
    if not isinstance(doc, dict) or doc.get("format") != CLASSES_FORMAT:
        raise GraftError(f"{path}: not a graftkit class map", "delete it and re-run `graft data index`")
    return doc


def open_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """A `.lst` file with its class map and root (explicit `root`, else the map's, else the list's folder)."""
    path = Path(path)
    entries = read_lst(path)
    doc = load_classes(classes_path(path)) or {}
    if root is None:
        root = path.parent / doc["root"] if "root" in doc else path.parent
    return ImageList(entries, Path(root), doc.get("classes"), str(path))


def resolve_in_root(root: Path, rel: str) -> Path | None:
    """`root/rel` if the entry stays inside root, else None (a list entry may not point outside its folder).

    The check is on the path as written (`..`, absolute paths, drive letters), not on where symbolic
    links lead: a folder of links to images elsewhere is a common, deliberate layout."""
    rel = rel.replace("\\", "/")
    if not rel or PurePosixPath(rel).is_absolute() or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        return None
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return Path(os.path.abspath(root)) / norm
