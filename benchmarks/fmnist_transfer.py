"""Fashion-MNIST transfer through the user's path: does ImageNet pretraining help on data far from ImageNet?

100 training images per class (stratified, seeded) from the Debian package `dataset-fashion-mnist`, written
as PNG class folders, and the full 10,000-image test set as PNG folders too. Each contestant is one fresh
`graft train --model lite0 --train DIR -o RUN --time-budget B --strategy S` process with its own fresh
feature cache, then `graft evaluate RUN/best.safetensors TEST`:
    default   no strategy given (auto: graftkit measures and chooses; the choice is printed)
    probe     a linear probe on the final features (the classic "features + linear classifier")
    scratch   the same architecture from random initialisation, same plan and budget
Last line: JSON with test top-1, training seconds and epochs of each, and the default's margin over scratch.
The same runs as `python benchmarks/strategies.py --sets fmnist --only auto,probe,scratch`; this script
keeps the transfer question in one command.

    python benchmarks/fmnist_transfer.py [--budget 300] [--only default,probe,scratch] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from strategies import graft, write_fmnist

CONTESTANTS = {"default": None, "probe": "probe", "scratch": "scratch"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=300.0, help="--time-budget of each graft train (seconds)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--only", default=",".join(CONTESTANTS))
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp folder)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="graft-fmnist-"))
    train, test = write_fmnist(work, args.per_class, args.test_limit)
    results = {}
    for name in args.only.split(","):
        run = work / "runs" / f"fmnist-{name}"
        shutil.rmtree(run, ignore_errors=True)
        env = {**os.environ, "GRAFTKIT_CACHE": str(run / "cache")}
        strategy = ["--strategy", CONTESTANTS[name]] if CONTESTANTS[name] else []
        summary, seconds = graft("train", "--model", "lite0", "--train", train, "-o", run, "--time-budget",
                                 args.budget, *strategy, env=env)
        ev, _ = graft("evaluate", run / "best.safetensors", test, env=env)
        results[name] = {"top1": round(ev["top1"], 4), "train_s": round(seconds, 1), "epochs": summary["epochs"],
                         "chosen": summary["strategy"]["chosen"], "test_images": ev["n"]}
        print(f"{name:8s} ({results[name]['chosen']}) test top-1 {ev['top1']:.4f}, train {seconds:.0f} s, "
              f"{summary['epochs']} epochs", flush=True)
    if "default" in results and "scratch" in results:
        results["default_minus_scratch"] = round(results["default"]["top1"] - results["scratch"]["top1"], 4)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
