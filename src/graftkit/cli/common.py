"""Output helpers shared by the CLI commands: JSON, tables, one-line errors."""
from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

out = Console()                 # results (stdout)
err = Console(stderr=True)      # messages, progress (stderr)


def print_json(obj: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else on it."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                justify: dict[str, str] | None = None) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        table.add_column(c, justify=(justify or {}).get(c, "left"), overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    out.print(table)


def human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
