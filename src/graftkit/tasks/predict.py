"""Predict with a trained task model: boxes or masks per image, drawn onto a PNG copy of each image.

    results = predict("run", ["a.png", "folder/"], out_dir="drawn")     # [{"input", "boxes"|"mask", "drawn"}]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import GraftError
from .data import IMAGE_EXTS, _load_rgb
from .train import WEIGHTS, load

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def is_task_model(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not (p.is_file() and p.suffix == ".safetensors"):
        return False
    try:
        from safetensors import safe_open
        with safe_open(str(p), "pt") as f:
            return "graftkit.task" in (f.metadata() or {})
    except Exception:
        return False


def _files(inputs: list[str]) -> list[Path]:
    files = []
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            files.append(p)
        else:
            raise GraftError(f"{i}: no such image or folder", "give image files or folders")
    if not files:
        raise GraftError("no images among the inputs", "give image files or folders")
    return files


def probe_images(model: str | os.PathLike, inputs: list[str]) -> list[torch.Tensor]:
    """Images resized to the task model's input (3 x S x S in [0, 1]), as predict feeds them."""
    from safetensors import safe_open
    p = Path(model)
    with safe_open(str(p / WEIGHTS if p.is_dir() else p), "pt") as f:
        size = json.loads(f.metadata()["graftkit.task"])["size"]
    return [torch.nn.functional.interpolate(_load_rgb(f)[None].float() / 255, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)[0] for f in _files(inputs)]


@torch.no_grad()
def predict(model: str | os.PathLike, inputs: list[str], out_dir: str | os.PathLike | None = None,
            score_thresh: float = 0.3, trust: bool = False) -> list[dict[str, Any]]:
    net = load(model, trust=trust)
    size = net.build_args["size"]
    classes = net.classes
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for f in _files(inputs):
        img = _load_rgb(f)
        h, w = img.shape[-2:]
        x = torch.nn.functional.interpolate(img[None].float() / 255, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        res: dict[str, Any] = {"input": str(f)}
        if net.task == "detect":
            det = net([x[0]])[0]
            keep = det["scores"] >= score_thresh
            scale = torch.tensor([w / size, h / size, w / size, h / size])
            boxes = (det["boxes"][keep] * scale).tolist()
            res["boxes"] = [{"class": classes[int(lab)], "score": round(float(s), 4), "box": [round(v, 1) for v in b]}
                            for b, s, lab in zip(boxes, det["scores"][keep], det["labels"][keep])]
            draw = ImageDraw.Draw(pil)
            for b in res["boxes"]:
                colour = PALETTE[classes.index(b["class"]) % len(PALETTE)]
                draw.rectangle(b["box"], outline=colour, width=2)
                draw.text((b["box"][0] + 2, b["box"][1] + 1), f"{b['class']} {b['score']:.2f}", fill=colour)
        else:
            logits = net(x)
            pred = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear",
                                                   align_corners=False).argmax(1)[0].numpy()
            counts = np.bincount(pred.ravel(), minlength=len(classes))
            res["classes"] = {classes[k]: round(float(c) / pred.size, 4) for k, c in enumerate(counts) if c}
            overlay = np.asarray(pil).astype(np.float32)
            colours = np.array([(0, 0, 0)] + PALETTE * (1 + len(classes) // len(PALETTE)), np.float32)[:len(classes)]
            fg = pred > 0
            overlay[fg] = 0.5 * overlay[fg] + 0.5 * colours[pred[fg]]
            pil = Image.fromarray(overlay.astype(np.uint8))
            if out is not None:
                mask_path = out / f"{f.stem}.mask.png"
                Image.fromarray(pred.astype(np.uint8), "L").save(mask_path)
                res["mask"] = str(mask_path)
        if out is not None:
            drawn = out / f"{f.stem}.png"
            pil.save(drawn)
            res["drawn"] = str(drawn)
        results.append(res)
    return results
