"""One dataset type over class folders, `.lst` lists, RecordIO packs (sharded) and arrays.

    from graftkit.data import ImageDataset, train_pipeline, eval_pipeline
    pre = graftkit.meta_of(model)["preprocessing"]            # or None for ImageNet defaults
    train = ImageDataset.open("data/train", train_pipeline(pre), seed=0)   # folder
    val = ImageDataset.open("val.lst", eval_pipeline(pre))                 # list (+ val.classes.json)
    packed = ImageDataset.open("packs/train", train_pipeline(pre))        # train.rec or train-00000.rec...
    x, y = train[0]          # float32 CHW tensor (uint8 if the pipeline has normalize=False), int label
    train.classes, train.targets          # class names; int64 label per sample (for samplers)
    train.set_epoch(e)                    # new augmentation draws each epoch (reaches worker processes)
    train.failed                          # indices that could not be decoded (skipped, counted)
    train.cache("25%")                    # small data: decoded once into RAM (graftkit.data.memory), same samples

Sources: `open` takes a folder of class sub-folders, a `.lst` (root and class names
from `NAME.classes.json`), a `.csv` of path,label, a `.rec`/`.idx`/pack prefix or a
list of `.rec` shards; `from_arrays` wraps uint8 images in memory (N,H,W[,C]).

Images are decoded to uint8 (grayscale/CMYK/palette/alpha -> RGB, or L for 1-channel
models; EXIF rotation applied; JPEGs DCT-downscaled when the pipeline's `min_side`
allows), their shorter side brought down to the pipeline's `presize` (the size it resizes
to before cropping), and stay uint8 through the augmentations; normalisation is the last step.

Determinism: the random draws for sample i in epoch e come from RNGs seeded with
mix(seed, e, i) (graftkit.data.seeding), so the result is the same with any number of
DataLoader workers, in any order, and after a resume. A sample that fails to decode is
logged once, counted (`failed`, shared with worker processes) and replaced by the next
decodable sample, so a training run never crashes on a bad file.
"""
from __future__ import annotations

import glob
import logging
import os
import random
import struct
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from ..errors import GraftError
from .decode import DecodeError, decode_tensor
from .index import index_csv, index_folder
from .lists import ImageList, check_label, classes_path, load_classes, open_list, resolve_in_root
from .recordio import IRHEADER, RecordReader, unpack_header
from .seeding import mix
from .transforms import Pipeline

log = logging.getLogger("graftkit.data")
# Pillow hands numpy read-only pixel buffers; the pipeline never writes into its input in place.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
MAX_SUBSTITUTES = 64  # consecutive undecodable samples tolerated before giving up


class _FileSource:
    """Images as files under a root (from a folder index, a .lst or a .csv)."""

    def __init__(self, lst: ImageList):
        self.root = Path(lst.root)
        self.rel = [e.path for e in lst.entries]
        # resolved once; None marks entries that leave the root (refused, counted as failures)
        self.paths = [resolve_in_root(self.root, p) for p in self.rel]
        self.labels = np.array([e.label for e in lst.entries], dtype=np.int64)
        self.multi = [e.labels for e in lst.entries]

    def __len__(self):
        return len(self.paths)

    def read(self, i):
        p = self.paths[i]
        if p is None:
            raise DecodeError(f"{self.rel[i]}: list entry points outside the root {self.root}",
                              "list only files below the root", "list entry points outside the root folder")
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DecodeError(f"{p}: cannot read ({e.strerror})", "check the file", f"cannot read ({e.strerror})") from None
        if not data:
            raise DecodeError(f"{p}: zero-byte file", "remove it from the data", "zero-byte file")
        return data

    def name(self, i):
        return self.rel[i]


class _PackSource:
    """Records of one or more RecordIO shards; labels read from the record headers at open."""

    def __init__(self, shards: Sequence[Path]):
        self.readers = [RecordReader(s) for s in shards]
        self.where = []  # (shard, position) of global index
        labels, multi = [], []
        for si, r in enumerate(self.readers):
            buf = r._buf()
            for pos, off in enumerate(r.offsets):
                # fast path: the header straight from the mapped file; a split or multi-label record is read whole
                cflag = struct.unpack_from("<I", buf, off + 4)[0] >> 29 if off + 8 <= len(buf) else 1
                flag, label = (IRHEADER.unpack_from(buf, off + 8)[:2]) if cflag == 0 and off + 32 <= len(buf) else (1, 0.0)
                if flag > 0:
                    rec = unpack_header(r.read(pos))
                    labs = rec.labels
                else:
                    labs = (float(label),)
                check_label(labs[0], f"{r.rec} record {pos}")
                labels.append(int(labs[0]))
                multi.append(labs)
                self.where.append((si, pos))
            r.close()
        self.labels = np.array(labels, dtype=np.int64)
        self.multi = multi

    def __len__(self):
        return len(self.where)

    def read(self, i):
        si, pos = self.where[i]
        return unpack_header(self.readers[si].read(pos)).image

    def name(self, i):
        si, pos = self.where[i]
        return f"{self.readers[si].rec.name} record {self.readers[si].keys[pos]}"


class _ArraySource:
    """uint8 images already in memory (N,H,W or N,H,W,C)."""

    def __init__(self, images: np.ndarray, labels):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise GraftError(f"images array is {images.dtype} {images.shape}", "give uint8 (N,H,W) or (N,H,W,C)")
        self.images = images if images.ndim == 4 else images[..., None]
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise GraftError(f"{len(self.images)} images but {len(self.labels)} labels", "give one label per image")
        self.multi = None

    def __len__(self):
        return len(self.images)

    def read(self, i):
        return self.images[i]

    def name(self, i):
        return f"array image {i}"


def _decode_key(t) -> tuple:
    """What decode() depends on besides the file: the transform's channels, JPEG min_side and presize."""
    return getattr(t, "channels", 3), getattr(t, "min_side", None), getattr(t, "presize", None)


def find_shards(prefix: str | os.PathLike) -> list[Path]:
    """The `.rec` files of a pack: PREFIX.rec, or PREFIX-00000.rec, PREFIX-00001.rec, ..."""
    p = Path(prefix)
    if p.suffix in (".rec", ".idx"):
        p = p.with_suffix("")
    if p.with_name(p.name + ".rec").is_file():
        return [p.with_name(p.name + ".rec")]
    shards = sorted(Path(s) for s in glob.glob(glob.escape(str(p)) + "-[0-9][0-9][0-9][0-9][0-9].rec"))
    return shards


def _pack_prefix(shard: Path) -> Path:
    stem = shard.with_suffix("")
    name = stem.name
    if len(name) > 6 and name[-6] == "-" and name[-5:].isdigit():
        return stem.with_name(name[:-6])
    return stem


MAX_UNNAMED_CLASSES = 100_000  # labels without a class map name at most this many classes


class ImageDataset(Dataset):
    """(image tensor, label) pairs from folders, lists, RecordIO packs or arrays. See the module docstring."""

    def __init__(self, source, transform: Callable | None = None, classes: Sequence[str] | None = None,
                 seed: int = 0, description: str = "", substitute: bool = True):
        self._src = source
        self.origin = "" if isinstance(source, _ArraySource) else description  # the path it was opened from
        self.substitute = substitute  # False: an undecodable sample comes back as (None, label)
        self.transform = transform
        n = len(source)
        if n == 0:
            raise GraftError(f"{description or 'data set'}: no images", "check the folder, list or pack")
        self.targets = source.labels
        if classes is None:
            k = int(self.targets.max()) + 1 if n else 0
            if k > MAX_UNNAMED_CLASSES:  # never build millions of names from one stray label
                i = int(np.argmax(self.targets))
                raise GraftError(f"{description or 'data set'}: {source.name(i)} has label {k - 1}, which would make "
                                 f"{k:,} classes", "labels must be 0..K-1; run `graft data check` and use its --fix list")
            classes = [str(i) for i in range(k)]
        self.classes = list(classes)
        bad = (self.targets < 0) | (self.targets >= len(self.classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GraftError(f"{description or 'data set'}: {source.name(i)} has label {int(self.targets[i])}, "
                             f"outside 0..{len(self.classes) - 1} for {len(self.classes)} classes",
                             "labels must be 0..K-1; run `graft data check` and use its --fix list")
        self.seed = int(seed)
        self.description = description
        # shared memory: worker processes see set_epoch and report failures back to the parent
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._failed = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self._cache = None  # a memory.MemoryCache once `cache()` has decoded the images

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def open(cls, source, transform: Callable | None = None, *, root=None, classes=None, seed: int = 0,
             exts=None) -> "ImageDataset":
        """A dataset over a folder, `.lst`, `.csv`, RecordIO pack (prefix, `.rec`, `.idx`) or list of shards."""
        if isinstance(source, (list, tuple)):
            shards = [Path(s) for s in source]
            missing = [s for s in shards if not s.is_file()]
            if missing:
                raise GraftError(f"{missing[0]}: no such RecordIO shard", "check the paths")
            doc = load_classes(classes_path(_pack_prefix(shards[0]))) or {}
            return cls(_PackSource(shards), transform, classes or doc.get("classes"), seed, str(shards[0]))
        p = Path(source)
        if p.is_dir():
            lst = index_folder(p, exts)
            return cls(_FileSource(lst), transform, classes or lst.classes, seed, str(p))
        if p.suffix == ".lst":
            lst = open_list(p, root)
            return cls(_FileSource(lst), transform, classes or lst.classes, seed, str(p))
        if p.suffix.lower() == ".csv":
            lst = index_csv(p, root)
            return cls(_FileSource(lst), transform, classes or lst.classes, seed, str(p))
        shards = find_shards(p)
        if shards:
            doc = load_classes(classes_path(_pack_prefix(shards[0]))) or {}
            return cls(_PackSource(shards), transform, classes or doc.get("classes"), seed, str(p))
        raise GraftError(f"{p}: not a folder, .lst, .csv or RecordIO pack",
                         "give a folder of class sub-folders, a list from `graft data index` or a pack prefix")

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels, transform: Callable | None = None, classes=None,
                    seed: int = 0) -> "ImageDataset":
        """A dataset over uint8 images in memory (N,H,W or N,H,W,C), e.g. load_fashion_mnist()."""
        return cls(_ArraySource(images, labels), transform, classes, seed, "array data set")

    # ----- the data set protocol ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._src)

    @property
    def labels(self) -> np.ndarray:
        return self.targets

    @property
    def multi_labels(self):
        """All labels of each record (multi-label lists/packs), or None."""
        return getattr(self._src, "multi", None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws samples use (also in running worker processes)."""
        self._epoch[0] = int(epoch)

    @property
    def failed(self) -> list[int]:
        """Indices of samples that could not be decoded so far (skipped during loading)."""
        return np.flatnonzero(self._failed.numpy()).tolist()

    @property
    def num_failed(self) -> int:
        return int(self._failed.sum())

    def name(self, i: int) -> str:
        return self._src.name(i)

    def decode(self, i: int) -> torch.Tensor:
        """Sample i as a uint8 CHW tensor, before the transform's random draws (raises DecodeError).

        The shorter side is brought down to the transform's `presize` (the size its pipeline resizes to
        before cropping), so that a cached image (see `cache`) and a streamed one are the same pixels."""
        t = self.transform
        cache = getattr(self, "_cache", None)
        if cache is not None and cache.key == _decode_key(t):  # decoded for this transform's channels and sizes
            return cache.get(i)
        channels = getattr(t, "channels", 3)
        data = self._src.read(i)
        if isinstance(data, np.ndarray):
            arr = data
            if arr.shape[2] == 1 and channels == 3:
                arr = np.repeat(arr, 3, axis=2)
            elif arr.shape[2] == 3 and channels == 1:
                arr = np.asarray(arr.mean(axis=2, keepdims=True).round(), dtype=np.uint8)
            if not arr.flags.writeable:  # a memory-mapped or Pillow buffer: tensors must own writable memory
                arr = arr.copy()
            img = torch.from_numpy(arr).permute(2, 0, 1)
        else:
            img = decode_tensor(data, getattr(t, "min_side", None), "L" if channels == 1 else "RGB")
        side = getattr(t, "presize", None)
        if side and min(img.shape[-2:]) > side:
            img = F.resize(img, [int(side)], antialias=True)  # what the pipeline's Resize does (eval: a no-op after)
        return img

    # ----- decoded once ---------------------------------------------------------------------
    def cache(self, budget="25%", *, workers: int | None = None, progress: bool | None = None) -> dict:
        """Decode every image once into RAM (uint8, pre-resized to the transform's `presize`) if it fits `budget`
        ('25%' of available RAM, '2G', bytes, 0 = never); later epochs then skip decoding and resizing, with the
        same tensors as streaming. Returns what was done (`cached`, `bytes`, `seconds`, or the `reason` not)."""
        from .memory import build, parse_budget
        if isinstance(self._src, _ArraySource):
            return {"cached": False, "reason": "the images are in memory already", "images": len(self)}
        self._cache = None
        cache, info = build(self, parse_budget(budget), workers=workers, progress=progress,
                            description=f"{len(self):,} images")
        if cache is not None:
            cache.key = _decode_key(self.transform)
        self._cache = cache
        return info

    def uncache(self) -> None:
        """Drop the decoded images (streaming again)."""
        self._cache = None

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __getitem__(self, key):
        """Sample `key`: an index, drawn for the epoch of `set_epoch`, or an (epoch, index) pair (fit's keys)."""
        epoch, i = key if isinstance(key, tuple) else (self._epoch[0], key)
        n = len(self)
        i = int(i)
        for k in range(MAX_SUBSTITUTES):
            j = (i + k) % n
            try:
                img = self.decode(j)
                break
            except DecodeError as e:
                if not self._failed[j]:
                    self._failed[j] = 1
                    log.warning("skipping %s: %s", self.name(j), getattr(e, "reason", e))
                if not self.substitute:
                    return None, int(self.targets[i])
        else:
            raise GraftError(f"{self.description}: {MAX_SUBSTITUTES} images in a row from {self.name(i)} "
                             "cannot be decoded", "run `graft data check` on the data")
        label = int(self.targets[j])
        if self.transform is None:
            return img, label
        seed = mix(self.seed, int(epoch), j)
        t = self.transform
        if isinstance(t, Pipeline) and not t.uses_torch_rng:
            return t(img, random.Random(seed)), label
        with torch.random.fork_rng(devices=[]):  # ops on torch's global RNG: seed it, leave the caller's intact
            torch.manual_seed(seed)
            out = t(img, random.Random(seed)) if isinstance(t, Pipeline) else t(img)
        return out, label

    def __repr__(self) -> str:
        return f"ImageDataset({self.description!r}, {len(self)} images, {len(self.classes)} classes)"
