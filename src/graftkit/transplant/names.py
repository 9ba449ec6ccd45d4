"""Normalised tensor names: one spelling for the naming habits of every framework.

`normalise("arg:conv1_1_weight")`, `normalise("module.conv1_1.weight")` and
`normalise("conv1_1/kernel:0")` all give "conv1.1.weight", so tensors that differ
only in framework conventions meet in the second matching pass. Whatever cannot
be decided from the name alone (EfficientNet-PyTorch's flat `_blocks.N` against
timm's `blocks.S.B`) is left to the structural alignment.
"""
from __future__ import annotations

import re

# Framework wrappers around the whole name.
_PREFIXES = re.compile(r"^(?:(?:arg|aux):|module\.|_orig_mod\.|model\.)+")
_KERAS_SUFFIX = re.compile(r":\d+$")
# Leaf spellings -> the PyTorch role name.
_LEAVES = {
    "weight": "weight", "kernel": "weight", "w": "weight", "gamma": "weight", "scale": "weight",
    "depthwise_kernel": "weight", "embeddings": "weight",
    "bias": "bias", "b": "bias", "beta": "bias",
    "running_mean": "running_mean", "moving_mean": "running_mean", "avg_mean": "running_mean", "mean": "running_mean",
    "running_var": "running_var", "moving_var": "running_var", "moving_variance": "running_var",
    "avg_var": "running_var", "var": "running_var", "variance": "running_var",
    "num_batches_tracked": "num_batches_tracked", "n": "num_batches_tracked",
}
# MXNet/Gluon glue the role to the layer with "_": conv1_weight, bn1_moving_var.
_GLUED = re.compile(r"_(weight|bias|gamma|beta|moving_mean|moving_var|running_mean|running_var|"
                    r"depthwise_kernel|kernel)$")
# Caffe blob index as the leaf: conv1.0 (weights), conv1.1 (bias).
_CAFFE_BLOB = re.compile(r"^(?P<layer>.+)[./](?P<i>[01])$")

# EfficientNet-PyTorch (lukemelas / EfficientNet-Lite) top-level names -> timm's. Only the
# unambiguous stem and head: block internals are matched by structure.
_EFFICIENTNET_PYTORCH = [
    (re.compile(r"^_conv_stem\."), "conv_stem."),
    (re.compile(r"^_bn0\."), "bn1."),
    (re.compile(r"^_conv_head\."), "conv_head."),
    (re.compile(r"^_bn1\."), "bn2."),
    (re.compile(r"^_fc\."), "classifier."),
]


def strip_wrappers(name: str) -> str:
    """Remove prefixes/suffixes that say nothing about the layer (arg:, module., :0)."""
    return _KERAS_SUFFIX.sub("", _PREFIXES.sub("", name))


def convention(name: str, names_in_set) -> str:
    """Rename EfficientNet-PyTorch stem/head tensors to timm's spelling when the set uses that convention."""
    if any(n.startswith("_blocks.") for n in names_in_set):
        for pattern, repl in _EFFICIENTNET_PYTORCH:
            if pattern.search(name):
                return pattern.sub(repl, name)
    return name


def normalise(name: str) -> str:
    """The comparable spelling of a tensor name: layer tokens joined by '.', then the PyTorch role."""
    name = strip_wrappers(name)
    glued = _GLUED.search(name)
    if glued and "/" not in name and "." not in name[glued.start():]:
        name = name[:glued.start()] + "." + glued.group(1)
    blob = _CAFFE_BLOB.match(name)
    if blob:
        name = f"{blob['layer']}.{'weight' if blob['i'] == '0' else 'bias'}"
    parts = [p for p in re.split(r"[./]", name) if p]
    if not parts:
        return ""
    leaf = _LEAVES.get(parts[-1].lower(), parts[-1].lower())
    body = [t for p in parts[:-1] for t in re.split(r"[_\-\s]+", p.lower()) if t]
    return ".".join(body + [leaf])
