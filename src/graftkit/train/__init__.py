"""Training: the solver, the loop with exact resume, checkpoints, metrics, logs, DDP.

    summary = graftkit.train.fit("lite0", "data/train", "data/val", out_dir="runs/a", epochs=5)
"""
from .callbacks import RunInterrupted
from .loop import evaluate, fit
from .solver import LRPolicy, make_optimizer

__all__ = ["fit", "evaluate", "RunInterrupted", "LRPolicy", "make_optimizer"]
