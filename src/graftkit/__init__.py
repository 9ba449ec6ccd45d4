"""graftkit: bring pretrained networks from any framework into PyTorch, graft them onto
the network you want, prepare your images and fine-tune.

    import graftkit
    tensors = graftkit.read("model.caffemodel")            # any supported checkpoint
    net, report = graftkit.transplant(tensors, "timm:efficientnet_lite0?num_classes=10")
    graftkit.save(net, "mine.safetensors")
    net = graftkit.load("mine.safetensors")
"""
__version__ = "0.1.0"

from .errors import GraftError  # noqa: E402

# The API is imported on first use, so that `graft --help` and light imports do not pay for torch.
_API = {"read": ".formats", "load": ".package", "save": ".package", "read_meta": ".package",
        "resolve": ".models", "features": ".advise"}


def __getattr__(name):
    import importlib
    if name in _API:
        return getattr(importlib.import_module(_API[name], __name__), name)
    try:  # submodules (graftkit.package, graftkit.data, ...) without an explicit import
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'graftkit' has no attribute {name!r}") from None


def transplant(source, target, **kwargs):
    """Graft `source` tensors onto `target`: see graftkit.api.transplant."""
    from .api import transplant as _transplant
    return _transplant(source, target, **kwargs)


def convert(paths, **kwargs):
    """Convert a foreign network (Caffe, Keras, MXNet, ONNX files) into a torch module."""
    from .nets.convert import convert as _convert
    return _convert(paths, **kwargs)


__all__ = ["read", "load", "save", "read_meta", "resolve", "features", "transplant", "convert", "GraftError",
           "__version__"]
