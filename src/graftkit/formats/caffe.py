"""Caffe weights: `.caffemodel` (NetParameter) and `.binaryproto` (BlobProto mean files), read and written.

Reading maps the file privately and decodes it with `protowire` against the
caffe.proto schema: layers and their parameters become plain dicts, every
blob's packed float data a numpy view of the mapped file (no copy, no Python
float per value). Both the current format (`layer`, field 100, string types)
and the legacy V1 format (`layers`, field 2, enum types, blobs with
num/channels/height/width dims) are read.

`read()` turns the blobs into PyTorch-layout tensors named `<layer>.weight`,
`<layer>.bias`, ... (see `_records`): convolutions are already OIHW, legacy
4-D InnerProduct blobs become [out, in], and BatchNorm's running statistics
are divided by Caffe's scale-factor blob exactly as Caffe does at test time.
`write_caffemodel()` writes a V2 caffemodel that Caffe and OpenCV load.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..atomic import atomic_open
from ..errors import GraftError, reading
from . import caffe_proto, protowire
from .base import TensorRecord, TensorSet
from .caffe_proto import V1_TYPE_NAMES

SUFFIXES = (".caffemodel", ".binaryproto")
BN_EPS = 1e-5   # caffe.proto's BatchNormParameter.eps default


def sniff(path: Path, head: bytes) -> bool:
    return path.suffix.lower() in SUFFIXES


# ---------------------------------------------------------------------------------------------- decoding

def _map(path: Path):
    """The file's bytes as a private (copy-on-write) memory map: tensors can view it and stay writable."""
    with reading(path, "Caffe file"), open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise GraftError(f"{path}: the file is empty (0 bytes)", "the download or copy was probably interrupted")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _looks_like_text(buf) -> bool:
    head = bytes(buf[:512])
    return all(32 <= b < 127 or b in b"\t\r\n" for b in head)


def read_net(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded message of a `.caffemodel` (a NetParameter) or a `.binaryproto` (a BlobProto).

    Blob data are numpy views of the mapped file; see `blob_array` for shaped arrays.
    """
    path = Path(path)
    buf = _map(path)
    kind = "BlobProto" if path.suffix.lower() == ".binaryproto" else "NetParameter"
    if _looks_like_text(buf):
        raise GraftError(f"{path}: is a text file (a prototxt?), not a binary Caffe {kind}",
                         "pass the binary .caffemodel; a .prototxt goes to `graft convert`")
    msg = protowire.decode(buf, caffe_proto.message(kind), source=str(path))
    if kind == "NetParameter" and not (msg.get("layer") or msg.get("layers")):
        raise GraftError(f"{path}: holds no Caffe layers", "the file is not a .caffemodel, or it is damaged")
    return msg


def net_layers(net: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of a NetParameter, V2 `layer` or else legacy V1 `layers` (as decoded)."""
    return net.get("layer") or net.get("layers") or []


def v2_layers(net: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers as V2 LayerParameter dicts: V1 layers upgraded as Caffe's UpgradeV1Net does.

    V1 enum types become V2 type names (CONVOLUTION -> "Convolution"), `blobs_lr`,
    `weight_decay` and `param` names become `param { lr_mult decay_mult name }`;
    the `*_param` messages are the same in both versions.
    """
    if net.get("layer") or not net.get("layers"):
        return list(net.get("layer") or [])
    out = []
    for layer in net["layers"]:
        v2 = {k: v for k, v in layer.items() if k not in ("type", "blobs_lr", "weight_decay", "param",
                                                         "blob_share_mode")}
        v2["type"] = caffe_proto.v2_type(layer)
        specs: list[dict[str, Any]] = []
        for key, field in (("param", "name"), ("blobs_lr", "lr_mult"), ("weight_decay", "decay_mult"),
                           ("blob_share_mode", "share_mode")):
            for i, v in enumerate(layer.get(key, [])):
                while len(specs) <= i:
                    specs.append({})
                specs[i][field] = v
        if specs:
            v2["param"] = specs
        out.append(v2)
    return out


def blob_shape(blob: dict[str, Any]) -> list[int]:
    """A BlobProto's shape as Caffe computes it: legacy num/channels/height/width win when present."""
    if any(k in blob for k in ("num", "channels", "height", "width")):
        return [blob.get("num", 0), blob.get("channels", 0), blob.get("height", 0), blob.get("width", 0)]
    return list((blob.get("shape") or {}).get("dim", []))


def blob_array(blob: dict[str, Any], where: str = "blob") -> np.ndarray:
    """A BlobProto's values shaped as Caffe stores them (float32 `data`, or float64 `double_data`)."""
    shape = blob_shape(blob)
    data = blob.get("data")
    if data is None or (len(data) == 0 and len(blob.get("double_data", ())) > 0):
        data = blob.get("double_data")
    if data is None:
        data = np.zeros(0, np.float32)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if min(shape, default=0) < 0 or count != len(data):
        raise GraftError(f"{where}: holds {len(data)} values but its shape {shape} needs {count}",
                         "the file is damaged or was written by a broken tool")
    return data.reshape(shape)


def layer_blobs(net: dict[str, Any], where: str = "") -> list[tuple[str, str, list[np.ndarray]]]:
    """(layer name, V2 layer type, [blob arrays in Caffe's stored shape]) for each layer with blobs.

    Legacy V1 blobs keep their stored 4-D num/channels/height/width shape (an
    InnerProduct weight is [1, 1, out, in]); a layer name seen again (the same
    layer listed for several phases) is only taken the first time.
    """
    out, seen = [], set()
    for i, layer in enumerate(net_layers(net)):
        blobs = layer.get("blobs")
        name = layer.get("name") or f"layer{i}"
        if not blobs or name in seen:
            continue
        seen.add(name)
        arrays = [blob_array(b, f"{where}{': ' if where else ''}layer '{name}' blob {j}") for j, b in enumerate(blobs)]
        out.append((name, caffe_proto.v2_type(layer), arrays))
    return out


def read_binaryproto_mean(path: str | os.PathLike) -> np.ndarray:
    """The mean image of a Caffe `.binaryproto` mean file as float32 [C, H, W]."""
    path = Path(path)
    if path.suffix.lower() != ".binaryproto":
        blob = protowire.decode(_map(path), caffe_proto.message("BlobProto"), source=str(path))
    else:
        blob = read_net(path)
    arr = blob_array(blob, str(path))
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise GraftError(f"{path}: the mean blob has shape {list(arr.shape)}, not [1, C, H, W]",
                         "pass the mean file made by Caffe's compute_image_mean")
    return np.array(arr, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- tensors

def _param(layer: dict[str, Any], name: str, field: str):
    return (layer.get(name) or {}).get(field, caffe_proto.default(_PARAM_MESSAGES[name], field))


_PARAM_MESSAGES = {"convolution_param": "ConvolutionParameter", "inner_product_param": "InnerProductParameter",
                   "batch_norm_param": "BatchNormParameter", "prelu_param": "PReLUParameter",
                   "scale_param": "ScaleParameter"}


def _records(name: str, ltype: str, layer: dict[str, Any], arrays: list[np.ndarray], pos: int,
             where: str) -> list[TensorRecord]:
    """One layer's blobs as PyTorch-layout tensor records."""
    def rec(role: str, arr: np.ndarray, kind: str, leaf: str | None = None, **meta) -> TensorRecord:
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr) if arr.flags.writeable else torch.tensor(arr)
        return TensorRecord(f"{name}.{leaf or role}", t, layer=name, kind=kind, role=role, position=pos,
                            meta={k: v for k, v in meta.items() if v is not None})

    def bias(i: int, kind: str) -> list[TensorRecord]:
        return [rec("bias", arrays[i].reshape(-1), kind)] if len(arrays) > i else []

    def extra(start: int) -> list[TensorRecord]:
        return [rec("other", a, "other", f"blob{i}") for i, a in enumerate(arrays) if i >= start]

    w = arrays[0]
    if ltype in ("Convolution", "Deconvolution"):
        group = _param(layer, "convolution_param", "group")
        if w.ndim < 3:
            raise GraftError(f"{where}: {ltype} layer '{name}' has a weight blob of shape {list(w.shape)}",
                             "expected [out, in/group, kh, kw]; the file is damaged")
        if ltype == "Deconvolution":
            kind = "conv_transpose"   # Caffe's [in, out/group, kh, kw] is PyTorch's ConvTranspose layout
        else:
            kind = "depthwise_conv" if group > 1 and w.shape[1] == 1 else "conv"
        return [rec("weight", w, kind, group=group if group > 1 else None)] + bias(1, kind) + extra(2)
    if ltype == "InnerProduct":
        w2 = w.reshape(w.shape[-2], w.shape[-1]) if w.ndim > 2 else w.reshape(-1, w.shape[-1]) if w.ndim else w
        transposed = bool(_param(layer, "inner_product_param", "transpose"))
        if w2.ndim == 2 and transposed:   # stored [in, out]
            w2 = np.ascontiguousarray(w2.T)
        return [rec("weight", w2, "linear", caffe_transpose=transposed or None,
                    axis=(layer.get("inner_product_param") or {}).get("axis"))] + bias(1, "linear") + extra(2)
    if ltype == "BatchNorm" and len(arrays) >= 3:
        factor = float(arrays[2].reshape(-1)[0]) if arrays[2].size else 1.0
        # Caffe (and OpenCV): statistics * (1 / factor), and * 0 when factor == 0.
        scale = np.float32(0.0 if factor == 0 else 1.0 / factor)
        eps = _param(layer, "batch_norm_param", "eps")
        meta = dict(eps=eps, scale_factor=factor)
        return [rec("running_mean", (arrays[0] * scale).reshape(-1), "batchnorm", **meta),
                rec("running_var", (arrays[1] * scale).reshape(-1), "batchnorm", **meta)] + extra(3)
    if ltype == "PReLU":
        return [rec("weight", w.reshape(-1), "prelu",
                    channel_shared=_param(layer, "prelu_param", "channel_shared") or None)] + extra(1)
    if ltype == "Scale":
        return [rec("weight", w, "scale", axis=(layer.get("scale_param") or {}).get("axis"))] + bias(1, "scale") \
            + extra(2)
    if ltype == "Bias":
        return [rec("bias", w, "bias")] + extra(1)
    if ltype == "Embed":
        return [rec("weight", w, "embedding")] + bias(1, "embedding") + extra(2)
    return extra(0)


def _graph(net: dict[str, Any]) -> dict[str, Any]:
    """The NetParameter without blob data (each blob keeps its shape), for converters."""
    graph = {k: v for k, v in net.items() if k not in ("layer", "layers")}
    key = "layer" if net.get("layer") else "layers"
    layers = []
    for layer in net_layers(net):
        if layer.get("blobs"):
            layer = dict(layer, blobs=[{"shape": {"dim": blob_shape(b)}} for b in layer["blobs"]])
        layers.append(layer)
    graph[key] = layers
    return graph


def read(path: Path, *, trust: bool = False) -> TensorSet:
    """A `.caffemodel`'s blobs (or a `.binaryproto`'s mean) as PyTorch-layout tensors."""
    path = Path(path)
    if path.suffix.lower() == ".binaryproto":
        mean = torch.from_numpy(read_binaryproto_mean(path))
        return TensorSet([TensorRecord("mean", mean, layer="mean", kind="other", role="other", position=0)],
                         format="caffe", source=str(path), meta={"caffe": "binaryproto mean"})
    net = read_net(path)
    legacy = not net.get("layer")
    records: list[TensorRecord] = []
    seen: set[str] = set()
    for pos, layer in enumerate(net_layers(net)):
        blobs = layer.get("blobs")
        name = layer.get("name") or f"layer{pos}"
        if not blobs or name in seen:   # a layer listed for several phases counts once
            continue
        seen.add(name)
        where = f"{path}: layer '{name}'"
        arrays = [blob_array(b, f"{where} blob {j}") for j, b in enumerate(blobs)]
        records += _records(name, caffe_proto.v2_type(layer), layer, arrays, pos, str(path))
    meta = {"caffe_format": "V1 layers (legacy)" if legacy else "V2 layer", "net_name": net.get("name", ""),
            "bn_eps_default": BN_EPS}
    return TensorSet(records, format="caffe", source=str(path), meta=meta, graph=_graph(net))


# ---------------------------------------------------------------------------------------------- writing

def _blob(arr) -> dict[str, Any]:
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise GraftError(f"cannot write a blob of dtype {a.dtype} to a caffemodel", "blobs are float arrays")
    return {"shape": {"dim": list(a.shape)}, "data": np.ascontiguousarray(a, dtype="<f4").reshape(-1)}


def net_from_layers(layers: Iterable[tuple[str, str, Sequence]], name: str = "") -> dict[str, Any]:
    """A V2 NetParameter dict holding (layer name, type, [arrays]) as float32 blobs."""
    net: dict[str, Any] = {"name": name} if name else {}
    net["layer"] = [{"name": n, "type": t, "blobs": [_blob(a) for a in arrays]} for n, t, arrays in layers]
    return net


def write_caffemodel(path: str | os.PathLike, layers: Iterable[tuple[str, str, Sequence]] | dict[str, Any],
                     name: str = "") -> Path:
    """Write a V2 binary caffemodel, atomically.

    `layers` is a list of (layer name, layer type, [numpy arrays in Caffe's
    shape]) or a whole NetParameter dict (as `read_net` or `caffe_prototxt.parse`
    return, blobs included). Blob data is written as packed float32, as Caffe does.
    Caffe and OpenCV pair the weights with a prototxt's layers by name.
    """
    path = Path(path)
    net = layers if isinstance(layers, dict) else net_from_layers(layers, name)
    chunks, _ = protowire.encode_chunks(net, caffe_proto.message("NetParameter"))
    with atomic_open(path) as f:
        f.writelines(chunks)
    return path


def write_binaryproto(path: str | os.PathLike, mean: np.ndarray) -> Path:
    """Write a mean image ([C, H, W] or [1, C, H, W]) as a Caffe `.binaryproto`, atomically."""
    a = np.asarray(mean, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise GraftError(f"a mean image must be [C, H, W], not {list(a.shape)}")
    blob = dict(_blob(a), num=a.shape[0], channels=a.shape[1], height=a.shape[2], width=a.shape[3])
    chunks, _ = protowire.encode_chunks(blob, caffe_proto.message("BlobProto"))
    path = Path(path)
    with atomic_open(path) as f:
        f.writelines(chunks)
    return path


__all__ = ["sniff", "read", "read_net", "net_layers", "v2_layers", "layer_blobs", "blob_array", "blob_shape",
           "read_binaryproto_mean", "write_caffemodel", "write_binaryproto", "net_from_layers", "V1_TYPE_NAMES"]
