"""Which head? Every detection head (FCOS, RetinaNet, Faster R-CNN) and segmentation head (FPN,
DeepLabV3-style ASPP + decoder) on the same lite0 ImageNet backbone, data, plan, iteration budget and seed.

Data: the synthetic scenes (graftkit.tasks.write_scenes: real Fashion-MNIST items on generated
backgrounds; the layouts are synthetic), fixed train/val split, 128 px. Each run trains for --iters
iterations (batch 8, AdamW lr 1e-3 cosine, one thread; iterations, not seconds, because the machine is
shared), then evaluates once on val: AP50 / AP (pycocotools COCOeval) for detectors, mIoU (one confusion
matrix over the val set, mean over the classes present) for segmenters. A short budget: it ranks the heads
at that budget, not at convergence.

    python benchmarks/dense_heads.py                       # last line: JSON {"detect": {head: {...}}, "segment": ...}
    python benchmarks/dense_heads.py --heads fcos,fpn --iters 20
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from graftkit import tasks  # noqa: E402
from graftkit.tasks.heads import DET_HEADS, SEG_HEADS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heads", default=",".join([*DET_HEADS, *SEG_HEADS]))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"detect": {}, "segment": {}, "iters": args.iters, "train": args.train, "val": args.val,
                    "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scenes"
        tasks.write_scenes(data, train=args.train, val=args.val, seed=args.seed)
        for head in args.heads.split(","):
            task = "detect" if head in DET_HEADS else "segment"
            t0 = time.perf_counter()
            s = tasks.fit_task(task, "lite0", data / "train", data / "val", plan=tasks.task_plan(lr=args.lr),
                               seed=args.seed, max_iter=args.iters, val_every=0, head=head)
            v = s["val"]
            row = ({"ap50": round(v["ap50"], 4), "ap": round(v["ap"], 4)} if task == "detect"
                   else {"miou": round(v["miou"], 4)})
            row.update(train_seconds=s["train_seconds"], wall_seconds=round(time.perf_counter() - t0, 1),
                       new_parameters=s["transfer"]["new_parameters"])
            result[task][head] = row
            print(f"{task} {head}: {row}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
