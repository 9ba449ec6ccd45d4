"""Classify images given as files, folders (searched recursively) or http(s) URLs: top-K classes each."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from ..data.lists import IMAGE_EXTS
from ..errors import GraftError
from ..layout import channels_last_while
from ..progress import make_progress
from .fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, fetch_bytes, is_url, not_an_image
from .inference import MainOutput, classes_of, input_shape_of, preprocessing_of, probabilities, run_net

IMAGE_SUFFIXES = set(IMAGE_EXTS)  # the same files `graft data index` takes


def expand_inputs(refs: Iterable[str | os.PathLike]) -> list[str]:
    """Files and URLs as given; folders replaced by their image files (recursively, sorted)."""
    found: list[str] = []
    for ref in refs:
        ref = str(ref)
        if is_url(ref):
            found.append(ref)
            continue
        path = Path(ref)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise GraftError(f"{path}: the folder holds no image files",
                                 f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}")
            found.extend(map(str, images))
        elif path.is_file():
            found.append(ref)
        else:
            raise GraftError(f"{path}: no such file, folder or http(s) URL", "check the path")
    return found


def load_pixels(ref: str, *, channels: int = 3, min_side: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """The uint8 CHW pixels of a file or URL, decoded the way the data layer decodes training images."""
    from ..data.decode import DecodeError, decode
    mode = "L" if channels == 1 else "RGB"
    if not is_url(ref):
        try:
            return _chw(decode(ref, min_side=min_side, mode=mode))
        except DecodeError:
            raise GraftError(f"{ref}: not an image that can be decoded",
                             "pass JPEG, PNG, BMP, GIF, WebP or TIFF files") from None
    data = fetch_bytes(ref, timeout=timeout, max_bytes=max_bytes)
    try:
        return _chw(decode(data, min_side=min_side, mode=mode))
    except DecodeError:
        raise not_an_image(ref, data) from None


def _chw(a: np.ndarray) -> torch.Tensor:
    """HWC pixels as a CHW tensor; Pillow's buffers are read-only and a tensor must own writable memory."""
    return torch.from_numpy(a if a.flags.writeable else a.copy()).permute(2, 0, 1)


def rank(probs: torch.Tensor, classes: list[str] | None, k: int) -> list[list[dict[str, Any]]]:
    if probs.ndim != 2:
        raise GraftError(f"the model's output has shape {list(probs.shape)}, not [images, classes]",
                         "serve a classifier whose forward() returns one score per class")
    if classes and len(classes) != probs.shape[1]:
        raise GraftError(f"the model names {len(classes)} classes but outputs {probs.shape[1]} scores",
                         "the package's class list does not fit its network; set the classes again")
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    names = classes or [f"class {i}" for i in range(probs.shape[1])]
    return [[{"class": names[i], "index": i, "prob": float(p)} for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)]


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict(model: nn.Module | str | os.PathLike, inputs: Iterable[str | os.PathLike], *, top_k: int = 5,
            batch_size: int = 32, device: str | torch.device | None = None,
            timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES, strict: bool = True,
            progress: bool | None = None, trust: bool = False) -> list[dict[str, Any]]:
    """Top-`top_k` classes with probabilities for every image in `inputs` (files, folders, URLs).

    Returns one entry per image: {"input", "predictions": [{"class", "index", "prob"}, ...]};
    with strict=False an image that cannot be had gives {"input", "error"} instead of raising.
    """
    from ..models import resolve
    from ..data.transforms import eval_pipeline
    if top_k < 1:
        raise GraftError(f"top-k must be at least 1, not {top_k}")
    model = resolve(model, trust=trust)  # (a package naming Python code builds only with trust)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    refs = expand_inputs(inputs)
    pipeline = eval_pipeline(preprocessing_of(model))
    classes = classes_of(model)
    net = MainOutput(model).to(device).eval()
    results: list[dict[str, Any]] = []
    with channels_last_while(net, input_shape_of(model)) as nhwc, \
            make_progress("img", disable=None if progress is None else not progress) as bar, torch.inference_mode():
        task = bar.add_task("predict", total=len(refs), rate="")
        for chunk in _batches(refs, batch_size):
            tensors, slots = [], []
            for ref in chunk:
                entry: dict[str, Any] = {"input": ref}
                results.append(entry)
                try:
                    pixels = load_pixels(ref, channels=pipeline.channels, min_side=pipeline.min_side,
                                         timeout=timeout, max_bytes=max_bytes)
                    tensors.append(pipeline(pixels))
                    slots.append(entry)
                except GraftError as e:
                    if strict:
                        raise
                    entry["error"] = str(e)
            if tensors:
                probs = probabilities(run_net(net, torch.stack(tensors).to(device), nhwc)).cpu()
                for entry, preds in zip(slots, rank(probs, classes, top_k)):
                    entry["predictions"] = preds
            speed = bar.tasks[0].speed
            bar.update(task, advance=len(chunk), rate=f"{speed:.1f} img/s" if speed else "")
    return results
