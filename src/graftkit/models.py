"""Any model reference -> a module with its metadata: the one resolver the CLI and API use.

A reference is a built-in name (`lite0`, `lite1`, `lite2`), an architecture spec
(`timm:NAME?...`, `torchvision:NAME?...`, `file.py:factory`), or a graftkit package path.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from .errors import GraftError
from .nets import spec as specs
from .meta import META_ATTR, make_meta
from .package import load


def resolve(ref: str | os.PathLike | nn.Module, *, pretrained: bool = True, trust: bool = False) -> nn.Module:
    """The module a reference names. Built-ins come with their pretrained weights unless pretrained=False.

    A spec given here is the caller's own words, so it may name their Python file; a package
    is data, and builds from a Python file or unlisted options only with `trust=True`."""
    if isinstance(ref, nn.Module):
        return ref
    ref = str(ref)
    from . import builtin
    if ref in builtin.NAMES:
        return builtin.load(ref, pretrained=pretrained)
    if specs.is_arch_spec(ref):
        module = specs.build(ref, trust=True)
        setattr(module, META_ATTR, make_meta(ref))
        return module
    path = Path(ref)
    if path.suffix == ".safetensors" or path.is_file():
        return load(path, trust=trust)  # says clearly when the file is missing or not a package
    names = ", ".join(sorted(builtin.NAMES))
    raise GraftError(f"model {ref!r} is not understood",
                     f"use a built-in name ({names}), timm:NAME, torchvision:NAME, file.py:factory or a package file")
