"""NumPy `.npz`/`.npy` files, including Chainer's `serializers.save_npz`.

Chainer stores each parameter under its link path (`block1/conv1/W`) with its
own role names (W, b, gamma, beta, avg_mean, avg_var, N). We rename them to
PyTorch's (`block1.conv1.weight`, ...): Chainer's Convolution2D W is already
OIHW and Linear W already [out, in], so only the names change. Chainer's
BatchNormalization defaults to eps=2e-5 (PyTorch: 1e-5); that difference is
recorded in the metadata so that a transplant or converter can keep it.
Arrays are loaded with allow_pickle=False: object arrays would unpickle code.
"""
from __future__ import annotations

import lzma
import re
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GraftError
from .base import TensorRecord, TensorSet
from .safetensors_file import records_from_state_dict

CHAINER_BN_EPS = 2e-5
# Chainer parameter names -> PyTorch roles.
CHAINER_ROLES = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias", "avg_mean": "running_mean",
                 "avg_var": "running_var", "N": "num_batches_tracked"}
BN_LEAVES = {"avg_mean", "avg_var", "N"}


def sniff(path: Path, head: bytes) -> bool:
    if path.suffix.lower() in (".npz", ".npy"):
        return True
    if head.startswith(b"\x93NUMPY"):
        return True
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            return bool(names) and all(n.endswith(".npy") for n in names)
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(arr))


DEFLATE_RATIO = 1100  # the most a deflated member can inflate (1032:1), rounded up


def _check_header(f, room: int, where: str) -> None:
    """Read an npy header and refuse an array that declares more bytes than `room` (what its file or zip
    member can hold): numpy allocates the declared shape before it reads a byte of data."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unknown npy format version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f, max_header_size=10000)
    if not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"shape {shape}")
    if dtype.hasobject:
        return  # refused (or unpickled, with trust) by np.load itself
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > room:
        raise GraftError(f"{where}: declares an array of shape {shape} ({need:,} bytes) but holds at most "
                         f"{room:,} bytes", "the file is truncated or corrupt; re-create it")


def _load_arrays(path: Path, trust: bool) -> dict[str, np.ndarray]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
            if single or path.suffix.lower() == ".npy":
                f.seek(0)
                _check_header(f, size, str(path))
        if single or path.suffix.lower() == ".npy":
            return {path.stem: np.load(path, allow_pickle=trust)}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise GraftError(f"{path}: archive member {info.filename!r} is not a .npy array",
                                     "an .npz holds only .npy members (np.savez)")
                room = min(info.file_size, size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_RATIO))
                with zf.open(info) as m:
                    _check_header(m, room, f"{path}: member {info.filename}")
        arrays = {}
        with np.load(path, allow_pickle=trust) as z:
            for name in z.files:
                arrays[name] = z[name]
        return arrays
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # (numpy's header parser lets these out)
        if "allow_pickle" in str(e):
            raise GraftError(f"{path}: the file holds pickled Python objects, whose loading could run code",
                             "pass --trust (trust=True) only if you made this file yourself") from None
        raise GraftError(f"{path}: corrupt or truncated NumPy file ({e})", "re-create or re-download it") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, KeyError, UnicodeDecodeError, NotImplementedError,
            RuntimeError) as e:  # (zipfile: names that are not UTF-8, unknown compression, encryption)
        raise GraftError(f"{path}: corrupt or truncated NumPy file ({str(e) or type(e).__name__})",
                         "re-create or re-download it") from None


def is_chainer(names: list[str]) -> bool:
    """save_npz names are link paths ending in Chainer's parameter names."""
    leaves = {n.rpartition("/")[2] for n in names}
    return any("/" in n for n in names) and bool(leaves & {"W", "b", "avg_mean", "avg_var", "gamma", "beta"})


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _layer_kind(params: dict[str, np.ndarray]) -> str:
    if BN_LEAVES & set(params):
        return "batchnorm"
    if "gamma" in params or "beta" in params:
        return "norm"
    w = params.get("W")
    if w is not None and w.ndim == 4:
        return "conv"
    if w is not None and w.ndim == 2:
        return "linear"
    return "other"


KIND_RANK = {"conv": 0, "linear": 0, "batchnorm": 1, "norm": 1}
ROLE_RANK = {"W": 0, "gamma": 0, "b": 1, "beta": 1, "avg_mean": 2, "avg_var": 3, "N": 4}


def _graph_order(layers: dict[str, str]) -> list[str]:
    """Guess the forward order of Chainer links (link path -> kind).

    save_npz keeps no graph order (a Chain's children are a set in Chainer), so we
    sort paths naturally (block2 before block10) and then, among siblings, by the
    number in their name and conv/linear before norm: conv1, bn1, conv2.
    """
    order = sorted(layers, key=_natural_key)
    by_parent: dict[str, list[int]] = {}
    for i, link in enumerate(order):
        by_parent.setdefault(link.rpartition("/")[0], []).append(i)

    def sibling_key(link: str):
        leaf = link.rpartition("/")[2]
        digits = re.findall(r"\d+", leaf)
        return (int(digits[-1]) if digits else -1, KIND_RANK.get(layers[link], 2), _natural_key(leaf))

    for slots in by_parent.values():
        for slot, link in zip(slots, sorted((order[i] for i in slots), key=sibling_key)):
            order[slot] = link
    return order


def _chainer_records(arrays: dict[str, np.ndarray]) -> list[TensorRecord]:
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, arr in arrays.items():
        link, _, leaf = name.rpartition("/")
        layers.setdefault(link, {})[leaf] = arr
    kinds = {link: _layer_kind(params) for link, params in layers.items()}
    records = []
    for position, link in enumerate(_graph_order(kinds)):
        params, kind = layers[link], kinds[link]
        layer = link.replace("/", ".")
        for leaf in sorted(params, key=lambda k: (ROLE_RANK.get(k, 9), k)):
            role = CHAINER_ROLES.get(leaf, "other")
            t = _to_tensor(params[leaf])
            if leaf == "N":
                t = t.to(torch.int64).reshape(())
            meta: dict[str, Any] = {"source_name": f"{link}/{leaf}"}
            if kind == "batchnorm":
                meta["eps"] = CHAINER_BN_EPS
            records.append(TensorRecord(f"{layer}.{CHAINER_ROLES.get(leaf, leaf)}" if layer else leaf, t,
                                        layer=layer, kind=kind, role=role, position=position, meta=meta))
    return records


def read(path: Path, *, trust: bool = False) -> TensorSet:
    path = Path(path)
    arrays = _load_arrays(path, trust)
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise GraftError(f"{path}: array {name!r} holds Python objects, not numbers",
                             "save plain numeric arrays")
    if not arrays:
        raise GraftError(f"{path}: the file holds no arrays")
    if is_chainer(list(arrays)):
        # Chainer's BatchNormalization eps (2e-5) is not PyTorch's default (1e-5): keep it.
        meta = {"framework": "chainer", "batchnorm_eps": CHAINER_BN_EPS}
        return TensorSet(_chainer_records(arrays), format="chainer", source=str(path), meta=meta)
    try:
        state = {name: _to_tensor(arr) for name, arr in arrays.items()}
    except TypeError as e:
        raise GraftError(f"{path}: an array has a type torch cannot hold ({e})") from None
    return TensorSet(records_from_state_dict(state), format="numpy", source=str(path),
                     meta={"framework": "numpy"})
