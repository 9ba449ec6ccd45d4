"""Model specs -> freshly initialised torch modules (architecture only, no weights).

A spec is either a string
    timm:NAME[?key=value&...]          timm.create_model(NAME, pretrained=False, **kwargs)
    torchvision:NAME[?key=value&...]   torchvision.models.get_model(NAME, weights=None, **kwargs)
    path/to/file.py:factory[?k=v&...]  factory(**kwargs) from a Python file the user names
or a dict describing a converted foreign graph, {"converter": "caffe", ...}, which
the converter module of that name rebuilds (`nets.<converter>.build_from_spec(spec, trust=...)`:
converted graphs are data and ignore `trust`; `probe`, which wraps another spec, passes it on).
Values in the query string are parsed as JSON where possible (10 -> int, true -> bool).

Trust: a spec read from a package is untrusted data. Unless the caller passes
`trust=True` (`--trust`), `build` never imports a Python file, and keyword arguments
must be architecture options on the allow-list below with values in bounds: nothing
that names a file (timm's `checkpoint_path`), downloads (`pretrained`, `weights`) or
allocates without limit. A spec the user types themselves is built with trust.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch.nn as nn

from ..errors import GraftError, short

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


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INT_OPTIONS = {"num_classes": (0, 100_000), "in_chans": (1, 64), "num_features": (1, 65_536),
                "img_size": (8, 4096), "patch_size": (1, 1024), "output_stride": (8, 64)}
_RATE_OPTIONS = {"drop_rate", "drop_path_rate", "drop_block_rate", "dropout", "attention_dropout",
                 "bn_eps", "bn_momentum", "width_mult", "channel_multiplier", "depth_multiplier"}
_BOOL_OPTIONS = {"aux_logits", "transform_input", "init_weights", "zero_init_residual", "class_token",
                 "global_pool_flatten"}
_NAME_OPTIONS = {"global_pool", "act_layer", "norm_layer", "pool_type", "head_norm_first"}
SAFE_OPTIONS = frozenset({*_INT_OPTIONS, *_RATE_OPTIONS, *_BOOL_OPTIONS, *_NAME_OPTIONS})


def check_options(kwargs: dict[str, Any], where: str) -> None:
    """Refuse keyword arguments an untrusted spec may not pass (see the module docstring)."""
    for key, value in kwargs.items():
        if key not in SAFE_OPTIONS:
            raise GraftError(f"{where}: option {key!r} is not an architecture option graftkit passes on from "
                             "an untrusted spec (it could read files, download or run code)",
                             f"allowed: {', '.join(sorted(SAFE_OPTIONS))}; pass --trust (trust=True) "
                             "only if you trust the file's author")
        if key in _INT_OPTIONS:
            lo, hi = _INT_OPTIONS[key]
            values = value if key == "img_size" and isinstance(value, list) and len(value) == 2 else [value]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values)
        elif key in _RATE_OPTIONS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 16
        elif key in _BOOL_OPTIONS:
            ok = isinstance(value, bool)
        else:
            ok = value is None or (isinstance(value, str) and bool(_NAME.fullmatch(value)))
        if not ok:
            raise GraftError(f"{where}: option {key}={value!r} is out of bounds or of the wrong type",
                             "the package is corrupt or was not written by graftkit")


def build(spec: str | dict, *, trust: bool = False, **overrides: Any) -> nn.Module:
    """A freshly initialised module for an architecture spec. Without `trust`, a spec that
    names a Python file or passes options off the allow-list is refused (module docstring)."""
    if isinstance(spec, dict):  # (a converter that wraps another spec, as probe does, passes trust on)
        converter = _converter(spec)
        with corrupt_spec(spec):
            return converter.build_from_spec(spec, trust=trust)
    scheme, name, kwargs = parse(spec)
    kwargs.update(overrides)
    if not trust:
        if scheme == "file":
            path = _FILE_SPEC.match(name)["file"]
            raise GraftError(f"this model's architecture is the Python file {path}: building it would run that "
                             "file's code, and graftkit does not run code from a model file unasked",
                             "pass --trust (trust=True) only if you made the file or trust its author")
        check_options(kwargs, f"spec {spec!r}")
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
    if build is None:
        return None
    with corrupt_spec(spec):
        return build(spec, tensors)


@contextlib.contextmanager
def corrupt_spec(spec: dict):
    """A converter spec comes from a package file (data): a field of the wrong type or shape that its
    converter trips over (KeyError, TypeError, ...) is one GraftError naming the converter."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise GraftError(f"the package's {short(spec.get('converter'))} spec is corrupt "
                         f"({type(e).__name__}: {short(str(e), 120)})",
                         "the package is damaged; convert the model again") from None


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
