"""`graft demo`: fine-tune the built-in lite0 on the shipped Fashion-MNIST subset, end to end."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import err, out


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(out_dir: Path = typer.Option(Path("graft-demo"), "-o", "--out", help="the run folder to create"),
             time_budget: float = typer.Option(300.0, "--time-budget", min=1.0, help="seconds of training at most"),
             seed: int = typer.Option(0, "--seed")) -> None:
        """Write the demo data, index, check and pack it, fine-tune lite0, evaluate, predict and report."""
        from ..serve.demo import run_demo
        doc = run_demo(out_dir, time_budget=time_budget, seed=seed, say=lambda m: err.print(m, soft_wrap=True))
        out.print(f"test top-1 {doc['test_top1']:.2%} on {doc['test_images']} held-out images after "
                  f"{doc['train_seconds']} s of training ({doc['seconds']['total']:.0f} s in all)", soft_wrap=True)
        for name, path in doc["files"].items():
            out.print(f"  {name:14} {out_dir / path}", soft_wrap=True)
