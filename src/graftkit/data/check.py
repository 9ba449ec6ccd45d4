"""What is wrong with a data set, before it wastes a training run (`graft data check`).

Per file: unreadable, missing, zero-byte, not an image / corrupt, truncated (errors:
the file cannot be used); GIF, animated, CMYK, palette, transparency, 16-bit,
grayscale, EXIF rotation, below a minimum size (warnings/notes: the file is used,
and the message says how it is converted). Per data set: exact duplicates (by
content hash; with different labels an error), list entries pointing outside the
root, labels that are not 0..K-1 without gaps or beyond the class map, empty
classes, class imbalance.

`fix(report, OUT.lst)` writes a clean list: errors dropped, later copies of a
duplicate dropped, labels renumbered 0..K-1 (class map written beside it). The
user's files are never modified.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import GraftError
from ..progress import track
from .decode import failure_reason as decode_reason
from .index import index_folder
from .lists import Entry, ImageList, classes_path, open_list, resolve_in_root, save_classes, write_lst

ERROR, WARNING, NOTE = "error", "warning", "note"


@dataclass
class Problem:
    kind: str
    severity: str
    message: str
    path: str | None = None
    index: int | None = None


@dataclass
class FileInfo:
    """What probing one file found (picklable, made in worker processes)."""
    pos: int
    sha256: str | None = None
    size: tuple[int, int] | None = None
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, severity, message)


@dataclass
class CheckReport:
    source: str
    root: str
    images: int
    classes: list[str]
    counts: dict[str, int]
    problems: list[Problem]
    lst: ImageList | None = None
    unusable: set[int] = field(default_factory=set)    # positions in lst.entries
    duplicates: set[int] = field(default_factory=set)  # later copies

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def kinds(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def to_json(self) -> dict:
        return {"source": self.source, "root": self.root, "images": self.images, "classes": self.classes,
                "counts": self.counts, "errors": len(self.errors), "warnings": len(self.warnings),
                "kinds": dict(self.kinds()), "problems": [asdict(p) for p in self.problems]}


def probe_file(pos: int, path: Path | None, min_size: int = 32) -> FileInfo:
    """Everything check needs to know about one file; never raises."""
    info = FileInfo(pos)
    add = info.problems.append
    if path is None:
        add(("outside_root", ERROR, "list entry points outside the root folder; it is refused"))
        return info
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        add(("missing", ERROR, "file does not exist"))
        return info
    except OSError as e:
        add(("unreadable", ERROR, f"cannot be read ({e.strerror})"))
        return info
    if not data:
        add(("zero_byte", ERROR, "zero-byte file"))
        return info
    info.sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, size = img.format, img.mode, img.size
            frames = getattr(img, "n_frames", 1)
            transparency = "transparency" in img.info
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1
            img.load()
    except Exception as e:  # Pillow raises OSError/SyntaxError/ValueError... for damaged data
        reason = decode_reason(e)  # the same words the loader and pack use
        add(("truncated" if reason.startswith("truncated") else "corrupt", ERROR, reason))
        return info
    info.size = size
    if fmt == "GIF":
        add(("gif", NOTE, "GIF: decoded from its palette to RGB"))
    if frames > 1:
        add(("animated", WARNING, f"animated {fmt} with {frames} frames: only the first frame is used"))
    if mode == "CMYK":
        add(("cmyk", WARNING, "CMYK colour: converted to RGB"))
    elif mode == "P":
        add(("palette", NOTE, "palette image: converted to RGB"))
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        add(("16bit", WARNING, "16-bit pixels: scaled to 8-bit"))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or transparency:
        add(("alpha", WARNING, "has transparency: composited onto white"))
    if mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"):
        add(("grayscale", NOTE, "grayscale: repeated to 3 channels for RGB models"))
    if orientation not in (0, 1):
        add(("exif_rotation", NOTE, f"EXIF orientation {orientation}: rotated upright when loaded"))
    if min(size) < min_size:
        add(("too_small", WARNING, f"only {size[0]}x{size[1]} pixels (below {min_size}): upscaled, little to learn from"))
    return info


def _probe_job(job):
    return probe_file(*job)


def _load(source, root=None) -> ImageList:
    p = Path(source)
    if p.is_dir():
        return index_folder(p, keep_empty_classes=True)
    if p.suffix == ".lst":
        return open_list(p, root)
    if p.suffix.lower() == ".csv":
        from .index import index_csv
        return index_csv(p, root)
    if not p.exists():
        raise GraftError(f"{p}: no such folder or list", "give a folder of class sub-folders or a .lst file")
    raise GraftError(f"{p}: cannot check this file", "give a folder of class sub-folders, a .lst or a .csv")


def check(source, root=None, *, min_size: int = 32, imbalance: float = 3.0, workers: int = 2,
          progress: bool | None = None) -> CheckReport:
    """Check a folder, `.lst` or `.csv`; returns a CheckReport (nothing is modified)."""
    lst = source if isinstance(source, ImageList) else _load(source, root)
    entries = lst.entries
    jobs = [(i, resolve_in_root(lst.root, e.path), min_size) for i, e in enumerate(entries)]
    if workers > 1 and len(jobs) >= 64:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            infos = list(track(pool.imap(_probe_job, jobs, chunksize=16), "checking", total=len(jobs), unit="img",
                               disable=None if progress is None else not progress))
    else:
        infos = [_probe_job(j) for j in jobs]
    problems: list[Problem] = []
    unusable: set[int] = set()
    for info in infos:
        e = entries[info.pos]
        for kind, sev, msg in info.problems:
            problems.append(Problem(kind, sev, msg, e.path, e.index))
            if sev == ERROR:
                unusable.add(info.pos)

    # exact duplicates (content hash): later copies are flagged; different labels are an error
    by_hash: dict[str, list[int]] = defaultdict(list)
    for info in infos:
        if info.sha256 and info.pos not in unusable:
            by_hash[info.sha256].append(info.pos)
    duplicates: set[int] = set()
    for positions in by_hash.values():
        first = entries[positions[0]]
        for pos in positions[1:]:
            e = entries[pos]
            duplicates.add(pos)
            if e.labels != first.labels:
                problems.append(Problem("duplicate_conflict", ERROR,
                                        f"same image as {first.path} but labelled {e.label} instead of {first.label}",
                                        e.path, e.index))
            else:
                problems.append(Problem("duplicate", WARNING, f"exact duplicate of {first.path}", e.path, e.index))

    # labels and classes
    labels = [e.label for e in entries]
    names = list(lst.classes) if lst.classes else None
    present = sorted(set(labels))
    if any(lab != int(lab) for e in entries for lab in e.labels[:1]):
        problems.append(Problem("label_not_integer", ERROR, "some class labels are not whole numbers"))
    if present and (present[0] != 0 or present != list(range(len(present)))):
        problems.append(Problem("label_gaps", ERROR,
                                f"labels are {_ranges(present)}, not 0..{len(present) - 1} without gaps "
                                "(Caffe's loss sticks at 87.3365, PyTorch's fails): use the --fix list, which renumbers them"))
    beyond = [lab for lab in present if names and lab >= len(names)]
    if beyond:
        problems.append(Problem("unknown_label", ERROR, f"labels {_ranges(beyond)} have no name in the class map "
                                f"({len(names)} classes)"))
    counts_by_label = Counter(labels)
    usable_counts = Counter(entries[i].label for i in range(len(entries)) if i not in unusable and i not in duplicates)
    n_labels = max(len(names) if names else 0, (max(present) + 1) if present else 0)
    label_names = {i: (names[i] if names and i < len(names) else str(i)) for i in range(n_labels)}
    for lab, name in label_names.items():
        if usable_counts.get(lab, 0) == 0:
            what = "has no usable images" if counts_by_label.get(lab) else "has no images"
            problems.append(Problem("empty_class", ERROR, f"class {lab} ({name}) {what}"))
    nonzero = [c for c in usable_counts.values() if c > 0]
    if len(nonzero) > 1 and max(nonzero) > imbalance * min(nonzero):
        big = max(usable_counts, key=usable_counts.get)
        small = min((c for c in usable_counts if usable_counts[c] > 0), key=usable_counts.get)
        problems.append(Problem("imbalance", WARNING,
                                f"classes are imbalanced: {label_names.get(big, big)} has {usable_counts[big]} images, "
                                f"{label_names.get(small, small)} {usable_counts[small]} "
                                f"(ratio {usable_counts[big] / usable_counts[small]:.1f}): consider class-balanced sampling"))
    counts = {label_names[lab]: counts_by_label.get(lab, 0) for lab in sorted(label_names)}
    return CheckReport(str(lst.source), str(lst.root), len(entries), [label_names[i] for i in sorted(label_names)],
                       counts, problems, lst, unusable, duplicates)


def _ranges(vals: list[int]) -> str:
    vals = sorted(vals)
    out, start = [], None
    for i, v in enumerate(vals):
        if start is None:
            start = v
        if i + 1 == len(vals) or vals[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}..{v}")
            start = None
    return ", ".join(out)


def fix(report: CheckReport, out: str | os.PathLike) -> tuple[Path, int]:
    """Write a clean list (errors and later duplicates dropped, labels 0..K-1); returns (path, entries kept)."""
    lst = report.lst
    keep = [e for i, e in enumerate(lst.entries) if i not in report.unusable and i not in report.duplicates]
    if not keep:
        raise GraftError(f"{report.source}: no usable images left after dropping the problems",
                         "fix the files first")
    old = sorted({e.label for e in keep})
    remap = {lab: i for i, lab in enumerate(old)}
    names = lst.classes
    classes = [names[lab] if names and lab < len(names) else str(lab) for lab in old]
    clean = [Entry(e.index, (float(remap[e.label]),) + tuple(e.labels[1:]), e.path) for e in keep]
    out = Path(out)
    if out.suffix != ".lst":
        out = out.with_name(out.name + ".lst")
    write_lst(out, clean)
    save_classes(classes_path(out), classes, lst.root)
    return out, len(clean)
