"""Normalised tensor names: one spelling for the naming habits of every framework.

`normalise("arg:conv1_1_weight")`, `normalise("module.conv1_1.weight")` and
`normalise("conv1_1/kernel:0")` all give "conv1.1.weight", so tensors that differ
only in framework conventions meet in the second matching pass. `conventions()`
respells names whose translation needs the other side's names too (EfficientNet-PyTorch's
flat `_blocks.N` is the N-th of timm's `blocks.S.B`); anything else is left to the
structural alignment.
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

# EfficientNet-PyTorch (lukemelas / EfficientNet-Lite) names -> timm's. The stem and head are
# fixed; a block `_blocks.N` is the N-th `blocks.S.B` of the target, and its BatchNorms shift
# by one when the block has an expansion convolution (`_bn0` is then timm's `bn1`).
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_BLOCK = {"_expand_conv": "conv_pw", "_depthwise_conv": "conv_dw", "_project_conv": "conv_pwl",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_EFFNET_NAME = re.compile(r"^_blocks\.(?P<n>\d+)\.(?P<layer>_[a-z_]+?\d?)\.(?P<leaf>[a-z_]+)$")
_TIMM_BLOCK = re.compile(r"^(blocks\.\d+\.\d+)\.")


def strip_wrappers(name: str) -> str:
    """Remove prefixes/suffixes that say nothing about the layer (arg:, module., :0)."""
    return _KERAS_SUFFIX.sub("", _PREFIXES.sub("", name))


def conventions(source_names: list[str], target_names: list[str]) -> dict[str, str]:
    """Source name -> the target framework's spelling, where a known convention decides it."""
    if not any(n.startswith("_blocks.") for n in source_names):
        return {}
    renamed: dict[str, str] = {}
    target_blocks = list(dict.fromkeys(m.group(1) for n in target_names if (m := _TIMM_BLOCK.match(n))))
    source_blocks = sorted({int(m["n"]) for n in source_names if (m := _EFFNET_NAME.match(n))})
    expanded = {int(m["n"]) for n in source_names if (m := _EFFNET_NAME.match(n)) and m["layer"] == "_expand_conv"}
    blocks = dict(zip(source_blocks, target_blocks)) if len(source_blocks) == len(target_blocks) else {}
    for name in source_names:
        top, _, leaf = name.partition(".")
        if top in _EFFNET_TOP and "." not in leaf:
            renamed[name] = f"{_EFFNET_TOP[top]}.{leaf}"
            continue
        m = _EFFNET_NAME.match(name)
        if not m or int(m["n"]) not in blocks:
            continue
        layer = m["layer"]
        if layer.startswith("_bn"):
            layer = f"bn{int(layer[3:]) + (1 if int(m['n']) in expanded else 0)}"
        elif layer == "_project_conv" and int(m["n"]) not in expanded:
            layer = "conv_pw"                  # timm's DepthwiseSeparableConv: conv_dw, conv_pw
        elif layer in _EFFNET_BLOCK:
            layer = _EFFNET_BLOCK[layer]
        else:
            continue
        renamed[name] = f"{blocks[int(m['n'])]}.{layer}.{m['leaf']}"
    return renamed


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
