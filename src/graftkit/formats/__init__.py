"""Readers for every checkpoint format graftkit understands, behind one `read()`.

Each format lives in its own module exposing
    sniff(path: Path, head: bytes) -> bool      # is this file mine? (suffix and/or magic bytes)
    read(path: Path, *, trust: bool = False) -> TensorSet
and is listed in FORMATS below, most specific first.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import GraftError
from .base import KINDS, ROLES, TensorRecord, TensorSet

# module name -> human name, tried in this order.
FORMATS = {
    "safetensors_file": "safetensors / graftkit package",
    "caffe": "Caffe .caffemodel",
    "keras": "Keras .keras / .h5 / .weights.h5",
    "mxnet": "MXNet .params",
    "onnx_file": "ONNX .onnx",
    "tflite_file": "TensorFlow Lite .tflite",
    "numpy_file": "NumPy .npz / Chainer save_npz",
    "torch_file": "PyTorch .pt / .pth / .bin",
}


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def detect(path: str | os.PathLike) -> str:
    """The FORMATS key of the reader for `path`, or a GraftError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise GraftError(f"{path}: no such file", "check the path")
    if path.is_dir():
        raise GraftError(f"{path}: is a folder, not a model file", "name the weights file inside it")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise GraftError(f"{path}: the file is empty (0 bytes)", "the download or copy was probably interrupted")
    for name in FORMATS:
        if _module(name).sniff(path, head):
            return name
    known = ", ".join(FORMATS.values())
    raise GraftError(f"{path}: not a model file graftkit can read", f"supported: {known}")


def read(path: str | os.PathLike, *, trust: bool = False) -> TensorSet:
    """Read the tensors of any supported checkpoint file, in PyTorch layout.

    `trust=True` allows unpickling arbitrary Python objects (only for files you
    made yourself): by default pickled checkpoints are loaded with
    `torch.load(weights_only=True)`, which cannot execute code.
    """
    path = Path(path)
    return _module(detect(path)).read(path, trust=trust)


__all__ = ["read", "detect", "TensorSet", "TensorRecord", "KINDS", "ROLES", "FORMATS"]
