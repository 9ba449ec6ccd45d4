"""Progress bars for long work: rate and ETA, quiet when not on a terminal."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)

T = TypeVar("T")
console = Console(stderr=True)


def make_progress(unit: str = "it", disable: bool | None = None) -> Progress:
    """A rich Progress showing count, rate (`unit`/s) and ETA, drawn on stderr."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it",
          disable: bool | None = None) -> Iterator[T]:
    """Iterate over `items` with a progress bar (rate in `unit`/s and ETA)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress(unit, disable) as progress:
        task = progress.add_task(description, total=total, rate="")
        for item in items:
            yield item
            speed = progress.tasks[0].speed
            progress.update(task, advance=1, rate=f"{speed:.1f} {unit}/s" if speed else "")
