"""Training-step cost: graftkit's `fit` loop vs a bare PyTorch loop, same model, batch and optimiser, in one run.

    python benchmarks/train_step.py [--model lite0] [--size 112] [--batch 32] [--steps 12] [--warmup 3] [--rounds 3]
        [--threads N] [--clock wall|cpu]

Both sides train the same network (the built-in `lite0` with a new 10-class head, made by
graftkit.tune.apply under the default plan), with AdamW over the same parameter groups
(the plan's lr/decay multipliers) and cross-entropy with the same label smoothing, on the
same in-memory images (random, --size px, pre-made tensors: no decoding in the measurement).

  graftkit  graftkit.train.fit itself (one epoch, max_iter = warm-up + steps + 1, no validation):
            lr policy, label check, plan loss, NaN/Inf guard, metrics, TensorBoard, progress bar
  bare      for x, y in DataLoader(ds, batch_size, shuffle=True):
                opt.zero_grad(); loss = crit(model(x), y); loss.backward(); opt.step()

The two loops run interleaved, step by step, in one process: whenever graftkit's loop starts
fetching a batch, the dataset first runs one bare step (timed on its own), so each graftkit
step has a bare step right beside it and load from other processes hits both alike. A
graftkit step is the time from the end of that bare step to the start of the next batch's
fetch: its own batching, lr, forward, loss, checks, backward, optimiser step and bookkeeping,
and nothing outside the loop (model loading, end-of-epoch files). The ratio is the median,
over all pairs of all rounds (a fresh fit each), of graftkit step / bare step. On a busy
machine `--clock cpu` times the main thread's CPU seconds with one torch thread, which other
processes disturb far less than wall time. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from graftkit.models import resolve
from graftkit.train import fit
from graftkit.tune import Plan, apply

CLASSES = [f"c{i}" for i in range(10)]
CLOCK = [time.perf_counter]  # or time.thread_time (--clock cpu)


class Images(Dataset):
    """n (image, label) pairs drawn from a small pool of tensors; `on_batch` runs as each batch starts."""

    def __init__(self, n: int, size: int, batch: int, on_batch=None, pool: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.rand(pool, 3, size, size, generator=g)
        self.targets = [i % len(CLASSES) for i in range(n)]
        self.classes = CLASSES
        self.batch, self.on_batch, self.calls = batch, on_batch, 0
        self.starts: list[tuple[float, float]] = []  # (fetch began, on_batch done) per batch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        if self.on_batch is not None and self.calls % self.batch == 0:
            t0 = CLOCK[0]()
            self.on_batch()
            self.starts.append((t0, CLOCK[0]()))
        self.calls += 1
        return self.pool[i % len(self.pool)], self.targets[i]


def _plan(args) -> Plan:
    return Plan.load(**{"solver.optimizer": "adamw", "solver.batch_size": args.batch,
                        "solver.max_iter": args.warmup + args.steps + 1, "data.size": args.size})


class Bare:
    """The bare PyTorch loop, one step per call, on the same network, parameter groups and batches."""

    def __init__(self, args, seed: int):
        plan = _plan(args)
        torch.manual_seed(seed)
        self.model, tuning = apply(resolve(args.model), plan, CLASSES)
        self.model.train()
        self.opt = torch.optim.AdamW(tuning.param_groups(self.model, plan.solver.lr, plan.solver.weight_decay),
                                     lr=plan.solver.lr, betas=tuple(plan.solver.betas))
        self.crit = nn.CrossEntropyLoss(label_smoothing=plan.solver.label_smoothing)
        n = (args.warmup + args.steps + 2) * args.batch
        self.batches = iter(DataLoader(Images(n, args.size, args.batch), batch_size=args.batch, shuffle=True))
        self.seconds: list[float] = []

    def step(self) -> None:
        t0 = CLOCK[0]()
        x, y = next(self.batches)
        self.opt.zero_grad()
        loss = self.crit(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.seconds.append(CLOCK[0]() - t0)


def run_round(args, out: Path, k: int) -> tuple[list[float], list[float]]:
    """(graftkit step seconds, bare step seconds) of the timed steps of one fit, paired."""
    bare = Bare(args, k)
    ds = Images((args.warmup + args.steps + 2) * args.batch, args.size, args.batch, on_batch=bare.step)
    fit(args.model, ds, None, out_dir=out / f"run{k}", plan=_plan(args), seed=k, quiet=True, device="cpu")
    need = args.warmup + args.steps + 1
    if len(ds.starts) < need:
        raise SystemExit(f"graftkit's loop fetched {len(ds.starts)} batches, {need} expected")
    s = ds.starts[args.warmup:need]
    graftkit = [b[0] - a[1] for a, b in zip(s, s[1:])]
    return graftkit, bare.seconds[args.warmup + 1:need]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the main thread's CPU seconds, with 1 torch thread (steady on a busy machine)")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        CLOCK[0], args.threads = time.thread_time, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    g_all, b_all, ratios, per_round = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        for k in range(args.rounds):
            g, b = run_round(args, Path(d), k)
            g_all += g
            b_all += b
            ratios += [x / y for x, y in zip(g, b)]
            per_round.append(statistics.median(g) / statistics.median(b))
            print(f"round {k + 1}: median step graftkit {statistics.median(g) * 1e3:.1f} ms, "
                  f"bare {statistics.median(b) * 1e3:.1f} ms, median ratio "
                  f"{statistics.median(x / y for x, y in zip(g, b)):.3f}", file=sys.stderr)
    result = {"graftkit_step_s": round(statistics.median(g_all), 5), "bare_step_s": round(statistics.median(b_all), 5),
              "ratio": round(statistics.median(ratios), 4), "ratio_of_sums": round(sum(g_all) / sum(b_all), 4),
              "ratio_of_round_medians": round(statistics.median(per_round), 4),
              "graftkit_min_s": round(min(g_all), 5), "bare_min_s": round(min(b_all), 5),
              "model": args.model, "size": args.size, "batch": args.batch, "steps": args.steps,
              "rounds": args.rounds, "threads": torch.get_num_threads(), "clock": args.clock, "device": "cpu"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
