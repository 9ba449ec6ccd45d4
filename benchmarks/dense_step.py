"""Train-step overhead of `graftkit.tasks.fit_task` (detection) against a bare torchvision detection loop.

Both train the same FCOS (lite0 backbone, built from the same seed) on the same synthetic scenes, with
the same DataLoader settings and AdamW; the bare loop is torchvision's reference step
(`loss = sum(model(images, targets).values()); zero_grad; backward; step`). graftkit adds the plan's
lr policy and parameter groups, the NaN guard, its callbacks and bookkeeping. Each contender's seconds are
the wall time of a whole run of W + N iterations (build, batch loading, steps, callbacks) minus that of
a run of W, so both are measured the same way; the contenders alternate R times and each keeps its best
(the machine is shared). Last line: JSON with the ratio.

    python benchmarks/dense_step.py [--iters 20] [--rounds 3]
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
from torch.utils.data import DataLoader  # noqa: E402

from graftkit import tasks  # noqa: E402
from graftkit.tasks import data as tdata  # noqa: E402


def bare(train: Path, iters: int, size: int, batch: int) -> None:
    boxes = tasks.open_boxes(train, say=lambda m: None)
    model = tasks.build("detect", "lite0", len(boxes.classes), size=size, seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(tdata.BoxSet(boxes, size, train=True), batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0), collate_fn=tdata.collate_pairs)
    it = 0
    while True:
        for x, y in loader:
            loss = sum(model(list(x), list(y)).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it == iters:
                return


def ours(train: Path, iters: int, size: int, batch: int) -> None:
    plan = tasks.task_plan(batch_size=batch, lr=1e-3)
    tasks.fit_task("detect", "lite0", train, plan=plan, max_iter=iters, size=size, seed=0)


def extra(contender, train: Path, iters: int, warm: int, size: int, batch: int) -> float:
    """Wall seconds of a whole run (build, loading, steps and, for graftkit, every callback) of warm + iters
    iterations minus those of one of warm: what the extra iterations cost, measured the same way for both."""
    def wall(n: int) -> float:
        t = time.perf_counter()
        contender(train, n, size, batch)
        return time.perf_counter() - t
    return wall(warm + iters) - wall(warm)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tasks.write_scenes(Path(tmp) / "s", train=64, val=1, seed=0)
        train = Path(tmp) / "s" / "train"
        times = {"bare": [], "graftkit": []}
        for r in range(args.rounds):
            times["bare"].append(extra(bare, train, args.iters, args.warm, args.size, args.batch))
            times["graftkit"].append(extra(ours, train, args.iters, args.warm, args.size, args.batch))
            print(f"round {r + 1}: bare {times['bare'][-1]:.2f} s, graftkit {times['graftkit'][-1]:.2f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({"iters": args.iters, "bare_s": round(best["bare"], 3), "graftkit_s": round(best["graftkit"], 3),
                      "ratio": round(best["graftkit"] / best["bare"], 4), "all": times}))


if __name__ == "__main__":
    main()
