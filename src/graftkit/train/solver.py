"""The solver: a torch optimizer over the plan's parameter groups and the lr policy as a pure function.

The learning rate depends only on the global iteration, never on hidden scheduler
state, so a resumed run recomputes exactly the lr the uninterrupted run used.
Policies follow Caffe's definitions (iterations counted from 0, T = total iterations):
fixed 1; step gamma^floor(it/stepsize); multistep gamma^(milestones passed);
exp gamma^it; inv (1 + gamma*it)^-power; poly (1 - it/T)^power; plus cosine and
one-cycle; all times a linear warm-up.
"""
from __future__ import annotations

import bisect
import math

import torch

from ..errors import GraftError
from ..tune.plan import Solver

_TORCH = {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam", "rmsprop": "RMSprop", "adagrad": "Adagrad",
          "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam"}


def make_optimizer(groups: list[dict], solver: Solver) -> torch.optim.Optimizer:
    name = solver.optimizer
    cls = getattr(torch.optim, _TORCH[name])
    kw: dict = {"lr": solver.lr}
    if name == "sgd":
        kw.update(momentum=solver.momentum, nesterov=solver.nesterov and solver.momentum > 0)
    elif name == "rmsprop":
        kw.update(momentum=solver.momentum)
    elif name in ("adamw", "adam", "adamax", "nadam", "radam"):
        kw.update(betas=tuple(solver.betas))
    try:
        return cls(groups, **kw)
    except ValueError as e:
        raise GraftError(f"solver: torch refused the {name} settings: {e}") from None


class LRPolicy:
    """lr factor (times each group's base lr) at a global iteration."""

    def __init__(self, solver: Solver, iters_per_epoch: int, total_iters: int):
        self.s = solver
        self.ipe = max(1, iters_per_epoch)
        self.total = max(1, total_iters)
        self.warmup = solver.warmup_iters if solver.warmup_iters is not None else \
            int(round(solver.warmup_epochs * self.ipe))
        if solver.policy == "onecycle":
            self.warmup = 0  # one-cycle has its own rise
        self.step = solver.step_iters or (solver.step_epochs and max(1, int(round(solver.step_epochs * self.ipe))))
        self.milestones = sorted(solver.milestone_iters or [int(round(m * self.ipe)) for m in solver.milestones])

    def factor(self, it: int, done: float | None = None) -> float:
        """`done` (0..1), when given, is the spent fraction of a time budget: the decaying policies
        (poly, cosine, one-cycle) then follow it, or the iteration cap when that comes first, so they
        end exactly at the budget whatever the machine's speed (Li, Yumer & Ramanan, "Budgeted
        Training", ICLR 2020). Warm-up and the step policies stay on iterations."""
        s, T = self.s, self.total
        w = min(self.warmup, T - 1)
        warm = s.warmup_factor + (1 - s.warmup_factor) * it / w if it < w else 1.0
        p = s.policy
        if done is not None and p in ("poly", "cosine", "onecycle"):
            # the same formulas on a fine grid of virtual iterations, driven by the fraction done
            T, w = 1_000_000, 0
            it = int(min(1.0, max(done, it / self.total)) * T)
        if p == "fixed":
            f = 1.0
        elif p == "step":
            f = s.gamma ** (it // self.step)
        elif p == "multistep":
            f = s.gamma ** bisect.bisect_right(self.milestones, it)
        elif p == "exp":
            f = s.gamma ** it
        elif p == "inv":
            f = (1 + s.gamma * it) ** (-s.power)
        elif p == "poly":
            f = max(0.0, 1 - it / T) ** s.power
            f = s.min_lr_factor + (1 - s.min_lr_factor) * f
        elif p == "cosine":
            t = min(1.0, max(0.0, (it - w) / max(1, T - w)))
            f = s.min_lr_factor + (1 - s.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        elif p == "onecycle":
            rise = max(1, int(s.pct_start * T))
            lo = s.warmup_factor
            if it < rise:
                f = lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * it / rise))
            else:
                t = min(1.0, (it - rise) / max(1, T - rise))
                f = s.min_lr_factor + (1 - s.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        else:  # validated by the plan
            raise GraftError(f"unknown lr policy {p!r}")
        return f * warm

    def apply(self, optimizer: torch.optim.Optimizer, it: int, done: float | None = None) -> float:
        lr = self.s.lr * self.factor(it, done)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        return lr
