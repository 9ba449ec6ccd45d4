"""Keras models (`.keras`, full-model `.h5`, optionally with a separate weights file) -> runnable torch modules.

The module is built from the model config alone (so a package can rebuild it from
its spec), then the weights read by formats.keras are loaded into it by name.
This module is the graph (Sequential and Functional models, shared layers, nested
models) and the converter contract; each layer class is converted by one registered
function in nets/keras_layers/, which also documents the layout (converted modules
take and return NCHW; Keras works NHWC). What is supported is that registry's keys.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import GraftError
from ..formats import keras as kfile
from ..meta import attach, make_meta
from .keras_layers import LAYERS, OPS, Fn, build_layer
from .keras_layers.base import nchw_shape
from .keras_layers.ops import Op, broadcast_shape, is_op, op_template
from .registry import Unsupported

# Graph-level classes (inputs, nested models) are KerasNet's own; every other class is a registered layer.
SUPPORTED = frozenset(LAYERS) | {"InputLayer", *kfile.MODEL_CLASSES}


# ---------------------------------------------------------------- the graph

def _refs(obj) -> list[tuple[str, int, int]]:
    """Keras tensor references (layer, node, tensor) in call arguments, Keras 2 or 3 style, in order."""
    out = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            h = obj["config"]["keras_history"]
            return [(h[0], int(h[1]), int(h[2]))]
        for v in obj.values():
            out += _refs(v)
    elif isinstance(obj, (list, tuple)):
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int) and isinstance(obj[2], int):
            return [(obj[0], obj[1], obj[2])]
        for v in obj:
            out += _refs(v)
    return out


def _node_inputs(node) -> tuple[list[tuple[str, int, int]], bool]:
    """(references, called with a list?) of one inbound node."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args = node.get("args", [])
        refs = _refs(args)
        return refs, len(refs) > 1 or (len(args) == 1 and isinstance(args[0], list))
    refs = _refs(node)  # Keras 2: [[name, node, tensor, kwargs], ...]
    return refs, len(refs) > 1


def _io_list(v) -> list[tuple[str, int, int]]:
    if not v:
        return []
    if isinstance(v[0], str):
        v = [v]
    return [(x[0], int(x[1]), int(x[2])) for x in v]


def unsupported_layers(config: dict) -> dict[str, list[str]]:
    """Class -> layer names that graftkit cannot convert, over the whole (nested) config."""
    bad: dict[str, list[str]] = {}
    for name, info in kfile.flatten_config(config).items():
        cls = info["class_name"]
        if is_op(info):
            if cls not in OPS:
                bad.setdefault(f"operation {cls}", []).append(name)
        elif cls not in SUPPORTED:
            bad.setdefault(cls, []).append(name)
        else:
            cfg = info["config"] if isinstance(info["config"], dict) else {}
            option = LAYERS.refused_option(cls, cfg)  # an option its converter does not accept
            if option:
                bad.setdefault(f"{cls}({option})", []).append(name)
    return bad


# Attributes of KerasNet itself, which a layer's submodule must not shadow.
RESERVED = {"inputs", "outputs", "train_outputs", "input_shapes", "keras_input_shapes", "keras_output_shapes",
            "steps", "keras_major", "model_class", "input_refs", "output_refs", "output_names", "layer_of",
            "flatten_feeds"}


def module_name(name: str) -> str:
    """A torch submodule name for a Keras layer name: the same name whenever torch allows it."""
    n = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    while hasattr(nn.Module, n) or n in RESERVED:
        n += "_"
    return n


def _input_shape(layer: dict) -> tuple:
    cfg = layer.get("config") or {}
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if shape is None and cfg.get("input_shape") is not None:
        shape = [None, *cfg["input_shape"]]
    if shape is None:
        raise GraftError(f"Keras input {layer_name(layer)} has no shape in the config",
                         "re-save the model after building it with a known input shape")
    return tuple(shape)


def layer_name(layer: dict) -> str:
    return kfile.layer_name(layer)


class KerasNet(nn.Module):
    """A Keras Functional or Sequential model, run in NCHW. Layers are submodules named after Keras's layers."""

    def __init__(self, config: dict, keras_version: str = "3", input_shapes: list[tuple] | None = None):
        super().__init__()
        self.keras_major = int(str(keras_version or "3").split(".")[0] or 3)
        layers = kfile.model_layers(config)
        self.model_class = config.get("class_name", "Functional")
        self.steps: list[tuple] = []  # (layer, module attr, input refs, called with a list?, node index)
        self.layer_of: dict[str, str] = {}  # submodule name -> Keras layer name (they differ only when torch forbids)
        self.flatten_feeds: dict[str, list] = {}  # Dense layer -> [H, W, C] of the Flatten it reads
        self._flattened: dict[tuple, list] = {}
        shapes: dict[tuple[str, int, int], tuple] = {}
        modules: dict[str, tuple[str, Any]] = {}
        if self.model_class == "Sequential":
            self._build_sequential(config, layers, input_shapes, shapes, modules)
        else:
            self._build_functional(config, layers, input_shapes, shapes, modules)
        self.keras_input_shapes = [shapes[r] for r in self.input_refs]
        self.keras_output_shapes = [shapes[r] for r in self.output_refs]
        # What nets.convert.summarize and users read: names, and input shapes in our (NCHW) layout.
        self.inputs = [r[0] for r in self.input_refs]
        self.outputs = list(self.output_names)
        self.train_outputs = list(self.output_names)  # Keras graphs have no training-only heads
        self.input_shapes = {r[0]: nchw_shape(s) for r, s in zip(self.input_refs, self.keras_input_shapes)}

    # Sequential: a chain; the input is the InputLayer or the recorded build shape.
    def _build_sequential(self, config, layers, input_shapes, shapes, modules):
        cfg = config.get("config") if isinstance(config.get("config"), dict) else {}
        body = [lyr for lyr in layers if lyr.get("class_name") != "InputLayer"]
        first = next((lyr for lyr in layers if lyr.get("class_name") == "InputLayer"), None)
        if input_shapes:
            shape = tuple(input_shapes[0])
        elif first is not None:
            shape = _input_shape(first)
        elif cfg.get("build_input_shape"):
            shape = tuple(cfg["build_input_shape"])
        elif body:
            shape = _input_shape(body[0])
        else:
            raise GraftError("the Keras Sequential model is empty")
        in_name = layer_name(first) if first is not None else "input"
        self.input_refs = [(in_name, 0, 0)]
        shapes[(in_name, 0, 0)] = shape
        prev = (in_name, 0, 0)
        for layer in body:
            name = layer_name(layer)
            self._add_step(layer, name, [prev], False, shapes, modules)
            prev = (name, 0, 0)
        self.output_refs = [prev]
        self.output_names = [prev[0]]

    def _build_functional(self, config, layers, input_shapes, shapes, modules):
        cfg = config.get("config", {})
        self.input_refs = _io_list(cfg.get("input_layers"))
        self.output_refs = _io_list(cfg.get("output_layers"))
        self.output_names = [o[0] for o in self.output_refs]
        by_name = {layer_name(lyr): lyr for lyr in layers}
        for i, ref in enumerate(self.input_refs):
            shapes[ref] = tuple(input_shapes[i]) if input_shapes else _input_shape(by_name[ref[0]])
        # Nodes in dependency order (config order is topological except for shared layers).
        pending = []
        for layer in layers:
            if layer.get("class_name") == "InputLayer":
                continue
            for ni, node in enumerate(layer.get("inbound_nodes") or []):
                refs, as_list = _node_inputs(node)
                if is_op(layer):  # the call's arguments, constants included
                    as_list = op_template(node, layer_name(layer), layer.get("class_name", ""))
                pending.append((layer, ni, refs, as_list))
        while pending:
            rest = []
            for layer, ni, refs, as_list in pending:
                if all(r in shapes for r in refs):
                    self._add_step(layer, layer_name(layer), refs, as_list, shapes, modules, ni)
                else:
                    rest.append((layer, ni, refs, as_list))
            if len(rest) == len(pending):
                missing = sorted({r[0] for _, _, refs, _ in rest for r in refs if r not in shapes})
                raise GraftError(f"the Keras model graph refers to tensors no layer produces ({', '.join(missing)})",
                                 "the model config is inconsistent; re-save the model")
            pending = rest

    def _add_step(self, layer, name, refs, as_list, shapes, modules, node_index=0):
        cls = layer.get("class_name", "")
        in_shapes = [shapes[r] for r in refs]
        if isinstance(as_list, list):  # a Keras operation: one module per call, arguments fixed
            attr = module_name(name if node_index == 0 else f"{name}_{node_index}")
            self.add_module(attr, Op(cls, as_list))
            out_shapes = [broadcast_shape(in_shapes)]
        elif name in modules:  # a shared layer called again: same module, new node
            attr, _ = modules[name]
            out_shapes = self._shape_again(attr, cls, layer, name, in_shapes)
        else:
            attr = module_name(name)
            if cls in kfile.MODEL_CLASSES or kfile.is_model(layer):
                mod = KerasNet(layer, str(self.keras_major), in_shapes)
                out_shapes = mod.keras_output_shapes
            else:
                mod, out = build_layer(cls, layer.get("config") or {}, name, in_shapes, self.keras_major)
                if isinstance(mod, Fn):
                    mod.what = cls  # print(net) shows the Keras class of function layers
                out_shapes = [out]
            self.add_module(attr, mod)
            self.layer_of[attr] = name
            modules[name] = (attr, out_shapes)
        for ti, s in enumerate(out_shapes):
            shapes[(name, node_index, ti)] = s
        self.steps.append((name, attr, refs, as_list, node_index))
        self._note_flatten(cls, name, refs, in_shapes, node_index, len(out_shapes), getattr(self, attr))

    def _note_flatten(self, cls, name, refs, in_shapes, node_index, n_out, mod):
        """Remember which Dense layers read a Flatten of an (H, W, C) tensor: their weight columns are in
        Keras's HWC order, which a PyTorch network flattening NCHW needs permuted (see chw_columns)."""
        src = self._flattened.get(refs[0]) if refs else None
        if cls == "Flatten" and len(in_shapes[0]) >= 3:
            src = list(in_shapes[0][1:])
        elif cls == "Dense" and src is not None:
            self.flatten_feeds[name] = src
            src = None
        elif not LAYERS.traits(cls).get("elementwise"):  # only element-wise layers keep the Flatten's order
            src = None
        if src is not None:
            for ti in range(n_out):
                self._flattened[(name, node_index, ti)] = src
        if isinstance(mod, KerasNet):
            self.flatten_feeds.update({f"{name}.{k}": v for k, v in mod.flatten_feeds.items()})

    def _shape_again(self, attr, cls, layer, name, in_shapes):
        if isinstance(getattr(self, attr), KerasNet):
            return KerasNet(layer, str(self.keras_major), in_shapes).keras_output_shapes
        return [build_layer(cls, layer.get("config") or {}, name, in_shapes, self.keras_major)[1]]

    def source_name(self, key: str) -> str:
        """The Keras reader's tensor name for one of our state_dict keys (`inner.conv.weight`)."""
        head, _, rest = key.partition(".")
        sub = getattr(self, head, None)
        if isinstance(sub, KerasNet):
            return f"{self.layer_of.get(head, head)}.{sub.source_name(rest)}"
        return f"{self.layer_of.get(head, head)}.{rest}" if rest else key

    def forward(self, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], dict):
            kwargs, args = args[0], ()
        if kwargs:
            try:
                args = tuple(kwargs[r[0]] for r in self.input_refs)
            except KeyError as e:
                raise GraftError(f"missing model input {e}", f"the inputs are {[r[0] for r in self.input_refs]}") \
                    from None
        if len(args) != len(self.input_refs):
            raise GraftError(f"the model takes {len(self.input_refs)} input(s) ({[r[0] for r in self.input_refs]}), "
                             f"got {len(args)}")
        for (name, *_), x, shape in zip(self.input_refs, args, self.keras_input_shapes):
            channels = shape[-1] if len(shape) >= 3 else None
            if channels and x.ndim == len(shape) and x.shape[1] != channels and x.shape[-1] == channels:
                raise GraftError(f"input {name!r} has shape {tuple(x.shape)}, channels last; converted Keras "
                                 f"models take channels first ({nchw_shape(shape)})", "pass x.permute(0, 3, 1, 2)")
        values = dict(zip(self.input_refs, args))
        for name, attr, refs, as_list, node_index in self.steps:
            xs = [values[r] for r in refs]
            mod = getattr(self, attr)
            if isinstance(mod, KerasNet):
                y = mod(*xs)
            else:
                y = mod(xs if isinstance(mod, Op) or as_list else xs[0])
            if isinstance(y, dict):
                y = list(y.values())
            for ti, t in enumerate(y if isinstance(y, (list, tuple)) else [y]):
                values[(name, node_index, ti)] = t
        outs = [values[r] for r in self.output_refs]
        if len(outs) == 1:
            return outs[0]
        return dict(zip(self.output_names, outs))


def flatten_feeds(config: dict, keras_version: str = "3") -> dict[str, list]:
    """Dense layer name -> [H, W, C] for every Dense that reads a Flatten of an image-shaped tensor.

    Keras flattens NHWC, so such a Dense's weight columns (as formats.keras reads them) are in HWC order:
    a hand-written PyTorch network that flattens NCHW needs them permuted with chw_columns."""
    with torch.device("meta"):  # shapes only: no weights are allocated
        return KerasNet(config, keras_version).flatten_feeds


def chw_columns(weight: torch.Tensor, hwc) -> torch.Tensor:
    """A Dense weight [out, H*W*C] with Keras's HWC column order -> PyTorch's CHW order."""
    h, w, c = hwc
    return weight.reshape(weight.shape[0], h, w, c).permute(0, 3, 1, 2).reshape(weight.shape[0], h * w * c)


# ---------------------------------------------------------------- converter contract

SUFFIXES = (".keras", ".h5", ".hdf5")


def claims(paths: list[Path]) -> bool:
    return bool(paths) and all(p.suffix.lower() in SUFFIXES for p in paths)


def check_supported(config: dict, source: str) -> None:
    """Refuse every layer graftkit cannot run at once, before any weights are read."""
    bad = unsupported_layers(config)
    if bad:
        raise LAYERS.refuse(bad, "graftkit cannot run custom layer code", where=source)


def build_net(config: dict, keras_version: str, source: str) -> KerasNet:
    """KerasNet(config), with a malformed config reported as one GraftError naming the file."""
    try:
        return KerasNet(config, keras_version)
    except Unsupported as e:  # a layer option graftkit does not reproduce: name the file too
        raise e.at(source) from None
    except GraftError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise GraftError(f"{source}: the Keras model config is malformed or of an unknown kind "
                         f"({type(e).__name__}: {str(e)[:80]})", "re-save the model with Keras") from None


def build_from_spec(spec: dict, *, trust: bool = False) -> nn.Module:
    config = spec.get("config")
    if not isinstance(config, dict):
        raise GraftError("the package's Keras spec has no model config", "re-convert the model")
    check_supported(config, "package")
    return build_net(config, spec.get("keras_version", "3"), "package")


def preprocessing_of(config: dict, net: KerasNet) -> dict[str, Any]:
    """What the model expects: its input size (NCHW) and the Rescaling/Normalization it does itself."""
    layers = kfile.flatten_config(config)
    in_model = []
    for name, info in layers.items():
        c = info["config"]
        if info["class_name"] == "Rescaling":
            in_model.append({"layer": name, "op": "rescaling", "scale": c.get("scale"), "offset": c.get("offset")})
        elif info["class_name"] == "Normalization":
            in_model.append({"layer": name, "op": "normalization", "mean": c.get("mean"),
                             "variance": c.get("variance"), "from_weights": c.get("mean") is None})
    shape = net.keras_input_shapes[0] if net.keras_input_shapes else None
    pre: dict[str, Any] = {"layout": "NCHW", "source_layout": "NHWC", "in_model": in_model}
    if shape and len(shape) == 4:
        pre["input_size"] = [shape[3], shape[1], shape[2]]
    first = in_model[0] if in_model else None
    if first and first["op"] == "rescaling" and isinstance(first["scale"], (int, float)) \
            and abs(first["scale"] * 255 - 1) < 1e-6:
        pre["pixel_range"] = 255.0  # the model divides by 255 itself: feed raw 0..255 pixels
    return pre


def _split(paths: list[Path]) -> tuple[Path, dict, str, Path]:
    """(architecture file, its config, Keras version, weights file) among the given paths."""
    with_config, without = [], []
    for p in paths:
        config, version = kfile.read_config(p)
        (with_config if config else without).append((p, config, version))
    if len(with_config) != 1 or len(without) > 1:
        raise GraftError(f"give one Keras model file (.keras or full-model .h5) and at most one weights file, "
                         f"got {len(with_config)} model file(s) and {len(without)} weights-only file(s)",
                         "a bare .weights.h5 has no architecture: pass the .keras/.h5 model beside it")
    arch, config, version = with_config[0]
    return arch, config, version, (without[0][0] if without else arch)


def convert(paths: list[Path], **kwargs) -> nn.Module:
    paths = [Path(p) for p in paths]
    arch, config, version, weights_file = _split(paths)
    check_supported(config, str(arch))
    net = build_net(config, version, str(arch))
    tensors = kfile.read_with_config(weights_file, config)
    state = net.state_dict()
    source = {k: net.source_name(k) for k in state}
    missing = [source[k] for k in state if source[k] not in tensors]
    unexpected = sorted(set(tensors) - set(source.values()))
    if missing or unexpected:
        raise GraftError(f"{weights_file}: the weights do not fit the model in {arch.name} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                         "pair the weights with the model they were saved from")
    for k, t in state.items():
        if tuple(tensors[source[k]].shape) != tuple(t.shape):
            raise GraftError(f"{weights_file}: tensor {source[k]} has shape {tuple(tensors[source[k]].shape)}, "
                             f"the model in {arch.name} needs {tuple(t.shape)}",
                             "pair the weights with their own model")
    net.load_state_dict({k: tensors[source[k]].to(state[k].dtype) for k in state}, strict=True)
    net.eval()
    spec = {"converter": "keras", "config": config, "keras_version": version}
    meta = make_meta(spec, preprocessing=preprocessing_of(config, net),
                     provenance={"sources": [str(p) for p in paths], "converter": "keras",
                                 "keras_version": version},
                     extra={"inputs": [r[0] for r in net.input_refs], "outputs": net.output_names})
    return attach(net, meta)
