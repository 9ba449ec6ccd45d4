"""Detection and segmentation data: annotation readers, checks, and datasets with consistent augmentation.

Internal form of a detection set (`Boxes`): image records {"id", "file", "width", "height",
"boxes": [[x1, y1, x2, y2], ...] in pixels, "labels": [0..K-1]} plus the class names and the
source's category ids (COCO ids may be 1..K with gaps, or start at 0; class index k is always
`category_ids[k]`, and no id is taken for background).

Readers: COCO JSON (`read_coco`), Pascal VOC XML folders (`read_voc`), YOLO txt folders
(`read_yolo`); `write_coco` writes the internal form back (COCO -> internal -> COCO is identical
for the fields graftkit reads). `check_boxes` lists every problem with its file and annotation id
or line; `clean_boxes` drops degenerate boxes and clips out-of-bounds ones, and says what it did.

Segmentation: `MaskFolder` reads ROOT/images/*.{png,jpg} with ROOT/masks/<same stem>.png
(class-indexed, 255 = ignore); id masks of instances are `instances.py`'s (InstanceMaskFolder).
Augmentations run once on (image, mask[, boxes]) together through
torchvision.transforms.v2 and tv_tensors, so geometry stays consistent; masks are resized
nearest-neighbour (v2 does so for tv_tensors.Mask), never bilinear.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import GraftError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE = 255


@dataclass
class Boxes:
    images: list[dict]
    classes: list[str]
    category_ids: list[int]
    root: Path                      # image files are relative to it
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Issue:
    where: str          # file, and annotation id or line
    problem: str        # degenerate | out_of_bounds | empty_image | unknown_category | gapped_ids | missing_image ...
    message: str
    fatal: bool = True

    def line(self) -> str:
        return f"{self.where}: {self.message}"


# -- COCO ---------------------------------------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise GraftError(f"{path} does not exist", "give the COCO annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GraftError(f"{path}: not valid JSON ({e})", "fix or re-export the annotation file") from None


def read_coco(path: str | os.PathLike, images: str | os.PathLike | None = None) -> tuple[Boxes, list[Issue]]:
    """A COCO JSON file -> (Boxes, issues found while reading). Images are looked up under `images`
    (default: the JSON's folder, then its images/ sub-folder)."""
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("categories"), list):
        raise GraftError(f"{path}: not a COCO detection file (no images/categories lists)",
                         "give a COCO instances JSON")
    root = Path(images) if images else (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    cats = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in doc["categories"])
    ids = [c for c, _ in cats]
    index = {c: k for k, c in enumerate(ids)}
    issues: list[Issue] = []
    if ids and ids != list(range(ids[0], ids[0] + len(ids))):
        issues.append(Issue(f"{path}", "gapped_ids", f"category ids {ids[:8]}{'...' if len(ids) > 8 else ''} have "
                            "gaps: graftkit maps them to class indices 0..K-1 in id order (nothing is renumbered in "
                            "your files)", fatal=False))
    if 0 in index:
        issues.append(Issue(f"{path}", "zero_id", f"category id 0 ({cats[0][1]!r}) is a real class here, not "
                            "background", fatal=False))
    recs, by_id = [], {}
    for im in doc["images"]:
        rec = {"id": int(im["id"]), "file": str(im["file_name"]), "width": int(im.get("width") or 0),
               "height": int(im.get("height") or 0), "boxes": [], "labels": [], "ann_ids": []}
        by_id[rec["id"]] = rec
        recs.append(rec)
    for a in doc.get("annotations") or []:
        where = f"{path} annotation id {a.get('id')}"
        rec = by_id.get(a.get("image_id"))
        if rec is None:
            issues.append(Issue(where, "unknown_image", f"image_id {a.get('image_id')} is not in images"))
            continue
        if a.get("category_id") not in index:
            issues.append(Issue(where, "unknown_category", f"category_id {a.get('category_id')} is not among the "
                                f"categories {ids[:8]}"))
            continue
        b = a.get("bbox")
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
            issues.append(Issue(where, "bad_box", f"bbox {b!r} is not [x, y, w, h]"))
            continue
        x, y, w, h = (float(v) for v in b)
        rec["boxes"].append([x, y, x + w, y + h])
        rec["labels"].append(index[a["category_id"]])
        rec["ann_ids"].append(a.get("id"))
    boxes = Boxes(recs, [n for _, n in cats], ids, root, source=str(path))
    return boxes, issues + check_boxes(boxes)


def write_coco(boxes: Boxes, path: str | os.PathLike | None = None) -> dict:
    """The internal form as a COCO dict (written to `path` when given). Boxes go back as [x, y, w, h]."""
    images, anns = [], []
    for rec in boxes.images:
        images.append({"id": rec["id"], "file_name": rec["file"], "width": rec["width"], "height": rec["height"]})
        for i, (b, lab) in enumerate(zip(rec["boxes"], rec["labels"])):
            aid = rec.get("ann_ids", [None] * len(rec["boxes"]))[i]
            anns.append({"id": aid if aid is not None else len(anns) + 1, "image_id": rec["id"],
                         "category_id": boxes.category_ids[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": c, "name": n} for c, n in zip(boxes.category_ids, boxes.classes)]}
    if path is not None:
        Path(path).write_text(json.dumps(doc))
    return doc


# -- VOC / YOLO ----------------------------------------------------------------------------------------------
def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return 0, 0


def read_voc(folder: str | os.PathLike, images: str | os.PathLike | None = None,
             classes: list[str] | None = None) -> tuple[Boxes, list[Issue]]:
    """A folder of Pascal VOC XML files (one per image). Classes: `classes`, else the sorted names found."""
    folder = Path(folder)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise GraftError(f"{folder}: no .xml annotation files", "give the Annotations folder of a VOC set")
    parsed, issues = [], []
    for i, f in enumerate(files):
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as e:
            issues.append(Issue(str(f), "bad_xml", f"not valid XML ({e})"))
            continue
        size = root.find("size")
        w = int(float(size.findtext("width", "0"))) if size is not None else 0
        h = int(float(size.findtext("height", "0"))) if size is not None else 0
        objs = []
        for j, o in enumerate(root.iter("object")):
            bb = o.find("bndbox")
            try:
                box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (TypeError, ValueError, AttributeError):
                issues.append(Issue(f"{f} object {j + 1}", "bad_box", "bndbox lacks xmin/ymin/xmax/ymax"))
                continue
            # VOC pixel indices are 1-based and inclusive: [xmin-1, ymin-1, xmax, ymax] in pixel-edge coordinates
            objs.append(((o.findtext("name") or "").strip(), [box[0] - 1, box[1] - 1, box[2], box[3]], j + 1))
        parsed.append((f, root.findtext("filename") or (f.stem + ".jpg"), w, h, objs))
    names = list(classes) if classes else sorted({n for *_r, objs in parsed for n, _b, _j in objs})
    index = {n: k for k, n in enumerate(names)}
    recs = []
    for i, (f, fname, w, h, objs) in enumerate(parsed):
        rec = {"id": i + 1, "file": fname, "width": w, "height": h, "boxes": [], "labels": [], "ann_ids": [],
               "where": str(f)}
        for n, b, j in objs:
            if n not in index:
                issues.append(Issue(f"{f} object {j}", "unknown_category", f"class {n!r} is not among {names[:8]}"))
                continue
            rec["boxes"].append(b)
            rec["labels"].append(index[n])
            rec["ann_ids"].append(f"object {j}")
        recs.append(rec)
    boxes = Boxes(recs, names, list(range(1, len(names) + 1)), Path(images) if images else folder, source=str(folder))
    return boxes, issues + check_boxes(boxes)


def read_yolo(images: str | os.PathLike, labels: str | os.PathLike | None = None,
              classes: list[str] | None = None) -> tuple[Boxes, list[Issue]]:
    """YOLO txt: one `labels/<stem>.txt` per image, lines `class cx cy w h` normalised to [0, 1].
    Classes: `classes`, else `classes.txt` / `obj.names` beside the labels, else class0..classN."""
    images = Path(images)
    labels = Path(labels) if labels else images.parent / "labels"
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS) if images.is_dir() else []
    if not files:
        raise GraftError(f"{images}: no images", "give the images folder of a YOLO set")
    if classes is None:
        for cand in (labels / "classes.txt", labels.parent / "classes.txt", labels.parent / "obj.names"):
            if cand.is_file():
                classes = [ln.strip() for ln in cand.read_text().splitlines() if ln.strip()]
                break
    issues: list[Issue] = []
    recs, top = [], -1
    for i, f in enumerate(files):
        w, h = _image_size(f)
        rec = {"id": i + 1, "file": f.name, "width": w, "height": h, "boxes": [], "labels": [], "ann_ids": []}
        txt = labels / (f.stem + ".txt")
        if txt.is_file():
            for ln, line in enumerate(txt.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    c, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
                    if len(parts) < 5:
                        raise ValueError
                except (ValueError, TypeError):
                    issues.append(Issue(f"{txt} line {ln}", "bad_box", f"{line.strip()!r} is not 'class cx cy w h'"))
                    continue
                if c < 0 or (classes is not None and c >= len(classes)):
                    issues.append(Issue(f"{txt} line {ln}", "unknown_category",
                                        f"class {c} is not in 0..{len(classes) - 1 if classes else '?'}"))
                    continue
                top = max(top, c)
                rec["boxes"].append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                rec["labels"].append(c)
                rec["ann_ids"].append(f"line {ln}")
            rec["where"] = str(txt)
        recs.append(rec)
    if classes is None:
        classes = [f"class{k}" for k in range(top + 1)]
    boxes = Boxes(recs, list(classes), list(range(len(classes))), images, source=str(labels))
    return boxes, issues + check_boxes(boxes)


# -- checks ---------------------------------------------------------------------------------------------------
def check_boxes(boxes: Boxes) -> list[Issue]:
    """Degenerate and out-of-bounds boxes, empty images, missing image files; one Issue each."""
    issues = []
    for rec in boxes.images:
        where = rec.get("where") or f"{boxes.source} image id {rec['id']} ({rec['file']})"
        if not (boxes.root / rec["file"]).is_file():
            issues.append(Issue(where, "missing_image", f"image file {boxes.root / rec['file']} does not exist"))
        if not rec["boxes"]:
            issues.append(Issue(where, "empty_image", "no boxes (kept as a negative image)", fatal=False))
        w, h = rec["width"], rec["height"]
        for b, aid in zip(rec["boxes"], rec.get("ann_ids") or [None] * len(rec["boxes"])):
            at = f"{boxes.source} annotation id {aid}" if isinstance(aid, int) else f"{where} {aid or ''}".strip()
            if not (b[2] > b[0] and b[3] > b[1]):
                issues.append(Issue(at, "degenerate", f"box {_fmt(b)} has no area (x2 <= x1 or y2 <= y1)"))
            elif w and h and (b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h):
                issues.append(Issue(at, "out_of_bounds", f"box {_fmt(b)} leaves the {w}x{h} image"))
    return issues


def _fmt(b) -> str:
    return "[" + ", ".join(f"{v:g}" for v in b) + "]"


def clean_boxes(boxes: Boxes) -> dict[str, int]:
    """In place: clip boxes to their image, then drop those with no area. Returns what was changed."""
    clipped = dropped = 0
    for rec in boxes.images:
        w, h = rec["width"], rec["height"]
        keep_b, keep_l, keep_a = [], [], []
        ids = rec.get("ann_ids") or [None] * len(rec["boxes"])
        for b, lab, aid in zip(rec["boxes"], rec["labels"], ids):
            if w and h:
                c = [min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)]
                clipped += c != list(b)
                b = c
            if b[2] > b[0] and b[3] > b[1]:
                keep_b.append(b), keep_l.append(lab), keep_a.append(aid)
            else:
                dropped += 1
        rec["boxes"], rec["labels"], rec["ann_ids"] = keep_b, keep_l, keep_a
    return {"clipped": clipped, "dropped": dropped}


def raise_fatal(issues: list[Issue], what: str = "the annotations") -> None:
    fatal = [i for i in issues if i.fatal]
    if fatal:
        more = f" (and {len(fatal) - 1} more)" if len(fatal) > 1 else ""
        raise GraftError(f"{fatal[0].line()}{more}",
                         f"run `graft data check` on {what} to list them; --fix writes a clean copy")


# -- datasets -------------------------------------------------------------------------------------------------
def _load_rgb(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise GraftError(f"{path}: cannot read the image ({e})", "remove or replace the file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _exact_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of a class mask with pixel centres aligned ("nearest-exact"). torch's plain
    "nearest" (what v2 uses for tv_tensors.Mask) picks floor(i * scale): the mask drifts by up to half a
    source pixel against the bilinearly resized image."""
    from torchvision import tv_tensors
    m = torch.nn.functional.interpolate(mask.as_subclass(torch.Tensor)[None, None].float(), size=tuple(size),
                                        mode="nearest-exact")[0, 0].to(mask.dtype)
    return tv_tensors.wrap(m, like=mask)


def _mask_exact(cls):
    """A v2 geometric transform whose tv_tensors.Mask output is resized nearest-exact (see _exact_mask)."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    class Exact(cls):
        def transform(self, inpt, params):
            if isinstance(inpt, tv_tensors.Mask):
                if "top" in params:            # a resized crop: crop first, then resize
                    inpt = TF.crop(inpt, params["top"], params["left"], params["height"], params["width"])
                return _exact_mask(inpt, self.size)
            return super().transform(inpt, params)
    Exact.__name__ = cls.__name__ + "Exact"
    return Exact


def seg_transform(size: int, train: bool):
    """v2 pipeline on (Image, Mask): random resized crop + flip when training, a plain resize otherwise.
    The image is resized bilinearly (antialiased), the mask nearest-neighbour with aligned pixel centres."""
    from torchvision.transforms import v2
    if train:
        return v2.Compose([_mask_exact(v2.RandomResizedCrop)((size, size), scale=(0.5, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
    return v2.Compose([_mask_exact(v2.Resize)((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def det_transform(size: int, train: bool):
    """v2 pipeline on (Image, BoundingBoxes, labels): the same geometry for image and boxes; boxes that
    lose their area are removed (SanitizeBoundingBoxes)."""
    from torchvision.transforms import v2
    ops = [v2.Resize((size, size), antialias=True)]
    if train:
        ops += [v2.RandomHorizontalFlip()]
    return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(min_size=1)])


class MaskFolder(Dataset):
    """ROOT/images/* with ROOT/masks/<stem>.png -> (float image 3xSxS in [0,1], int64 mask SxS)."""

    def __init__(self, root: str | os.PathLike, size: int = 128, train: bool = False, num_classes: int | None = None,
                 transform=None):
        self.root = Path(root)
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        self.transform = transform or seg_transform(size, train)
        self.num_classes = num_classes
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise GraftError(f"{self.root}: a mask data set needs images/ and masks/ folders",
                             "put the images in ROOT/images and class-indexed PNG masks in ROOT/masks "
                             "(or id masks in ROOT/instances, see graftkit.tasks.instances)")
        self.images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.images:
            raise GraftError(f"{img_dir}: no images", "add images")
        self.masks = []
        for p in self.images:
            m = mask_dir / (p.stem + ".png")
            if not m.is_file():
                raise GraftError(f"{p}: no mask {m}", "every image needs a mask PNG of the same name")
            self.masks.append(m)

    def __len__(self) -> int:
        return len(self.images)

    def read_mask(self, i: int) -> np.ndarray:
        try:
            with Image.open(self.masks[i]) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise GraftError(f"{self.masks[i]}: mask mode {im.mode} is not a class-indexed image",
                                     "save masks as 8-bit single-channel PNGs holding class indices")
                m = np.asarray(im).astype(np.int64)
        except OSError as e:
            raise GraftError(f"{self.masks[i]}: cannot read the mask ({e})", "replace the file") from None
        if self.num_classes is not None:
            bad = np.unique(m[(m >= self.num_classes) & (m != IGNORE)])
            if bad.size:
                raise GraftError(f"{self.masks[i]}: mask values {bad[:5].tolist()} are not classes 0..{self.num_classes - 1} "
                                 f"or the ignore value {IGNORE}", "fix the mask or the class list")
        return m

    def __getitem__(self, i: int):
        from torchvision import tv_tensors
        img = tv_tensors.Image(_load_rgb(self.images[i]))
        m = self.read_mask(i)
        if m.shape != tuple(img.shape[-2:]):
            raise GraftError(f"{self.images[i]}: its mask is {m.shape[1]}x{m.shape[0]} but the image is "
                             f"{img.shape[-1]}x{img.shape[-2]}", "masks must have their image's size")
        mask = tv_tensors.Mask(torch.from_numpy(m))
        img, mask = self.transform(img, mask)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class BoxSet(Dataset):
    """Boxes -> (float image 3xSxS in [0,1], {"boxes": Nx4 xyxy, "labels": N}) with v2 transforms."""

    def __init__(self, boxes: Boxes, size: int = 128, train: bool = False, transform=None):
        self.boxes = boxes
        self.transform = transform or det_transform(size, train)

    def __len__(self) -> int:
        return len(self.boxes.images)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors
        rec = self.boxes.images[i]
        img = _load_rgb(self.boxes.root / rec["file"])
        h, w = img.shape[-2:]
        b = torch.tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w)),
                  "labels": torch.tensor(rec["labels"], dtype=torch.int64)}
        img, target = self.transform(tv_tensors.Image(img), target)
        return img.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor),
                                               "labels": target["labels"]}


def collate_pairs(items):
    return [x for x, _ in items], [y for _, y in items]


def read_classes(root: str | os.PathLike) -> list[str] | None:
    """classes.txt in ROOT or its parent (one name a line), if there is one."""
    for cand in (Path(root) / "classes.txt", Path(root).parent / "classes.txt"):
        if cand.is_file():
            return [ln.strip() for ln in cand.read_text().splitlines() if ln.strip()]
    return None


def check_masks(root: str | os.PathLike, classes: list[str] | None = None) -> list[Issue]:
    """A mask folder's problems: images without masks (or masks without images), masks whose size differs
    from their image's, masks that are not single-channel, values that are neither a class nor 255."""
    root = Path(root)
    classes = classes or read_classes(root)
    issues: list[Issue] = []
    img_dir, mask_dir = root / "images", root / "masks"
    images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS} if img_dir.is_dir() else {}
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    for stem in sorted(set(images) - set(masks)):
        issues.append(Issue(str(images[stem]), "missing_mask", f"no mask {mask_dir / (stem + '.png')}"))
    for stem in sorted(set(masks) - set(images)):
        issues.append(Issue(str(masks[stem]), "missing_image", "no image of this name in images/"))
    k = len(classes) if classes else None
    for stem in sorted(set(images) & set(masks)):
        try:
            with Image.open(masks[stem]) as m:
                mode, msize = m.mode, m.size
                arr = np.asarray(m)
            isize = _image_size(images[stem])
        except OSError as e:
            issues.append(Issue(str(masks[stem]), "unreadable", f"cannot read ({e})"))
            continue
        if mode not in ("L", "P", "I", "I;16"):
            issues.append(Issue(str(masks[stem]), "mask_mode", f"mode {mode} is not a class-indexed image"))
            continue
        if msize != isize:
            issues.append(Issue(str(masks[stem]), "size_mismatch", f"mask is {msize[0]}x{msize[1]}, its image "
                                f"{isize[0]}x{isize[1]}"))
        vals = np.unique(arr)
        bad = [int(v) for v in vals if v != IGNORE and (k is not None and v >= k)]
        if bad:
            issues.append(Issue(str(masks[stem]), "mask_values", f"values {bad[:5]} are neither classes 0..{k - 1} "
                                f"nor the ignore value {IGNORE}"))
    if classes is None:
        issues.append(Issue(str(root), "no_classes", "no classes.txt: mask values cannot be checked against a class "
                            "list", fatal=False))
    return issues


def annotation_kind(path: str | os.PathLike) -> str | None:
    """coco | voc | yolo | masks for a detection/segmentation source, None for anything else (instance-mask
    folders: instances.is_instance_folder)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return "coco"
    if not p.is_dir():
        return None
    if (p / "annotations.json").is_file():
        return "coco"
    if (p / "images").is_dir() and (p / "masks").is_dir():
        return "masks"
    if (p / "images").is_dir() and (p / "labels").is_dir() and any((p / "labels").glob("*.txt")):
        return "yolo"
    if any(p.glob("*.xml")):
        return "voc"
    return None


def check_annotations(path: str | os.PathLike) -> tuple[str, list[Issue], Boxes | None]:
    """(kind, issues, the detection set when there is one) of any annotation source `annotation_kind` knows."""
    kind = annotation_kind(path)
    p = Path(path)
    if kind == "coco":
        boxes, issues = read_coco(p / "annotations.json" if p.is_dir() else p)
    elif kind == "voc":
        boxes, issues = read_voc(p)
    elif kind == "yolo":
        boxes, issues = read_yolo(p / "images", p / "labels")
    elif kind == "masks":
        return kind, check_masks(p), None
    else:
        raise GraftError(f"{path}: not an annotation source", "give a COCO .json, a VOC folder of .xml, a YOLO folder "
                         "(images/ + labels/) or a mask folder (images/ + masks/)")
    return kind, issues, boxes
