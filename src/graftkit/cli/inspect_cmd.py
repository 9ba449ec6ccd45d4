"""`graft inspect FILE...`: what a model file holds."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .common import human_count, print_json, print_table, out


def register(app: typer.Typer) -> None:
    @app.command()
    def inspect(files: List[Path] = typer.Argument(..., help="model files of any supported format"),
                json_: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
                trust: bool = typer.Option(False, "--trust",
                                           help="allow unpickling arbitrary objects (only for files you made)")) -> None:
        """Show the tensors a model file holds: name, source layer, kind, shape, dtype, count."""
        from .. import formats
        sets = [formats.read(f, trust=trust) for f in files]
        if json_:
            docs = [s.to_json() for s in sets]
            print_json(docs[0] if len(docs) == 1 else {"files": docs})
            return
        for s in sets:
            rows = [(r.name, r.layer, r.kind, "x".join(map(str, r.tensor.shape)) or "scalar",
                     str(r.tensor.dtype).removeprefix("torch."), human_count(r.tensor.numel()))
                    for r in s.records.values()]
            print_table(f"{s.source} ({s.format})", ["name", "layer", "kind", "shape", "dtype", "count"], rows,
                        justify={"count": "right"})
            t = s.totals()
            extra = "".join(f", {k}={v}" for k, v in s.meta.items() if k != "graftkit" and not isinstance(v, (dict, list)))
            out.print(f"{t['tensors']} tensors in {t['layers']} layers, {human_count(t['parameters'])} values, "
                      f"{t['bytes'] / 1e6:.2f} MB{extra}")
