"""Stratified train/val/test split of a list, where identical images never straddle two splits.

Entries are grouped by the SHA-256 of their file (copies of one image form one
group, which goes to one split as a whole); within each class the groups are
shuffled with `numpy.random.default_rng(seed)` and dealt so that every split gets
its fraction of the class's images (largest remainders, so small classes still
reach every split when they can). The same list, fractions and seed always give
the same split. Files that cannot be read are grouped by path instead.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import GraftError
from .lists import Entry, ImageList, classes_path, open_list, resolve_in_root, save_classes, write_lst


def _hash(path: Path | None, rel: str) -> str:
    if path is None:
        return "path:" + rel
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return "path:" + rel


def _targets(n: int, fractions: list[float]) -> list[int]:
    """Counts per split summing to n, by largest remainder."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_entries(lst: ImageList, fractions: dict[str, float], seed: int = 0) -> dict[str, list[Entry]]:
    """Split an ImageList's entries into named parts (see module docstring)."""
    names = [k for k, v in fractions.items() if v > 0]
    fr = [float(fractions[k]) for k in names]
    if not names or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise GraftError(f"split fractions {fractions} must be >= 0 and add up to 1",
                         "e.g. --train 0.8 --val 0.1 --test 0.1")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(lst.entries):
        groups[_hash(resolve_in_root(lst.root, e.path), e.path)].append(i)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in groups.values():  # a group follows the label of its first member
        by_class[lst.entries[members[0]].label].append(members)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {k: [] for k in names}
    for label in sorted(by_class):
        class_groups = by_class[label]
        order = rng.permutation(len(class_groups))
        n = sum(len(g) for g in class_groups)
        want = _targets(n, fr)
        have = [0] * len(names)
        for gi in order:
            g = class_groups[gi]
            # the split furthest below its target takes the group
            k = max(range(len(names)), key=lambda j: (want[j] - have[j], -j))
            parts[names[k]].extend(g)
            have[k] += len(g)
    return {k: [lst.entries[i] for i in sorted(v)] for k, v in parts.items()}


def split_list(source, fractions: dict[str, float], seed: int = 0, out: str | os.PathLike | None = None,
               root=None) -> dict[str, Path]:
    """Split a `.lst` into `OUT_train.lst`, `OUT_val.lst`, ... (+ class maps); OUT defaults to the list's name."""
    lst = source if isinstance(source, ImageList) else open_list(source, root)
    if not lst.entries:
        raise GraftError(f"{lst.source}: the list is empty", "index some images first with `graft data index`")
    parts = split_entries(lst, fractions, seed)
    if out is None:
        src = Path(lst.source)
        out = src.with_name(src.stem)
    out = Path(str(out)[:-4] if str(out).endswith(".lst") else out)
    written = {}
    for name, entries in parts.items():
        path = out.with_name(f"{out.name}_{name}.lst")
        write_lst(path, entries)
        save_classes(classes_path(path), lst.classes, lst.root, split=name, seed=seed, fractions=fractions)
        written[name] = path
    return written
