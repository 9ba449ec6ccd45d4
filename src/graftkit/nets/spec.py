"""Model specs -> freshly initialised torch modules (architecture only, no weights).

A spec is either a string
    timm:NAME[?key=value&...]          timm.create_model(NAME, pretrained=False, **kwargs)
    torchvision:NAME[?key=value&...]   torchvision.models.get_model(NAME, weights=None, **kwargs)
    path/to/file.py:factory[?k=v&...]  factory(**kwargs) from a Python file the user names
or a dict describing a converted foreign graph, {"converter": "caffe", ...}, which
the converter module of that name rebuilds (`nets.<converter>.build_from_spec`).
Values in the query string are parsed as JSON where possible (10 -> int, true -> bool).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch.nn as nn

from ..errors import GraftError

_FILE_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")


def parse(spec: str) -> tuple[str, str, dict[str, Any]]:
    """'timm:efficientnet_lite0?num_classes=10' -> ('timm', 'efficientnet_lite0', {'num_classes': 10})."""
    base, _, query = spec.partition("?")
    kwargs = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        try:
            kwargs[k] = json.loads(v)
        except json.JSONDecodeError:
            kwargs[k] = v
    if base.startswith(("timm:", "torchvision:")):
        scheme, _, name = base.partition(":")
        return scheme, name, kwargs
    if _FILE_SPEC.match(base):
        return "file", base, kwargs
    raise GraftError(f"model spec {spec!r} is not understood",
                     "use timm:NAME, torchvision:NAME, path/file.py:factory, a built-in name, or a graftkit package")


def is_arch_spec(spec: Any) -> bool:
    if isinstance(spec, dict):
        return "converter" in spec
    return isinstance(spec, str) and (spec.startswith(("timm:", "torchvision:"))
                                      or bool(_FILE_SPEC.match(spec.partition("?")[0])))


def with_kwargs(spec: str, **kwargs: Any) -> str:
    """The same string spec with extra/overridden keyword arguments."""
    scheme, name, old = parse(spec)
    merged = {**old, **kwargs}
    base = spec.partition("?")[0]
    if not merged:
        return base
    return base + "?" + "&".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                 for k, v in merged.items())


def build(spec: str | dict, **overrides: Any) -> nn.Module:
    """A freshly initialised module for an architecture spec."""
    if isinstance(spec, dict):
        return _converter(spec).build_from_spec(spec)
    scheme, name, kwargs = parse(spec)
    kwargs.update(overrides)
    if scheme == "timm":
        import timm
        if not timm.is_model(name):
            raise GraftError(f"timm has no model named {name!r}", "see timm.list_models() for the names")
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as e:
            raise GraftError(f"timm:{name} does not accept these options {kwargs}: {e}") from None
    if scheme == "torchvision":
        import torchvision
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError:
            raise GraftError(f"torchvision has no model named {name!r}",
                             "see torchvision.models.list_models()") from None
        except TypeError as e:
            raise GraftError(f"torchvision:{name} does not accept these options {kwargs}: {e}") from None
    return _build_from_file(name, kwargs)


def _converter(spec: dict):
    """The nets/<converter>.py module that rebuilds a converted network's spec."""
    converter = str(spec.get("converter", ""))
    if not re.fullmatch(r"[a-z_]+", converter):
        raise GraftError(f"package spec names an unknown converter {converter!r}")
    try:
        return importlib.import_module(f"{__package__}.{converter}")
    except ModuleNotFoundError:
        raise GraftError(f"this graftkit cannot rebuild {converter!r} networks", "upgrade graftkit") from None


def build_loaded(spec: str | dict, tensors: dict) -> nn.Module | None:
    """A converted network built straight around its tensors by the converter's optional
    `build_loaded(spec, tensors)` (None when it has none or the tensors do not fit): for nets of
    many small layers, an empty build plus load_state_dict is most of a package load."""
    if not isinstance(spec, dict):
        return None
    build = getattr(_converter(spec), "build_loaded", None)
    return build(spec, tensors) if build is not None else None


def _build_from_file(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    m = _FILE_SPEC.match(spec)
    assert m
    path = Path(m["file"])
    if not path.is_file():
        raise GraftError(f"model file {path} does not exist", "check the path before ':factory'")
    # Importing the file runs it: the user named it as their own model code.
    modspec = importlib.util.spec_from_file_location(f"graftkit_user_{path.stem}", path)
    module = importlib.util.module_from_spec(modspec)
    modspec.loader.exec_module(module)
    factory = getattr(module, m["fn"], None)
    if not callable(factory):
        raise GraftError(f"{path} has no function {m['fn']!r}", "name a function that returns an nn.Module")
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise GraftError(f"{spec} returned {type(net).__name__}, not a torch.nn.Module")
    return net
