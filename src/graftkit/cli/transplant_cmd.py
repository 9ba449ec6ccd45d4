"""`graft transplant SRC --into TARGET -o OUT.safetensors`: graft weights, report every tensor."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import err, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def transplant(
        src: str = typer.Argument(..., help="weights: any readable checkpoint file, a built-in name, a spec "
                                            "(timm:NAME, torchvision:NAME, file.py:fn) or a graftkit package"),
        into: str = typer.Option(..., "--into", help="target network: timm:NAME[?k=v], torchvision:NAME, "
                                                     "file.py:factory, a built-in name or a package"),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="the package to write (.safetensors)"),
        rule: List[str] = typer.Option([], "--rule", help="rename source tensors: 'REGEX=>REPLACEMENT' (repeatable)"),
        policy: str = typer.Option("skip", "--policy", help="shape clashes: skip|classes|channels|widen|slice"),
        strict: bool = typer.Option(False, "--strict", help="fail if any target tensor is left at initialisation"),
        dry_run: bool = typer.Option(False, "--dry-run", help="report only, write nothing"),
        json_: bool = typer.Option(False, "--json", help="print the report as JSON"),
        table: bool = typer.Option(False, "--table", "--details",
                                   help="print every target tensor (by default: the counts, and the tensors "
                                        "not copied as they were)"),
        trust: bool = typer.Option(False, "--trust", help="allow unpickling, and building a package whose architecture is a Python file (only for files you made)"),
        classes: Optional[str] = typer.Option(None, "--classes",
                                              help="the target's class names: a text file (one per line) or "
                                                   "a comma-separated list; --policy classes copies their rows"),
        seed: int = typer.Option(0, "--seed", help="random seed of the widen policy"),
        keras_flatten: str = typer.Option("chw", "--keras-flatten",
                                          help="a Keras Dense after Flatten: chw reorders its columns for a target "
                                               "that flattens NCHW (nn.Flatten); hwc keeps Keras's order"),
    ) -> None:
        """Copy every source tensor that fits into TARGET (by name, normalised name, rules, then structure)."""
        from ..api import transplant as graft
        from ..errors import GraftError
        from ..package import save

        if output is None and not dry_run:
            raise GraftError("no output file given", "add -o OUT.safetensors, or --dry-run to only see the report")
        if output is not None and (output.is_dir() or output.suffix != ".safetensors"):
            raise GraftError(f"{output}: the output must be a .safetensors file", "name it OUT.safetensors")
        target_classes = _class_names(classes) if classes else None
        module, report = graft(src, into, rules=rule, policy=policy, strict=strict, class_names=target_classes,
                               trust=trust, seed=seed, keras_flatten=keras_flatten)
        if json_:
            print_json(report.to_json())
        else:
            report.table(console=err, details=table)
        if report.warning():  # without --strict a partial result still says so, in one line on stderr
            err.print(f"[yellow]warning:[/] {report.warning()}", soft_wrap=True, highlight=False)
        if dry_run:
            return
        save(module, output)  # the metadata (classes, preprocessing, provenance, report) came with the module
        err.print(f"wrote {output}")


def _class_names(value: str) -> list[str]:
    """--classes: a file with one name per line, or names separated by commas."""
    from ..errors import GraftError
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise GraftError(f"--classes {value!r} names no class", "give a file with one name per line or 'a,b,c'")
    if len(set(names)) != len(names):
        raise GraftError(f"--classes {value!r} names a class twice", "class names must be unique")
    return names
