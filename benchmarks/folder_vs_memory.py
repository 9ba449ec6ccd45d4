"""Per-epoch training time from an image folder against the same images as arrays in memory, in one run.

    python benchmarks/folder_vs_memory.py [--images DIR] [--n 500] [--epochs 3] [--model lite0]

Without --images: the built-in Fashion-MNIST subset (`graft data demo-set`, 28x28 gray PNGs; trained
at 112 px, the `auto` size). With --images DIR (class sub-folders of photos, e.g. ants_bees): every
image is decoded, its shorter side resized to --side and centre-cropped square, and written back as
PNG into a temporary class folder, so that the folder and the arrays hold the same pixels.

Every contestant is `graftkit.train.fit` (what `graft train` runs) with the same model, seed, plan
(`--epochs`, batch 32, the default `light` augmentation, size auto, no validation):

  memory          ImageDataset.from_arrays(images, labels): pixels in RAM, no decoding (the target)
  folder          the PNG class folder with the defaults: decoded once into RAM when it fits
                  (data.cache_ram 25%), workers `auto`
  folder-stream   the PNG class folder decoded every epoch, 0 workers: the path before the memory
                  cache (data.cache_ram 0, num_workers 0), the baseline
  memory-0        the arrays with 0 workers (the old default), so `before` compares like with like

Per-epoch seconds are the mean of epochs 2..E (epoch 1 holds warm-up and the worker measurement),
from each run's own clock (log.csv); runs go one after another in a fresh output folder.
The target is folder / memory <= 1.1. The last line is JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from graftkit.data import ImageDataset
from graftkit.data.demo_set import write_demo_set
from graftkit.train import fit
from graftkit.tune import Plan


def _square(path: Path, side: int) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = side / min(w, h)
    img = img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)))


def make_data(tmp: Path, images: Path | None, n: int, side: int) -> tuple[Path, np.ndarray, np.ndarray, list[str]]:
    """(PNG class folder, the same images as a uint8 array, labels, classes)."""
    if images is None:
        write_demo_set(tmp / "demo", "train")  # the split's class folders, straight into the folder given
        src = tmp / "demo"
    else:
        src = images
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(p, k) for k, c in enumerate(classes) for p in sorted((src / c).iterdir()) if p.is_file()]
    if n and n < len(files):  # an even subset, every class kept
        files = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    folder = tmp / "png"
    arrays, labels = [], []
    for i, (p, k) in enumerate(files):
        a = np.asarray(Image.open(p)) if images is None else _square(p, side)
        (folder / classes[k]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / classes[k] / f"{i:05d}.png")
        arrays.append(a)
        labels.append(k)
    return folder, np.stack(arrays), np.array(labels), classes


def run(name: str, model: str, train, classes, out: Path, epochs: int, **data) -> dict:
    plan = Plan.load(None, epochs=epochs, batch_size=32, **data)
    t0 = time.perf_counter()
    s = fit(model, train, out_dir=out / name, plan=plan, classes=classes, seed=0, quiet=True)
    total = time.perf_counter() - t0
    with open(out / name / "log.csv") as f:  # the run's clock at each epoch's end
        ends = [0.0] + [float(row["seconds"]) for row in csv.DictReader(f)]
    per_epoch = [b - a for a, b in zip(ends, ends[1:])]
    steady = per_epoch[1:] or per_epoch
    loading = s.get("loading", {})
    return {"epoch_s": round(sum(steady) / len(steady), 2), "epochs_s": [round(x, 2) for x in per_epoch],
            "total_s": round(total, 1), "cached": bool(loading.get("train", {}).get("cached")),
            "workers": loading.get("workers"), "train_top1": round(s["last"]["train_top1"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="class sub-folders of photos (default: the Fashion-MNIST subset)")
    ap.add_argument("--n", type=int, default=500, help="images used (an even subset; 0: all)")
    ap.add_argument("--side", type=int, default=256, help="square side the --images photos are stored at")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--only", nargs="*", help="contestants to run (default: all four)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="graftkit-fvm-"))
    folder, arrays, labels, classes = make_data(tmp, args.images, args.n, args.side)
    memory = lambda: ImageDataset.from_arrays(arrays, labels, classes=classes)  # noqa: E731
    contestants = {
        "memory": (memory, {}),
        "folder": (lambda: folder, {}),
        "folder-stream": (lambda: folder, {"cache_ram": "0", "num_workers": 0}),
        "memory-0": (memory, {"num_workers": 0}),
    }
    names = args.only or list(contestants)
    res = {}
    for name in names:
        make, data = contestants[name]
        res[name] = run(name, args.model, make(), classes, tmp / "runs", args.epochs, **data)
        print(f"  {name}: {res[name]}", file=sys.stderr, flush=True)

    def ratio(a, b):
        return round(res[a]["epoch_s"] / res[b]["epoch_s"], 3) if a in res and b in res else None

    print(f"{len(labels)} images {arrays.shape[1]}x{arrays.shape[2]}, model {args.model}, {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")
    print(f"{'contestant':16s} {'s/epoch':>8s} {'cached':>7s} {'workers':>8s}  epochs")
    for name, r in res.items():
        print(f"{name:16s} {r['epoch_s']:8.2f} {str(r['cached']):>7s} {str(r['workers']):>8s}  {r['epochs_s']}")
    result = {"after_ratio": ratio("folder", "memory"), "before_ratio": ratio("folder-stream", "memory-0"),
              "stream_vs_cached": ratio("folder-stream", "folder"), "images": int(len(labels)),
              "model": args.model, "contestants": res}
    print(f"folder / memory: {result['after_ratio']} (target <= 1.1); before the cache (streamed, 0 workers): "
          f"{result['before_ratio']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
