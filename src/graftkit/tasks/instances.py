"""Instance masks with ids as input, read into boxes (detection) and class masks (segmentation).

Layout (beside the class-mask layout of `data.MaskFolder`):
    ROOT/images/<stem>.png|jpg       the images
    ROOT/instances/<stem>.png        one id per object (8- or 16-bit single channel); 0 = no object
and each object's class from one of:
    ROOT/masks/<stem>.png            a class mask: the class under the object's pixels (255 = ignore)
    ROOT/instances.json              {"<stem>": {"<id>": "class name" | class index, ...}, ...}
The class list is ROOT/classes.txt (or its parent's), background first as for class masks; without it,
the names in instances.json (sorted) or the class indices found, after "background".

An object's box is the extent of its pixels, in pixel-edge coordinates ([x0, y0, x1 + 1, y1 + 1]);
its detection label is its class index - 1 (detectors have no background class). Problems are Issues
naming the instance file and the object id: ids without a class (unknown_id), classes that are not in
the list (unknown_class), objects over several classes of the class mask (mixed_classes) or on its
background (background_object), ids the mapping names but the mask lacks (absent_id, a warning).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import GraftError
from .data import IGNORE, IMAGE_EXTS, Boxes, Issue, MaskFolder, _image_size, check_boxes, check_masks, read_classes

MAPPING = "instances.json"
MODES = ("L", "P", "I", "I;16")


def is_instance_folder(root: str | os.PathLike) -> bool:
    p = Path(root)
    return (p / "images").is_dir() and (p / "instances").is_dir()


class InstanceFolder:
    """The objects of an instance-mask folder: `objects(i)` -> ({id: class index}, id mask, issues)."""

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None):
        self.root = Path(root)
        if not is_instance_folder(self.root):
            raise GraftError(f"{self.root}: an instance-mask set needs images/ and instances/ folders",
                             "put the images in ROOT/images and the id masks in ROOT/instances")
        self.class_dir = self.root / "masks" if (self.root / "masks").is_dir() else None
        self.mapping: dict[str, dict[str, object]] | None = None
        mp = self.root / MAPPING
        if mp.is_file():
            try:
                doc = json.loads(mp.read_text("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GraftError(f"{mp}: not valid JSON ({e})", "fix the file") from None
            if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
                raise GraftError(f"{mp}: not a mapping of image stem -> {{id: class}}",
                                 'write it as {"<image stem>": {"<id>": "class name", ...}, ...}')
            self.mapping = {str(k): {str(i): c for i, c in v.items()} for k, v in doc.items()}
        if self.class_dir is None and self.mapping is None:
            raise GraftError(f"{self.root}: instance masks need each object's class",
                             f"add class masks in {self.root}/masks or an id -> class mapping {mp}")
        imgs = {p.stem: p for p in (self.root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS}
        insts = {p.stem: p for p in (self.root / "instances").glob("*.png")}
        self.orphans = [insts[s] for s in sorted(set(insts) - set(imgs))]
        self.stems = sorted(imgs)
        self.images = [imgs[s] for s in self.stems]
        self.instances = [insts.get(s) for s in self.stems]
        self.classes = classes or read_classes(self.root) or self._classes_found()

    def _classes_found(self) -> list[str]:
        if self.mapping is not None:
            vals = [c for m in self.mapping.values() for c in m.values()]
            if vals and all(isinstance(c, str) for c in vals):
                return ["background"] + sorted(set(vals))
            top = max([int(c) for c in vals if isinstance(c, int)], default=0)
        else:
            top = max((int(self._read(self.class_dir / (s + ".png"))[0].max(initial=0)) for s in self.stems
                       if (self.class_dir / (s + ".png")).is_file()), default=0)
            top = top if top != IGNORE else 0
        return ["background"] + [f"class{k}" for k in range(1, top + 1)]

    def __len__(self) -> int:
        return len(self.stems)

    @staticmethod
    def _read(path: Path) -> tuple[np.ndarray, str | None]:
        try:
            with Image.open(path) as im:
                if im.mode not in MODES:
                    return np.zeros((0, 0), np.int64), f"mode {im.mode} is not a single-channel id image"
                return np.asarray(im).astype(np.int64), None
        except OSError as e:
            return np.zeros((0, 0), np.int64), f"cannot read ({e})"

    def _class_of(self, name) -> int | None:
        if isinstance(name, bool):
            return None
        if isinstance(name, int):
            return name if 0 < name < len(self.classes) else None
        if isinstance(name, str) and name in self.classes[1:]:
            return self.classes.index(name)
        return None

    def objects(self, i: int) -> tuple[dict[int, int], np.ndarray, list[Issue]]:
        """({object id: class index 1..K}, the id mask, issues) of image i; objects with problems are left out."""
        stem, inst_path = self.stems[i], self.instances[i]
        if inst_path is None:
            return {}, np.zeros((0, 0), np.int64), [Issue(str(self.images[i]), "missing_mask",
                                                          f"no instance mask {self.root / 'instances' / (stem + '.png')}")]
        where = str(inst_path)
        ids, problem = self._read(inst_path)
        if problem:
            return {}, ids, [Issue(where, "mask_mode", problem)]
        issues: list[Issue] = []
        w, h = _image_size(self.images[i])
        if (ids.shape[1], ids.shape[0]) != (w, h):
            issues.append(Issue(where, "size_mismatch", f"instance mask is {ids.shape[1]}x{ids.shape[0]}, its image "
                                f"{w}x{h}"))
            return {}, ids, issues
        present = [int(v) for v in np.unique(ids) if v != 0]
        found: dict[int, int] = {}
        if self.mapping is not None and self.class_dir is None:
            table = self.mapping.get(stem, {})
            for oid in present:
                if str(oid) not in table:
                    issues.append(Issue(f"{where} id {oid}", "unknown_id", f"object id {oid} has no class in "
                                        f"{self.root / MAPPING} (under {stem!r})"))
                    continue
                k = self._class_of(table[str(oid)])
                if k is None:
                    issues.append(Issue(f"{where} id {oid}", "unknown_class", f"class {table[str(oid)]!r} is not "
                                        f"among {self.classes[1:9]}"))
                    continue
                found[oid] = k
            for oid in sorted(set(table) - {str(v) for v in present}, key=str):
                issues.append(Issue(f"{where} id {oid}", "absent_id", f"{self.root / MAPPING} names object id {oid}, "
                                    "which this mask does not hold", fatal=False))
        else:
            cpath = self.class_dir / (stem + ".png")
            if not cpath.is_file():
                return {}, ids, [Issue(where, "missing_mask", f"no class mask {cpath} for its object classes")]
            cls, problem = self._read(cpath)
            if problem or cls.shape != ids.shape:
                return {}, ids, [Issue(str(cpath), "size_mismatch" if not problem else "mask_mode",
                                       problem or f"class mask is {cls.shape[1]}x{cls.shape[0]}, its instance mask "
                                       f"{ids.shape[1]}x{ids.shape[0]}")]
            for oid in present:
                under = np.unique(cls[(ids == oid) & (cls != IGNORE)])
                if under.size == 0:
                    issues.append(Issue(f"{where} id {oid}", "unknown_id", f"object id {oid} lies only on ignored "
                                        f"pixels ({IGNORE}) of {cpath.name}: it has no class"))
                elif under.size > 1:
                    issues.append(Issue(f"{where} id {oid}", "mixed_classes", f"object id {oid} covers classes "
                                        f"{under[:5].tolist()} in {cpath.name}: one object, one class"))
                elif under[0] == 0:
                    issues.append(Issue(f"{where} id {oid}", "background_object", f"object id {oid} lies on "
                                        f"background (0) in {cpath.name}"))
                elif self._class_of(int(under[0])) is None:
                    issues.append(Issue(f"{where} id {oid}", "unknown_class", f"class {int(under[0])} of {cpath.name} "
                                        f"is not in 1..{len(self.classes) - 1}"))
                else:
                    found[oid] = int(under[0])
        return found, ids, issues

    def class_mask(self, i: int) -> np.ndarray:
        """Image i's class mask (0 = background, k = class k); a problem with its objects is one GraftError."""
        found, ids, issues = self.objects(i)
        fatal = [x for x in issues if x.fatal]
        if fatal:
            raise GraftError(fatal[0].line(), f"run `graft data check {self.root}` to list every problem")
        out = np.zeros(ids.shape, np.int64)
        for oid, k in found.items():
            out[ids == oid] = k
        return out


def read_instances(root: str | os.PathLike, classes: list[str] | None = None) -> tuple[Boxes, list[Issue]]:
    """An instance-mask folder as a detection set (each object's pixel extent, label = class index - 1),
    with every problem found."""
    folder = InstanceFolder(root, classes)
    issues = [Issue(str(p), "missing_image", "no image of this name in images/") for p in folder.orphans]
    recs = []
    for i, stem in enumerate(folder.stems):
        found, ids, probs = folder.objects(i)
        issues += probs
        w, h = _image_size(folder.images[i])
        rec = {"id": i + 1, "file": folder.images[i].name, "width": w, "height": h, "boxes": [], "labels": [],
               "ann_ids": [], "where": str(folder.instances[i] or folder.images[i])}
        for oid, k in sorted(found.items()):
            ys, xs = np.nonzero(ids == oid)
            rec["boxes"].append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
            rec["labels"].append(k - 1)
            rec["ann_ids"].append(f"id {oid}")
        recs.append(rec)
    names = folder.classes[1:]
    boxes = Boxes(recs, names, list(range(1, len(names) + 1)), folder.root / "images", source=str(folder.root))
    return boxes, issues + check_boxes(boxes)


class InstanceMaskFolder(MaskFolder):
    """An instance-mask folder without class masks, as a segmentation set: each object painted with its class."""

    def __init__(self, root: str | os.PathLike, size: int = 128, train: bool = False, num_classes: int | None = None,
                 transform=None):
        from .data import seg_transform
        self.root = Path(root)
        self.instances = InstanceFolder(self.root)
        self.images, self.instance_classes = self.instances.images, self.instances.classes
        if not self.images:
            raise GraftError(f"{self.root / 'images'}: no images", "add images")
        self.transform = transform or seg_transform(size, train)
        self.num_classes = num_classes

    def read_mask(self, i: int) -> np.ndarray:
        return self.instances.class_mask(i)


def check_instances(root: str | os.PathLike) -> tuple[list[Issue], Boxes]:
    """Every problem of an instance-mask folder (with its class masks' own, when it has them), and its boxes."""
    boxes, issues = read_instances(root)
    if (Path(root) / "masks").is_dir():
        issues = check_masks(root, ["background", *boxes.classes]) + issues
    return issues, boxes
