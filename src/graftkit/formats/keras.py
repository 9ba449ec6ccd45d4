"""Keras files: `.keras` (Keras 3 zip), `.weights.h5` (Keras 3) and legacy `.h5` (full model or weights only).

Read with h5py and zipfile only; Keras itself is never imported. Every variable is
converted to PyTorch layout here, once:
    Conv2D kernel          (kh, kw, in/groups, out) -> (out, in/groups, kh, kw)
    Conv2DTranspose kernel (kh, kw, out, in)        -> (in, out, kh, kw)          (ConvTranspose2d)
    DepthwiseConv2D kernel (kh, kw, C, M)           -> (C*M, 1, kh, kw)           (groups=C)
    SeparableConv2D        -> `<layer>.depthwise.weight` as above and `<layer>.pointwise.weight`/`.bias`
    Dense kernel           (in, out)                -> (out, in)
    BatchNormalization     gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var
    PReLU alpha            (..., C)                 -> (C,) when shared over space, else channels first
Tensor names are `<layer>.<role>`; layers inside nested models are `<model>.<layer>`.

Where the layer classes come from: the model config (`.keras`, full-model `.h5`). A bare
`.weights.h5` has no config: Keras 3 names each layer's group after its class
(`conv2d_1`, `batch_normalization`), and recent versions also store the layer's own
name, so kinds are known; a BatchNormalization with 3 variables is taken as
scale=False (beta, moving_mean, moving_variance), the Keras idiom, since the file
cannot tell. Legacy weights-only `.h5` files name their variables, so the kind is
inferred from those names and shapes (a 4-D `kernel` reads as Conv2D, never as a
transposed convolution; as DepthwiseConv2D when its bias has C*M entries, or when
it has no bias and Keras's default name `depthwise_conv2d`). Without a config, layer order (`position`) comes from the
HDF5 object addresses, which follow the order Keras wrote the layers in. Pass the architecture file alongside to be sure
(`read_with_config`, used by the converter).
"""
from __future__ import annotations

import contextlib
import io
import json
import lzma
import re
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import GraftError
from .base import TensorRecord, TensorSet

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
MODEL_CLASSES = ("Functional", "Sequential", "Model")

# Keras 3 stores a layer's variables as vars/0..n in creation order: their names per class.
VAR_ORDER = {
    "Conv1D": ["kernel", "bias"], "Conv2D": ["kernel", "bias"], "Conv3D": ["kernel", "bias"],
    "Conv2DTranspose": ["kernel", "bias"], "Dense": ["kernel", "bias"],
    "DepthwiseConv2D": ["depthwise_kernel", "bias"],
    "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "PReLU": ["alpha"], "Normalization": ["mean", "variance", "count"], "Embedding": ["embeddings"],
}
# snake_case group name of a Keras 3 `.weights.h5` -> class (for files without a config).
SNAKE_CLASSES = {
    "conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D", "conv2d_transpose": "Conv2DTranspose",
    "dense": "Dense", "depthwise_conv2d": "DepthwiseConv2D", "separable_conv2d": "SeparableConv2D",
    "batch_normalization": "BatchNormalization", "layer_normalization": "LayerNormalization",
    "p_re_lu": "PReLU", "normalization": "Normalization", "embedding": "Embedding",
    "functional": "Functional", "sequential": "Sequential",
}
KIND = {"Conv1D": "conv", "Conv2D": "conv", "Conv3D": "conv", "Conv2DTranspose": "conv_transpose",
        "Dense": "linear", "DepthwiseConv2D": "depthwise_conv", "SeparableConv2D": "conv",
        "BatchNormalization": "batchnorm", "LayerNormalization": "norm", "PReLU": "prelu",
        "Normalization": "norm", "Embedding": "embedding"}
ROLE = {"kernel": "weight", "depthwise_kernel": "weight", "pointwise_kernel": "weight", "bias": "bias",
        "gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var",
        "alpha": "weight", "embeddings": "weight"}


def snake_case(name: str) -> str:
    """Keras's own class-name -> object-name rule (Conv2D -> conv2d, ReLU -> re_lu)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def sniff(path: Path, head: bytes) -> bool:
    if path.suffix == ".keras":
        return True
    return path.suffix in (".h5", ".hdf5") or head.startswith(HDF5_MAGIC)


# ---------------------------------------------------------------- model config walking

def model_layers(model: dict) -> list[dict]:
    """The layer configs of a (Functional or Sequential) model config, Keras 2 or 3."""
    cfg = model.get("config", model)
    if isinstance(cfg, list):  # very old Sequential: config is the layer list itself
        return cfg
    return list(cfg.get("layers") or [])


def is_model(layer: dict) -> bool:
    return layer.get("class_name") in MODEL_CLASSES or (
        isinstance(layer.get("config"), dict) and "layers" in layer["config"] and "class_name" in layer)


def layer_name(layer: dict) -> str:
    cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    return str(layer.get("name") or cfg.get("name") or "")


def flatten_config(model: dict | None) -> dict[str, dict]:
    """Dotted layer name -> {"class_name", "config", "position", "save_path"} for every layer, nested models
    included (depth first, in config order). save_path is where Keras 3 keeps its variables."""
    out: dict[str, dict] = {}
    if not model:
        return out

    def walk(m: dict, prefix: str, save_prefix: str) -> None:
        used: dict[str, int] = {}
        sequential = m.get("class_name") == "Sequential"
        for layer in model_layers(m):
            cls = layer.get("class_name", "")
            name = layer_name(layer)
            if sequential and cls == "InputLayer":  # Sequential.layers leaves its InputLayer out
                save = None
            else:
                base = snake_case(cls)
                used[base] = used.get(base, -1) + 1
                save = f"{save_prefix}layers/{base}" + (f"_{used[base]}" if used[base] else "")
            full = prefix + name
            out[full] = {"class_name": cls, "config": layer.get("config") or {}, "position": len(out),
                         "save_path": save, "module": layer.get("module") or ""}
            if is_model(layer):
                walk(layer, full + ".", (save or "") + "/")

    walk(model, "", "")
    return out


# ---------------------------------------------------------------- layout conversion

def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def layer_records(name: str, cls: str, variables: list[tuple[str, np.ndarray]], cfg: dict,
                  position: int) -> list[TensorRecord]:
    """PyTorch-layout records for one Keras layer's variables [(keras var name, array)]."""
    kind = KIND.get(cls, "other")
    recs: list[TensorRecord] = []
    meta: dict[str, Any] = {}
    if cls == "BatchNormalization":
        meta = {"eps": float(cfg.get("epsilon", 1e-3)), "momentum": float(cfg.get("momentum", 0.99))}
        present = {v for v, _ in variables}
        absent = [r for v, r in (("gamma", "weight"), ("beta", "bias")) if v not in present]
        if absent:
            meta["absent"] = absent  # scale=False / center=False: the layer has no such tensor
    for var, a in variables:
        role = ROLE.get(var, "other")
        suffix = role if role != "other" else var
        t = a
        if var == "kernel" and a.ndim >= 3 and cls != "DepthwiseConv2D":
            # HWIO -> OIHW (any rank); for Conv2DTranspose the same move gives ConvTranspose2d's (in, out, kh, kw).
            t = np.moveaxis(a, (-1, -2), (0, 1))
        elif var in ("depthwise_kernel", "kernel") and a.ndim >= 3:  # depthwise: (kh, kw, C, M) -> (C*M, 1, kh, kw)
            k = a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])
            t = np.moveaxis(k, -1, 0)[:, None]
        elif var == "pointwise_kernel":
            t = np.moveaxis(a, (-1, -2), (0, 1))
        elif var == "kernel" and a.ndim == 2:
            t = a.T                                             # Dense [in, out] -> [out, in]
        elif var == "alpha" and a.ndim >= 2:
            t = np.moveaxis(a, -1, 0)                           # channels first
            if all(d == 1 for d in t.shape[1:]):
                t = t.reshape(t.shape[0])
        if cls == "SeparableConv2D":
            part = "depthwise" if var == "depthwise_kernel" else "pointwise"
            tname = f"{name}.{part}.{suffix}"
            rkind = "depthwise_conv" if part == "depthwise" else "conv"
        else:
            tname, rkind = f"{name}.{suffix}", kind
        if cls == "DepthwiseConv2D":
            rkind = "depthwise_conv"
        recs.append(TensorRecord(tname, _t(t), layer=name, kind=rkind, role=role, position=position,
                                 meta={**meta, "keras_var": var, "keras_shape": list(a.shape)}))
    return recs


def guess_class(var_names: list[str], arrays: list[np.ndarray], layer: str = "") -> str:
    """A legacy weights-only layer's class from its variable names and shapes (and Keras's default name)."""
    names = set(var_names)
    if {"depthwise_kernel", "pointwise_kernel"} <= names:
        return "SeparableConv2D"
    if "depthwise_kernel" in names:
        return "DepthwiseConv2D"
    if "moving_mean" in names:
        return "BatchNormalization"
    if "alpha" in names:
        return "PReLU"
    if "embeddings" in names:
        return "Embedding"
    if "kernel" in names:
        k = arrays[var_names.index("kernel")]
        if k.ndim == 4:
            # Keras 3 calls a DepthwiseConv2D kernel (kh, kw, C, M) just `kernel`: its bias has C*M entries,
            # a Conv2D's has M. Without a bias only Keras's default layer name can tell.
            bias = arrays[var_names.index("bias")] if "bias" in names else None
            if (bias is not None and bias.size == k.shape[2] * k.shape[3] != k.shape[3]) or \
                    (bias is None and re.fullmatch(r"depthwise_conv2d(_\d+)?", layer.rpartition(".")[2])):
                return "DepthwiseConv2D"
        return {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}.get(k.ndim, "")
    return ""


def bn_var_names(cfg: dict | None, count: int) -> list[str]:
    if cfg is not None:
        names = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else [])
        return names + ["moving_mean", "moving_variance"]
    return {4: ["gamma", "beta", "moving_mean", "moving_variance"],
            3: ["beta", "moving_mean", "moving_variance"],  # scale=False, the common idiom (documented guess)
            2: ["moving_mean", "moving_variance"]}.get(count, [str(i) for i in range(count)])


def ln_var_names(cfg: dict | None, count: int) -> list[str]:
    if cfg is not None:
        return (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else [])
    return ["gamma", "beta"][:count] if count <= 2 else [str(i) for i in range(count)]


def _known_var_names(cls: str, cfg: dict | None, count: int) -> list[str]:
    """A layer's variable names in creation order, as far as its class tells them."""
    if cls == "BatchNormalization":
        return bn_var_names(cfg, count)
    if cls == "LayerNormalization":
        return ln_var_names(cfg, count)
    return VAR_ORDER.get(cls, [])


def keras3_var_names(cls: str, cfg: dict | None, count: int) -> list[str]:
    names = _known_var_names(cls, cfg, count)
    if len(names) < count:
        names = names + [str(i) for i in range(len(names), count)]
    return names[:count]


# ---------------------------------------------------------------- file structure

def _decode(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _json_attr(attrs, key: str):
    raw = attrs.get(key)
    if raw is None:
        return None
    return json.loads(_decode(raw))


MAX_NESTING = 32  # layers inside layers; deeper is a file that links to itself


def _child(group, path: str):
    """group[path], refusing HDF5 external links on the way: a weight may not come from another file."""
    import h5py
    node = group
    for part in (p for p in path.split("/") if p):
        link = node.get(part, getlink=True)
        if link is None:
            raise KeyError(f"{node.name}/{part}")
        if isinstance(link, h5py.ExternalLink):
            raise GraftError(f"{node.name}/{part} is an HDF5 external link to {link.filename!r}; graftkit reads "
                             "nothing outside the file it was given", "re-save the model with Keras")
        node = node[part]
    return node


def _array(group, path: str, limit: int) -> np.ndarray:
    """A weight's values, read only when they are plain data stored in this file and fit in it."""
    import h5py
    ds = _child(group, path)
    where = ds.name
    if not isinstance(ds, h5py.Dataset):
        raise GraftError(f"weight {where} is not an array", "re-save the model with Keras")
    if ds.is_virtual or ds.external:
        what = "a virtual dataset" if ds.is_virtual else "stored in external files"
        raise GraftError(f"weight {where} is {what}; graftkit reads nothing outside the file it was given",
                         "re-save the model with Keras")
    nbytes = int(ds.size) * ds.dtype.itemsize
    if nbytes > limit:
        raise GraftError(f"weight {where} declares {ds.shape} ({nbytes:,} bytes), more than the file could hold",
                         "the file is corrupt or malicious; re-save the model with Keras")
    return ds[()]


def _numbered(group, limit: int) -> list[np.ndarray]:
    keys = sorted((k for k in group.keys() if k.isdigit()), key=int)
    return [_array(group, k, limit) for k in keys]


def _keras3_layers(h5, config: dict | None, limit: int) -> Iterator[tuple[str, str, dict | None, int, list]]:
    """(dotted name, class, config, position, [(var, array)]) for every layer with variables in a Keras 3
    weights file, matched to `config` by save path (or the stored layer name)."""
    import h5py

    flat = flatten_config(config)
    by_save = {v["save_path"]: (k, v) for k, v in flat.items() if v["save_path"]}
    found = []

    def walk(group, path: str, prefix: str, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            raise GraftError(f"layers nest more than {MAX_NESTING} deep at {path} (a group that links to itself?)",
                             "the file is corrupt or malicious; re-save the model with Keras")
        for key in group.keys():
            sub = _child(group, key)
            if not hasattr(sub, "keys"):
                continue
            spath = f"{path}{key}"
            entry = by_save.get(spath)
            vars_group = _child(sub, "vars") if "vars" in sub else None
            stored = _decode(vars_group.attrs["name"]) if vars_group is not None and "name" in vars_group.attrs \
                else None
            if entry:
                name, info = entry
                cls, cfg, pos = info["class_name"], info["config"], info["position"]
            else:
                base = re.sub(r"_\d+$", "", key)
                name = prefix + (stored or key)
                cls, cfg = SNAKE_CLASSES.get(base, ""), None
                # No config: HDF5 object addresses follow Keras's writing order, i.e. the layer order.
                pos = flat[name]["position"] if name in flat else 10**6 + h5py.h5o.get_info(sub.id).addr
                if name in flat:
                    cls, cfg = flat[name]["class_name"], flat[name]["config"]
            arrays = _numbered(vars_group, limit) if vars_group is not None else []
            if arrays:
                found.append((name, cls, cfg, pos, list(zip(keras3_var_names(cls, cfg, len(arrays)), arrays))))
            if "layers" in sub:
                walk(_child(sub, "layers"), f"{spath}/layers/", name + ".", depth + 1)

    if "layers" in h5:
        walk(_child(h5, "layers"), "layers/", "")
    found.sort(key=lambda f: f[3])
    return iter(found)


def _legacy_layers(h5, config: dict | None, limit: int) -> Iterator[tuple[str, str, dict | None, int, list]]:
    """Layers of a legacy (Keras 2 style) HDF5 file: `layer_names` and per-layer `weight_names` attrs."""
    root = _child(h5, "model_weights") if "model_weights" in h5 else h5
    if "layer_names" not in root.attrs:
        raise KeyError("layer_names")
    flat = flatten_config(config)
    by_simple: dict[str, str] = {}
    for full in flat:
        by_simple.setdefault(full.rpartition(".")[2], full)
    found: dict[str, tuple] = {}
    for i, lname in enumerate(_decode(n) for n in root.attrs["layer_names"]):
        g = _child(root, lname)
        wnames = [_decode(w) for w in g.attrs.get("weight_names", [])]
        if wnames and _own_weights(lname, wnames, flat):
            # Keras pairs a layer's group with the layer, then the weights by position, whatever their
            # scope: Keras 2 wrote `conv2d_1/conv2d_1_1/kernel:0` when a graph had been built twice.
            info = flat.get(lname)
            cls = info["class_name"] if info else ""
            found[lname] = (lname, cls, info["config"] if info else None, info["position"] if info else 10**6 + i,
                            [(wn.split("/")[-1].split(":")[0], _array(g, wn, limit)) for wn in wnames])
            continue
        for wn in wnames:
            parts = wn.split("/")
            owner = parts[-2] if len(parts) > 1 else lname
            var = parts[-1].split(":")[0]
            full = by_simple.get(owner, owner if owner == lname else f"{lname}.{owner}")
            if full not in found:
                info = flat.get(full)
                found[full] = (full, info["class_name"] if info else "", info["config"] if info else None,
                               info["position"] if info else 10**6 + i, [])
            found[full][4].append((var, _array(g, wn, limit)))
    out = []
    for full, cls, cfg, pos, variables in found.values():
        if not cls:
            cls = guess_class([v for v, _ in variables], [a for _, a in variables], full)
        order = _legacy_var_order(cls, cfg, len(variables))
        if order:  # by position, as Keras assigns them; the stored names may carry any suffix
            variables = [(v, a) for v, (_, a) in zip(order, variables)]
        out.append((full, cls, cfg, pos, variables))
    out.sort(key=lambda f: f[3])
    return iter(out)


def _own_weights(lname: str, wnames: list[str], flat: dict[str, dict]) -> bool:
    """Whether a legacy layer group's weights all belong to that layer (not to layers of a nested model).
    With a config: the layer is not a model. Without one: one scope, named after the layer (Keras 2
    uniquified scopes as `conv2d_1_1`, `batch_normalization_1/batch_normalization_1_1`)."""
    info = flat.get(lname)
    if info is not None:
        return info["class_name"] not in MODEL_CLASSES and not is_model(
            {"class_name": info["class_name"], "config": info["config"]})
    if flat or not wnames:
        return False
    scopes = {"/".join(wn.split("/")[:-1]) for wn in wnames}
    if len(scopes) != 1:
        return False
    scope = scopes.pop()
    return scope != lname and bool(scope) and all(
        re.fullmatch(re.escape(lname) + r"(_\d+)*", part) for part in scope.split("/"))


def _legacy_var_order(cls: str, cfg: dict | None, count: int) -> list[str]:
    """The variable names of a legacy layer by position (Keras 2's creation order), when known."""
    names = _known_var_names(cls, cfg, count)
    if cls in ("Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Dense", "DepthwiseConv2D",
               "SeparableConv2D") and cfg is not None and not cfg.get("use_bias", True):
        names = names[:-1]
    return names if len(names) == count and all(not n.isdigit() for n in names) else []


def _safe_member_names(zf: zipfile.ZipFile, path: Path) -> None:
    for n in zf.namelist():
        p = PurePosixPath(n.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", n):
            raise GraftError(f"{path}: archive member {n!r} points outside the archive",
                             "the .keras file is malformed or malicious; re-save it with Keras")


def open_keras_zip(path: Path) -> tuple[dict, dict, bytes]:
    """(model config, metadata, model.weights.h5 bytes) of a `.keras` archive, members read by exact name."""
    with zipfile.ZipFile(path) as zf:
        _safe_member_names(zf, path)
        names = set(zf.namelist())
        if "config.json" not in names or "model.weights.h5" not in names:
            missing = "config.json" if "config.json" not in names else "model.weights.h5"
            raise GraftError(f"{path}: not a Keras 3 .keras archive (no {missing} inside)",
                             "save the model with model.save('name.keras')")
        config = json.loads(_read_member(zf, "config.json", path))
        metadata = json.loads(_read_member(zf, "metadata.json", path)) if "metadata.json" in names else {}
        weights = _read_member(zf, "model.weights.h5", path)
    return config, metadata, weights


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """An archive member, read no further than a plausible size: a tiny file may not inflate to GiBs."""
    limit = 64 * path.stat().st_size + 2**20
    with zf.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise GraftError(f"{path}: member {name} inflates to more than {limit:,} bytes, 64x the archive "
                         "(a zip bomb?)", "the file is corrupt or malicious; re-save the model with Keras")
    return data


def _limit(file_size: int) -> int:
    """The most bytes one weight may declare: Keras stores weights uncompressed, so a few times the
    file (compression allowed) is generous, and a 25000^2 dataset with no stored data is refused."""
    return 32 * file_size + 2**20


def _records(layers) -> list[TensorRecord]:
    recs: list[TensorRecord] = []
    for pos, (name, cls, cfg, _, variables) in enumerate(layers):
        recs.extend(layer_records(name, cls, variables, cfg or {}, pos))
    return recs


def _load(path: Path, config_override: dict | None) -> TensorSet:
    import h5py

    meta: dict[str, Any] = {}
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if path.suffix == ".keras" or is_zip:
        config, metadata, weights = open_keras_zip(path)
        meta.update({"keras_version": metadata.get("keras_version", ""), "file_kind": "keras"})
        with h5py.File(io.BytesIO(weights), "r") as h5:
            layers = list(_keras3_layers(h5, config_override or config, _limit(len(weights))))
        return TensorSet(_records(layers), format="keras", source=str(path), meta=meta,
                         graph=config_override or config)
    with h5py.File(path, "r") as h5:
        config = _json_attr(h5.attrs, "model_config")
        for k in ("keras_version", "backend"):
            if k in h5.attrs:
                meta[k] = _decode(h5.attrs[k])
        use = config_override or config
        root = h5["model_weights"] if "model_weights" in h5 else h5
        if "layer_names" in root.attrs:
            meta["file_kind"] = "legacy_h5" if config else "legacy_weights_h5"
            layers = list(_legacy_layers(h5, use, _limit(path.stat().st_size)))
        elif "layers" in h5:
            meta["file_kind"] = "weights_h5"
            layers = list(_keras3_layers(h5, use, _limit(path.stat().st_size)))
        else:
            raise GraftError(f"{path}: an HDF5 file but not a Keras model or weights file",
                             "give a file written by Keras model.save() or save_weights()")
    if not use:
        meta["kinds_inferred"] = "from names and shapes (no model config in the file)"
    return TensorSet(_records(layers), format="keras", source=str(path), meta=meta, graph=use)


@contextlib.contextmanager
def _as_graft_errors(path: Path):
    """Whatever zipfile/json/h5py raise on a damaged file becomes one GraftError naming the file."""
    try:
        yield
    except GraftError:
        raise
    except zipfile.BadZipFile as e:
        raise GraftError(f"{path}: the .keras archive is truncated or corrupt ({e})",
                         "re-save or re-download the model") from None
    except json.JSONDecodeError as e:
        raise GraftError(f"{path}: the model config inside is not valid JSON ({e})",
                         "re-save the model with Keras") from None
    except (NotImplementedError, zlib.error, lzma.LZMAError) as e:  # zipfile: a method or flag it cannot read
        raise GraftError(f"{path}: the .keras archive cannot be read ({e})",
                         "re-save the model with Keras (it writes plain deflate members)") from None
    except RecursionError:  # HDF5 groups that link to themselves, JSON nested beyond reason
        raise GraftError(f"{path}: the Keras file nests groups or JSON too deeply (a loop?)",
                         "the file is corrupt or malicious; re-save the model with Keras") from None
    except (OSError, KeyError, ValueError, TypeError, EOFError, RuntimeError) as e:
        # (h5py raises RuntimeError for damaged B-trees, symbol tables and heaps)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GraftError(f"{path}: the Keras file is truncated or corrupt ({msg})",
                         "re-save or re-download the model") from None


def read_with_config(path: str | Path, config: dict | None) -> TensorSet:
    """Read `path`, naming and typing its layers from `config` (a model config) instead of the file's own."""
    path = Path(path)
    with _as_graft_errors(path):
        return _load(path, config)


def read(path: Path, *, trust: bool = False) -> TensorSet:
    # Keras files hold no pickles graftkit would load (Lambda bytecode is never executed), so `trust` is unused.
    return read_with_config(path, None)


def read_config(path: str | Path) -> tuple[dict | None, str]:
    """(model config or None, Keras version) of a Keras file, without reading any weights."""
    import h5py

    path = Path(path)
    with _as_graft_errors(path):
        with open(path, "rb") as f:
            is_zip = f.read(4) == ZIP_MAGIC
        if path.suffix == ".keras" or is_zip:
            with zipfile.ZipFile(path) as zf:
                _safe_member_names(zf, path)
                names = set(zf.namelist())
                if "config.json" not in names:
                    raise GraftError(f"{path}: not a Keras 3 .keras archive (no config.json inside)",
                                     "save the model with model.save('name.keras')")
                config = json.loads(_read_member(zf, "config.json", path))
                meta = json.loads(_read_member(zf, "metadata.json", path)) if "metadata.json" in names else {}
            if not isinstance(meta, dict):
                raise GraftError(f"{path}: metadata.json inside is not a JSON object", "re-save the model with Keras")
            return config, str(meta.get("keras_version", ""))
        with h5py.File(path, "r") as h5:
            return _json_attr(h5.attrs, "model_config"), _decode(h5.attrs.get("keras_version", ""))
