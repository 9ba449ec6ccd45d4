"""`graft data ...`: index, check, split, pack, inspect, stats, demo-set (a thin layer over graftkit.data)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import err, out, print_json, print_table

data = typer.Typer(name="data", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                   help="Prepare image data: index, check, split, pack to RecordIO, inspect, statistics, demo set.")


@data.command("demo-set")
def demo_set(out_dir: Path = typer.Argument(..., metavar="DIR", help="folder to create (absent or empty)"),
             split: str = typer.Option("all", "--split", help="train, val, test or all (all: DIR/train, DIR/val, DIR/test)"),
             json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Write the built-in Fashion-MNIST demo subset as class sub-folders of PNG files."""
    from ..data.demo_set import write_demo_set
    counts = write_demo_set(out_dir, split)
    if json_:
        print_json({"out": str(out_dir), "images": counts})
    else:
        out.print(f"wrote {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
                  f"of 10 classes to {out_dir}")


@data.command("index")
def index_cmd(source: Path = typer.Argument(..., metavar="ROOT", help="folder of class sub-folders, or a CSV of path,label"),
              output: Path = typer.Option(..., "-o", "--output", help="NAME: writes NAME.lst and NAME.classes.json"),
              ext: Optional[List[str]] = typer.Option(None, "--ext", help="image extensions to include (repeatable)"),
              recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="include images in nested folders"),
              root: Optional[Path] = typer.Option(None, "--root", help="folder the CSV's paths are relative to"),
              shuffle: bool = typer.Option(False, "--shuffle", help="shuffle like im2rec (Python random, --seed)"),
              seed: int = typer.Option(100, "--seed", help="shuffle seed (im2rec uses 100)"),
              train_ratio: float = typer.Option(1.0, "--train-ratio", help="im2rec-style cut: NAME_train/_val.lst"),
              test_ratio: float = typer.Option(0.0, "--test-ratio", help="im2rec-style cut: NAME_test.lst"),
              json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Index images into an im2rec .lst (index, label, relative path) and save the class map."""
    from ..data.index import make_lists
    from ..data.lists import classes_path, load_classes, read_lst
    written = make_lists(source, output, root=root, exts=ext, recursive=recursive, shuffle=shuffle, seed=seed,
                         train_ratio=train_ratio, test_ratio=test_ratio)
    summary = {k: {"list": str(p), "classes": str(classes_path(p)), "images": len(read_lst(p))} for k, p in written.items()}
    classes = load_classes(classes_path(next(iter(written.values()))))["classes"]
    if json_:
        print_json({"lists": summary, "classes": classes})
        return
    for k, v in summary.items():
        out.print(f"{v['list']}: {v['images']} images")
    out.print(f"{len(classes)} classes saved in {next(iter(summary.values()))['classes']}: "
              + ", ".join(f"{i}={c}" for i, c in enumerate(classes[:20])) + (" ..." if len(classes) > 20 else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(data, name="data")
