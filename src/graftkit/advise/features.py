"""Pooled features of a network at named depths, computed once and cached on disk.

A depth is a module name of the network (its output, global-average-pooled when it is a
feature map) or `pre_logits` (the input of the classifier found by tune.head). The default
depths are the end of each stage (timm's `feature_info`; for other networks, including
converted Caffe/Keras/MXNet/ONNX ones, the last top-level layer at each spatial resolution)
plus `pre_logits`. Forward hooks collect them, and the forward stops at the deepest depth
asked for, so any nn.Module works and nothing past that depth is computed.

The cache (one safetensors file per depth) is keyed by everything that changes the features:
the network's tensors, the data (each file's path, size, mtime and label; a pack's shards; an
array's bytes), the preprocessing, the depth and the storage dtype. Nothing stale is served.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..atomic import atomic_path
from ..errors import GraftError
from ..layout import channels_last, channels_last_while
from ..meta import meta_of
from ..nets.probe import PRE_LOGITS, Taps
CACHE_VERSION = 1  # bump when the way features are computed changes


def cache_root() -> Path:
    root = os.environ.get("GRAFTKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "graftkit") / "features"


def stage_ends(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> list[str]:
    """The default feature depths (module names), shallow to deep, without `pre_logits`."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            names = [f["module"] for f in info] if isinstance(info, list) else list(info.module_name())
            names = [n for n in names if n]
            if names and all(_has_module(model, n) for n in names):
                return names
        except (TypeError, KeyError, AttributeError):
            pass
    # Any other network: the last top-level layer producing each spatial resolution.
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape))
                                     if isinstance(out, torch.Tensor) and out.dim() == 4 else None)
             for n, m in _top_level(model)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GraftError(f"cannot run the network on a {tuple(input_size)} input to find its stages ({first})",
                         "name the depths with --at") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    ends: list[str] = []
    prev, prev_hw = None, None
    for name, shape in shapes.items():  # in the order they ran
        if prev_hw is not None and shape[2:] != prev_hw:
            ends.append(prev)
        prev, prev_hw = name, shape[2:]
    if prev is not None:
        ends.append(prev)
    return list(dict.fromkeys(ends))


def generic_end(model: nn.Module, input_size: Sequence[int], max_stride: int = 4) -> str | None:
    """The deepest stage end whose output is at most `max_stride` times smaller than the input (None if
    none is). Up to there a network computes edges, colours and textures, which transfer to any images
    (Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014), and on
    full-resolution maps, which makes their backward pass the most expensive per parameter."""
    ends = stage_ends(model, input_size)
    shapes = output_shapes(model, ends, input_size)
    shallow = [n for n in ends if n in shapes and input_size[-1] / shapes[n][-1] <= max_stride]
    return shallow[-1] if shallow else None


def output_shapes(model: nn.Module, names: Sequence[str], input_size: Sequence[int]) -> dict[str, tuple]:
    """The output shape of each named layer (that returns a tensor) on one zero image, in eval mode."""
    shapes: dict[str, tuple] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)) if isinstance(out, torch.Tensor) else None)
        for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def _top_level(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers a stage list is made of: the root's children, looking through lone containers."""
    children = list(model.named_children())
    while len(children) == 1 and list(children[0][1].children()):
        prefix = children[0][0]
        children = [(f"{prefix}.{n}", m) for n, m in children[0][1].named_children()]
    return children


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def default_depths(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> list[str]:
    from ..tune.head import find_head
    return stage_ends(model, input_size) + ([PRE_LOGITS] if find_head(model) else [])


def tap_point(model: nn.Module, depth: str) -> tuple[str, str, str]:
    """(depth, module name, side) for nets.probe.Taps: pre_logits is the classifier's input."""
    from ..tune.head import find_head
    if depth == PRE_LOGITS:
        head = find_head(model)
        if head is None:
            raise GraftError("this network has no classifier layer graftkit can find, so no pre_logits depth",
                             "name a layer as the depth instead")
        return depth, head, "input"
    if not _has_module(model, depth):
        raise GraftError(f"the network has no layer named {depth!r} to take features at",
                         f"use one of {', '.join(default_depths(model))} (or any module name)")
    return depth, depth, "output"


@dataclass
class Features:
    """Pooled features per depth ([N, C] float32 tensors), labels [N], and what was reused."""
    at: dict[str, torch.Tensor]
    labels: torch.Tensor
    classes: list[str]
    keys: dict[str, str] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)   # depths served from the cache
    seconds: float = 0.0                               # time spent computing (0 when all cached)
    images_per_s: float | None = None                 # forward throughput measured while computing


def model_digest(model: nn.Module) -> str:
    """A hash of every tensor of the network (parameters and buffers, by name)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_digest(dataset) -> str:
    """A hash of what the data set holds: files by path, size, mtime and label; shards by size
    and mtime; arrays by their bytes. Touching one image changes it."""
    src = getattr(dataset, "_src", None)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(list(getattr(dataset, "classes", []))).encode())
    h.update(np.asarray(dataset.targets, dtype=np.int64).tobytes())
    if hasattr(src, "paths"):
        for p in src.paths:
            if p is None:
                h.update(b"<outside>;")
                continue
            try:
                st = os.stat(p)
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{p}:missing;".encode())
    elif hasattr(src, "readers"):
        for r in src.readers:
            for f in (r.rec, getattr(r, "idx", None)):
                if f is not None and Path(f).exists():
                    st = os.stat(f)
                    h.update(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns};".encode())
    elif hasattr(src, "images"):
        h.update(np.ascontiguousarray(src.images).tobytes())
    else:
        raise GraftError(f"cannot fingerprint {type(dataset).__name__} for the feature cache",
                         "pass a folder, a .lst, a RecordIO pack or arrays")
    return h.hexdigest()


def cache_key(model_hash: str, data_hash: str, preprocessing: dict[str, Any], depth: str, dtype: torch.dtype) -> str:
    doc = {"v": CACHE_VERSION, "model": model_hash, "data": data_hash, "pre": preprocessing, "depth": depth,
           "dtype": str(dtype)}
    return hashlib.blake2b(json.dumps(doc, sort_keys=True).encode(), digest_size=20).hexdigest()


def features(model: nn.Module | str, data, at: Sequence[str] | None = None, *, preprocessing: dict[str, Any] | None = None,
             cache_dir: str | os.PathLike | None = None, use_cache: bool = True, dtype: torch.dtype = torch.float32,
             batch_size: int = 64, num_workers: int = 0, progress: bool | None = None,
             description: str = "features", hashes: tuple[str, str] | None = None) -> Features:
    """Pooled features of `model` on `data` at the depths `at` (default: stage ends + pre_logits).

    data: a folder of class folders, a .lst, a RecordIO pack, or an ImageDataset without a
    transform. preprocessing: the model's own (from its package metadata) unless given; images
    go through the evaluation pipeline (resize, centre crop, normalise). Features are stored
    as `dtype` (float16 halves the cache) and returned as float32. `hashes` (model_digest,
    data_digest) saves hashing again when the caller has them."""
    import time
    from ..data import ImageDataset
    from ..data.transforms import complete
    if not isinstance(model, nn.Module):
        from ..models import resolve
        model = resolve(model)
    if dtype not in (torch.float32, torch.float16):
        raise GraftError(f"feature cache dtype {dtype} is not supported", "use float32 or float16")
    pre = complete(preprocessing if preprocessing is not None else meta_of(model).get("preprocessing"))
    ds = data if isinstance(data, ImageDataset) else ImageDataset.open(data)
    classes = list(ds.classes)
    depths = list(dict.fromkeys(at)) if at else default_depths(model, pre["input_size"])
    for d in depths:
        tap_point(model, d)  # an unknown depth is an error before any work
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    keys: dict[str, str] = {}
    got: dict[str, torch.Tensor] = {}
    if use_cache:
        m_hash, d_hash = hashes or (model_digest(model), data_digest(ds))
        keys = {d: cache_key(m_hash, d_hash, pre, d, dtype) for d in depths}
        for d in depths:
            hit = _read(root / f"{keys[d]}.safetensors", len(ds))
            if hit is not None:
                got[d] = hit
    todo = [d for d in depths if d not in got]
    seconds, rate = 0.0, None
    if todo:
        if use_cache:
            _check_writable(root)
        t0 = time.perf_counter()
        computed = _compute(model, ds, todo, pre, batch_size, num_workers, progress, description, dtype)
        seconds = time.perf_counter() - t0
        rate = len(ds) / seconds if seconds > 0 else None
        for d in todo:
            got[d] = computed[d]
            if use_cache:
                _write(root / f"{keys[d]}.safetensors", computed[d], d)
    labels = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    return Features({d: got[d].float() for d in depths}, labels, classes, keys,
                    [d for d in depths if d not in todo], seconds, rate)


def _compute(model, ds, depths, pre, batch_size, num_workers, progress, description, dtype):
    from torch.utils.data import DataLoader
    from ..data import eval_pipeline
    from ..progress import make_progress
    from ..train.data import with_transform
    view = with_transform(ds, eval_pipeline(pre))
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    taps = Taps(model, [tap_point(model, d) for d in depths])
    chunks: dict[str, list[torch.Tensor]] = {d: [] for d in depths}
    bar = make_progress("img", disable=None if progress is None else not progress)
    try:
        with channels_last_while(model, pre["input_size"]) as nhwc, bar, torch.inference_mode():
            task = bar.add_task(description, total=len(ds), rate="")
            for x, _ in loader:
                x = x.to(device)
                out = taps(channels_last(x) if nhwc else x)
                for d in depths:
                    chunks[d].append(out[d].to("cpu", dtype))
                bar.update(task, advance=len(x))
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")
    finally:
        taps.remove()
        model.train(was_training)
    return {d: torch.cat(c) for d, c in chunks.items()}


def _read(path: Path, n: int) -> torch.Tensor | None:
    """A cached entry, or None when absent or damaged (it is then recomputed and replaced)."""
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file
        t = load_file(str(path))["features"]
        return t if t.dim() == 2 and t.shape[0] == n else None
    except Exception:
        return None


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GraftError(f"the feature cache folder {root} cannot be written ({e.strerror})",
                         "pass --cache DIR (cache_dir=...) to a writable folder, or set GRAFTKIT_CACHE") from None


def _write(path: Path, t: torch.Tensor, depth: str) -> None:
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({"features": t.contiguous()}, str(tmp), metadata={"depth": depth})
