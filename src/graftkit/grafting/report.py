"""The transplant report: what happened to every target tensor and every source tensor.

Each target state_dict entry is `copied`, `adapted` (with how) or `left` at its
initial value (with why), with the matching pass that paired it; every source
tensor that went nowhere is listed as unused. `table()` is for people,
`to_json()` for tools and for the package metadata.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .units import shape_str

STATUSES = ("copied", "adapted", "left")
# BatchNorm's step counter only steers momentum in training: a missing one is harmless.
HARMLESS_ROLES = ("num_batches_tracked",)


@dataclass
class Entry:
    target: str
    source: str | None
    status: str                      # copied | adapted | left
    reason: str = ""                 # how it was adapted / why it was left
    matched_by: str | None = None    # exact | normalised | rule | structure | None
    shape: list[int] = field(default_factory=list)
    source_shape: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Unused:
    source: str
    shape: list[int]
    reason: str = "no target parameter matched it"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    entries: list[Entry] = field(default_factory=list)
    unused: list[Unused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    target: str = ""
    policy: str = "skip"

    def left(self, include_harmless: bool = False) -> list[Entry]:
        return [e for e in self.entries if e.status == "left"
                and (include_harmless or e.target.rpartition(".")[2] not in HARMLESS_ROLES)]

    def summary(self) -> dict[str, Any]:
        status = Counter(e.status for e in self.entries)
        passes = Counter(e.matched_by for e in self.entries if e.matched_by and e.status != "left")
        n = len(self.entries)
        moved = status["copied"] + status["adapted"]
        return {"target_tensors": n, "copied": status["copied"], "adapted": status["adapted"],
                "left": status["left"], "left_harmless": status["left"] - len(self.left()),
                "unused_source_tensors": len(self.unused),
                "transferred_fraction": round(moved / n, 6) if n else 0.0,
                "by_pass": dict(passes), "policy": self.policy}

    def warning(self, first: int = 3) -> str | None:
        """One line when any target parameter (not a harmless counter) is left at its initial value:
        a partial transplant must never pass silently."""
        left = self.left()
        if not left:
            return None
        names = ", ".join(e.target for e in left[:first]) + (", ..." if len(left) > first else "")
        return (f"{len(left)} of {len(self.entries)} target tensors left at their initial values ({names}); "
                f"the network will not compute what the source did (--strict makes this an error)")

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target,
                "parameters": [e.to_json() for e in self.entries],
                "unused": [u.to_json() for u in self.unused],
                "notes": list(self.notes), "summary": self.summary(),
                "warnings": [w for w in (self.warning(),) if w]}

    def table(self, console=None, limit: int | None = None, details: bool = True) -> None:
        """Print the report as rich tables (all rows unless `limit`). details=False prints a summary
        instead: the counts by status and by pass, and only the tensors not copied as they were."""
        from rich.console import Console
        from rich.table import Table
        console = console or Console()
        s = self.summary()
        colour = {"copied": "green", "adapted": "yellow", "left": "red"}
        title = f"transplant {self.source} -> {self.target}"
        rows = self.entries if details else [e for e in self.entries if e.status != "copied"]
        if not details:
            passes = ", ".join(f"{k} {v}" for k, v in sorted(s["by_pass"].items(), key=lambda kv: -kv[1]))
            console.print(f"{title}: {len(self.entries)} target tensors, by pass: {passes or 'none'}",
                          soft_wrap=True, highlight=False)
        if rows:
            t = Table(title=title if details else "not copied as they were", title_justify="left",
                      header_style="bold")
            for c in ("target", "shape", "status", "pass", "source", "reason"):
                t.add_column(c, overflow="fold")
            for e in rows[:limit]:
                t.add_row(e.target, shape_str(e.shape), f"[{colour[e.status]}]{e.status}[/]", e.matched_by or "",
                          e.source or "", e.reason)
            console.print(t)
        # a handful of unused source tensors is worth reading; hundreds (a source much larger than the target) are not
        if self.unused and (details or len(self.unused) <= 10):
            u = Table(title="unused source tensors", title_justify="left", header_style="bold")
            u.add_column("source", overflow="fold")
            u.add_column("shape")
            u.add_column("reason", overflow="fold")
            for x in self.unused[:limit]:
                u.add_row(x.source, shape_str(x.shape), x.reason)
            console.print(u)
        for note in self.notes:
            console.print(f"note: {note}")
        console.print(f"{s['copied']} copied, {s['adapted']} adapted, {s['left']} left "
                      f"({s['left_harmless']} harmless), {s['unused_source_tensors']} source tensors unused; "
                      f"{100 * s['transferred_fraction']:.1f}% of target tensors transferred"
                      + ("" if details else " (--table lists every tensor)"), soft_wrap=True, highlight=False)

    def __str__(self) -> str:
        s = self.summary()
        return (f"Report({s['copied']} copied, {s['adapted']} adapted, {s['left']} left, "
                f"{s['unused_source_tensors']} unused)")
