"""`graft report RUN_DIR`: the HTML report of a run (graftkit.report)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err, out


def register(app: typer.Typer) -> None:
    @app.command()
    def report(run_dir: Path = typer.Argument(..., help="a run folder written by `graft train -o`"),
               data: Optional[Path] = typer.Option(None, "--data", help="data to show errors on (default: the run's validation data)"),
               output: Optional[Path] = typer.Option(None, "-o", "--out", help="the HTML file (default RUN_DIR/report.html)"),
               cache: Optional[Path] = typer.Option(None, "--cache", help="feature cache folder (default ~/.cache/graftkit/features)"),
               trust: bool = typer.Option(False, "--trust", help="build a package whose architecture is a Python file (runs its code)")) -> None:
        """Curves, per-class errors, top losses with Grad-CAM, calibration (the temperature is fitted on the
        validation data and stored in best.safetensors) and a data audit, as one self-contained HTML page
        with report.json and audit.json beside it."""
        from ..report import run_report
        done = run_report(run_dir, data, out=output, trust=trust, cache_dir=cache, log=lambda m: err.print(m, soft_wrap=True))
        out.print(f"wrote {done['files']['html']} (+ " + ", ".join(Path(p).name for k, p in done["files"].items() if k != "html") + ")", soft_wrap=True)
