"""Training checkpoints: everything needed to continue a run exactly, written atomically.

One file, `RUN_DIR/checkpoint.pt`, saved with torch.save and read back with
`weights_only=True` (tensors, numbers, strings, lists and dicts only: no pickled
code). It holds the model and optimizer state, the position in the run (epoch,
batch within the epoch, global iteration), the history, and the RNG states of
torch, numpy and Python, so a resumed run draws the same random numbers.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import GraftError

FORMAT = "graftkit.checkpoint"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically: the previous one stays intact until the new one is complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{path}: no checkpoint to resume from", "run without --resume to start the run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GraftError(f"{path}: the checkpoint cannot be read ({type(e).__name__})",
                         "it is corrupt; start again without --resume in a new run folder") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GraftError(f"{path}: not a graftkit training checkpoint")
    return state
