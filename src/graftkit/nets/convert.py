"""Foreign network files -> a runnable torch module, dispatched by what the files are.

Each converter module nets/<name>.py provides
    claims(paths: list[Path]) -> bool       # are these my files?
    convert(paths: list[Path]) -> nn.Module # the net, weights loaded, metadata attached (meta.attach)
    build_from_spec(spec: dict, *, trust=False) -> nn.Module  # the same architecture from the JSON spec stored in a package
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

CONVERTERS = ("caffe", "keras", "mxnet", "onnx", "tflite")
# Which converter may claim which file suffixes: only those converters are imported and asked,
# so a converter that is missing or slow to import never stands in another's way.
SUFFIXES = {
    "caffe": (".prototxt", ".pbtxt", ".txt", ".caffemodel", ".binaryproto"),
    "keras": (".keras", ".h5", ".hdf5"),
    "mxnet": (".json", ".params"),
    "onnx": (".onnx",),
    "tflite": (".tflite",),
}


def candidates(paths: list[Path]) -> list[str]:
    """Converters whose suffixes cover at least one of `paths`, in CONVERTERS order."""
    sfx = {p.suffix.lower() for p in paths}
    return [name for name in CONVERTERS if sfx & set(SUFFIXES[name])]


def convert(paths: str | os.PathLike | list, **kwargs) -> nn.Module:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise GraftError("no model files given", "name the network's files, e.g. deploy.prototxt weights.caffemodel")
    for p in paths:
        if not p.is_file():
            raise GraftError(f"{p}: no such file", "check the path")
    for name in candidates(paths):
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
            continue  # this graftkit has no such converter
        if mod.claims(paths):
            return mod.convert(paths, **kwargs)
    raise GraftError(f"cannot tell which framework wrote {', '.join(map(str, paths))}",
                     "give a Caffe .prototxt (+ .caffemodel), a Keras .keras/.h5, an MXNet -symbol.json "
                     "(+ .params) or an .onnx file")


def summarize(module: nn.Module) -> dict:
    """What a converted module is: converter, layers, parameter count, inputs/outputs, preprocessing."""
    from ..meta import meta_of
    meta = meta_of(module)
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    leaves = [m for m in module.modules() if not list(m.children())]
    shapes = getattr(module, "input_shapes", None) or {}
    inputs = list(getattr(module, "inputs", None) or shapes)
    return {"converter": spec.get("converter"),
            "layers": len(getattr(module, "layer_names", None) or leaves),
            "parameters": sum(p.numel() for p in module.parameters()),
            "tensors": len(module.state_dict()),
            "inputs": [{"name": n, "shape": shapes.get(n)} for n in inputs],
            "outputs": list(getattr(module, "outputs", None) or []),
            "train_outputs": list(getattr(module, "train_outputs", None) or []),
            "preprocessing": meta.get("preprocessing"),
            "sources": (meta.get("provenance") or {}).get("sources"),
            "report": meta.get("report")}
