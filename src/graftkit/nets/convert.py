"""Foreign network files -> a runnable torch module, dispatched by what the files are.

Each converter module nets/<name>.py provides
    claims(paths: list[Path]) -> bool       # are these my files?
    convert(paths: list[Path]) -> nn.Module # the net, weights loaded, metadata attached (meta.attach)
    build_from_spec(spec: dict) -> nn.Module  # the same architecture from the JSON spec stored in a package
The module's metadata spec is {"converter": "<name>", ...}: everything needed to
rebuild the architecture without the original files (e.g. the prototxt text).
Converted modules take and return NCHW tensors; with several outputs they return
a dict keyed by the source's output names.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch.nn as nn

from ..errors import GraftError

CONVERTERS = ("caffe", "keras", "mxnet", "onnx")


def convert(paths: str | os.PathLike | list, **kwargs) -> nn.Module:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise GraftError(f"{p}: no such file", "check the path")
    for name in CONVERTERS:
        mod = importlib.import_module(f"{__package__}.{name}")
        if mod.claims(paths):
            return mod.convert(paths, **kwargs)
    raise GraftError(f"cannot tell which framework wrote {', '.join(map(str, paths))}",
                     "give a Caffe .prototxt (+ .caffemodel), a Keras .keras/.h5, an MXNet -symbol.json "
                     "(+ .params) or an .onnx file")
