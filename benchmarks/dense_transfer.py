"""Does an ImageNet backbone help detection and segmentation? lite0 pretrained vs the same architecture
from random initialisation, same data, split, plan, iteration budget and seed.

Data: (1) the synthetic scenes (graftkit.tasks.write_scenes: real Fashion-MNIST items on generated
backgrounds; the layouts are synthetic), fixed train/val split; (2) the real nuclei image in
../shared/datasets/nuclei tiled into 128 px tiles, the rightmost column of tiles as val; ALL TILES COME
FROM ONE IMAGE, so the nuclei numbers are about one image, and are given for 3 seeds.

Each (data, backbone, task, seed) run trains for the same budget, counted in iterations (the machine
is shared, so seconds would favour whichever run met a quieter moment): --iters on the scenes,
--nuclei-iters on the nuclei, batch 8, 128 px, AdamW lr 1e-3 cosine, one thread; then evaluates once
on the val split: AP50 (pycocotools COCOeval) for the FCOS detector, mIoU (one confusion matrix over
the val set, mean over the classes present) for the FPN segmenter. Wall seconds are printed too.

    python benchmarks/dense_transfer.py                  # last line: JSON
    python benchmarks/dense_transfer.py --iters 60 --nuclei-iters 30 --nuclei-seeds 1   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from graftkit import tasks  # noqa: E402

NUCLEI = ROOT.parent / "shared" / "datasets" / "nuclei"


def run(task: str, pretrained: bool, data: Path, seed: int, iters: int, lr: float) -> dict:
    plan = tasks.task_plan(lr=lr)
    s = tasks.fit_task(task, "lite0", data / "train", data / "val", plan=plan, seed=seed, max_iter=iters,
                       pretrained=pretrained, val_every=0)
    v = s["val"]
    return {"score": v["ap50"] if task == "detect" else v["miou"], "iterations": s["iterations"],
            "train_seconds": s["train_seconds"], "ap": v.get("ap")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300, help="training iterations per run on the scenes")
    ap.add_argument("--nuclei-iters", type=int, default=60, help="training iterations per run on the nuclei")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nuclei-seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-nuclei", action="store_true")
    ap.add_argument("--skip-scenes", action="store_true", help="(run the two parts in two processes)")
    ap.add_argument("--backbones", default="pretrained,scratch", help="which of pretrained,scratch to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        scenes = Path(tmp) / "scenes"
        if not args.skip_scenes:
            tasks.write_scenes(scenes, train=args.train, val=args.val, seed=args.seed)
            result["scenes"] = {}
        which = [(n, n == "pretrained") for n in ("pretrained", "scratch") if n in args.backbones.split(",")]
        for name, pre in (() if args.skip_scenes else which):
            det = run("detect", pre, scenes, args.seed, args.iters, args.lr)
            seg = run("segment", pre, scenes, args.seed, args.iters, args.lr)
            result["scenes"][name] = {"ap50": round(det["score"], 4), "ap": round(det["ap"], 4),
                                      "miou": round(seg["score"], 4),
                                      "seconds": {"detect": det["train_seconds"], "segment": seg["train_seconds"]}}
            print(f"scenes {name}: {result['scenes'][name]}", flush=True)
        if not args.skip_nuclei and NUCLEI.is_dir():
            nuc = Path(tmp) / "nuclei"
            tasks.write_nuclei_tiles(nuc, NUCLEI)
            result["nuclei"] = {"note": "all tiles come from one real image", "seeds": list(range(args.nuclei_seeds))}
            for name, pre in which:
                runs = [(run("detect", pre, nuc, s, args.nuclei_iters, args.lr)["score"],
                         run("segment", pre, nuc, s, args.nuclei_iters, args.lr)["score"])
                        for s in range(args.nuclei_seeds)]
                ap50 = [round(a, 4) for a, _ in runs]
                miou = [round(m, 4) for _, m in runs]
                result["nuclei"][name] = {"ap50": round(statistics.mean(ap50), 4), "miou": round(statistics.mean(miou), 4),
                                          "ap50_per_seed": ap50, "miou_per_seed": miou}
                print(f"nuclei {name}: {result['nuclei'][name]}", flush=True)
    result["setup"] = {"iters": args.iters, "nuclei_iters": args.nuclei_iters, "batch": 8, "threads": args.threads, "train_scenes": args.train,
                       "val_scenes": args.val, "size": 128, "lr": args.lr, "seed": args.seed,
                       "wall_s": round(time.time() - t0, 1), "cpu_count": os.cpu_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
