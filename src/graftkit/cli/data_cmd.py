"""`graft data ...`: index, check, split, pack, inspect, stats, demo-set (a thin layer over graftkit.data)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import out, print_json, print_table

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


@data.command("check")
def check_cmd(source: Path = typer.Argument(..., metavar="LIST|ROOT", help="a .lst / .csv list or a folder of class sub-folders"),
              json_: bool = typer.Option(False, "--json", help="print JSON"),
              fix: Optional[Path] = typer.Option(None, "--fix", metavar="OUT.lst",
                                                 help="write a clean list (problems dropped, labels 0..K-1)"),
              root: Optional[Path] = typer.Option(None, "--root", help="folder the list's paths are relative to"),
              min_size: int = typer.Option(32, "--min-size", help="warn about images with a side below this"),
              imbalance: float = typer.Option(3.0, "--imbalance", help="warn when the largest class is this many times the smallest"),
              workers: int = typer.Option(2, "--workers", help="parallel processes"),
              strict: bool = typer.Option(False, "--strict", help="exit 1 on warnings too")) -> None:
    """Report unreadable, corrupt, odd and duplicate images and label problems (exit 1 if any error).

    Detection and segmentation sources are checked too: a COCO .json (or a folder holding annotations.json),
    a VOC folder of .xml files, a YOLO folder (images/ + labels/), a mask folder (images/ + masks/), an
    instance-mask folder (images/ + instances/ id masks, with masks/ or instances.json for the classes).
    Nothing is modified; --fix writes a new clean list (for boxes: a clean COCO .json) beside your files."""
    from ..tasks.data import annotation_kind
    from ..tasks.instances import is_instance_folder
    if annotation_kind(source) or is_instance_folder(source):
        _check_annotations(source, json_, fix, strict)
        return
    from ..data.check import check, fix as fix_list
    report = check(source, root, min_size=min_size, imbalance=imbalance, workers=workers)
    fixed = fix_list(report, fix) if fix else None
    if json_:
        doc = report.to_json()
        if fixed:
            doc["fixed"] = {"list": str(fixed[0]), "images": fixed[1]}
        print_json(doc)
    else:
        if report.problems:
            print_table(f"{report.source}: problems", ["severity", "problem", "file", "what happens"],
                        [(p.severity, p.kind, p.path or "-", p.message) for p in report.problems])
        counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
        out.print(f"{report.images} images in {len(report.counts)} classes ({counts}): "
                  f"{len(report.errors)} errors, {len(report.warnings)} warnings")
        if fixed:
            out.print(f"clean list: {fixed[0]} ({fixed[1]} images)")
    if report.errors or (strict and report.warnings):
        raise typer.Exit(1)


def _check_annotations(source: Path, json_: bool, fix: Optional[Path], strict: bool) -> None:
    from ..tasks.data import check_annotations, clean_boxes, write_coco
    from ..tasks.instances import check_instances, is_instance_folder
    if is_instance_folder(source):
        kind, (issues, boxes) = "instances", check_instances(source)
    else:
        kind, issues, boxes = check_annotations(source)
    fixed = None
    if fix is not None:
        if boxes is None:
            from ..errors import GraftError
            raise GraftError(f"{source}: --fix rewrites box annotations, not masks", "fix the listed masks by hand")
        done = clean_boxes(boxes)
        fix.parent.mkdir(parents=True, exist_ok=True)
        tmp = fix.with_name(fix.name + ".part")
        write_coco(boxes, tmp)
        tmp.replace(fix)
        fixed = {"file": str(fix), **done}
    errors = [i for i in issues if i.fatal]
    if json_:
        print_json({"source": str(source), "kind": kind, "images": len(boxes) if boxes else None,
                    "errors": len(errors), "issues": [vars(i) for i in issues], "fixed": fixed})
    else:
        if issues:
            print_table(f"{source} ({kind}): problems", ["severity", "problem", "where", "what"],
                        [("error" if i.fatal else "note", i.problem, i.where, i.message) for i in issues])
        out.print(f"{source} ({kind}): {len(boxes) if boxes else 'mask'} images, {len(errors)} errors, "
                  f"{len(issues) - len(errors)} notes")
        if fixed:
            out.print(f"clean COCO annotations: {fix} ({fixed['clipped']} boxes clipped, {fixed['dropped']} dropped, "
                      "unknown categories and images left out)")
    if errors or (strict and issues):
        raise typer.Exit(1)


@data.command("scenes")
def scenes_cmd(out_dir: Path = typer.Argument(..., metavar="DIR", help="folder to create (absent or empty)"),
               train: int = typer.Option(200, "--train", help="training scenes"),
               val: int = typer.Option(100, "--val", help="validation scenes"),
               size: int = typer.Option(128, "--size", help="scene side in pixels"),
               seed: int = typer.Option(0, "--seed", help="random seed (same seed, same scenes)"),
               json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Write the synthetic scene set for detection and segmentation: real Fashion-MNIST items on generated
    textured backgrounds (synthetic layouts), with exact boxes (COCO JSON) and class-indexed mask PNGs."""
    from ..tasks.scenes import write_scenes
    counts = write_scenes(out_dir, train=train, val=val, size=size, seed=seed)
    if json_:
        print_json({"out": str(out_dir), "images": counts})
    else:
        out.print(f"wrote {sum(counts.values())} synthetic scenes (train {counts['train']}, val {counts['val']}) to "
                  f"{out_dir}: images/, masks/ and annotations.json per split")


@data.command("split")
def split_cmd(source: Path = typer.Argument(..., metavar="LIST", help="a .lst list"),
              train: float = typer.Option(0.8, "--train", help="fraction for training"),
              val: float = typer.Option(0.1, "--val", help="fraction for validation"),
              test: float = typer.Option(0.1, "--test", help="fraction for testing"),
              seed: int = typer.Option(0, "--seed", help="random seed"),
              output: Optional[Path] = typer.Option(None, "-o", "--output", help="NAME: writes NAME_train.lst, ... (default: the list's name)"),
              root: Optional[Path] = typer.Option(None, "--root", help="folder the list's paths are relative to"),
              json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Stratified split; identical images (same content) never land in two splits."""
    from ..data.lists import read_lst
    from ..data.split import split_list
    written = split_list(source, {"train": train, "val": val, "test": test}, seed, output, root)
    summary = {k: {"list": str(p), "images": len(read_lst(p))} for k, p in written.items()}
    if json_:
        print_json(summary)
    else:
        for k, v in summary.items():
            out.print(f"{k}: {v['images']} images -> {v['list']}")


@data.command("pack")
def pack_cmd(source: Path = typer.Argument(..., metavar="LIST", help="a .lst list (from `graft data index`)"),
             output: Path = typer.Option(..., "-o", "--output", help="PREFIX: writes PREFIX.rec + PREFIX.idx (or shards)"),
             root: Optional[Path] = typer.Option(None, "--root", help="folder the list's paths are relative to"),
             shard_size: int = typer.Option(0, "--shard-size", help="records per shard (0: one file)"),
             resize: int = typer.Option(0, "--resize", help="shorter side in pixels (0: keep)"),
             center_crop: bool = typer.Option(False, "--center-crop", help="crop the centre square first"),
             quality: int = typer.Option(95, "--quality", help="JPEG quality 1-100 (PNG: compression 0-9)"),
             encoding: str = typer.Option(".jpg", "--encoding", help=".jpg or .png"),
             pass_through: bool = typer.Option(False, "--pass-through", help="store the files' bytes unchanged"),
             pack_label: bool = typer.Option(False, "--pack-label", help="store all labels of multi-label lists"),
             color: int = typer.Option(1, "--color", help="1: colour, 0: grayscale"),
             workers: int = typer.Option(2, "--workers", help="parallel processes"),
             json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Pack a list into MXNet-compatible RecordIO; unusable images are skipped and listed with the reason."""
    from ..data.pack import PackOptions, pack
    enc = encoding if encoding.startswith(".") else "." + encoding
    opts = PackOptions(resize=resize, center_crop=center_crop, quality=quality, encoding=enc,
                       pass_through=pass_through, pack_label=pack_label, color=color)
    report = pack(source, output, root=root, options=opts, shard_size=shard_size, workers=workers)
    if json_:
        print_json(report.to_json())
        return
    if report.skipped:
        print_table("skipped", ["index", "file", "reason"], [(s["index"], s["path"], s["reason"]) for s in report.skipped])
    rate = report.records / report.seconds if report.seconds else 0
    out.print(f"packed {report.records} images ({report.bytes / 1e6:.1f} MB, {rate:.0f} img/s) into "
              f"{', '.join(report.shards)}; skipped {len(report.skipped)}")


@data.command("inspect")
def inspect_cmd(pack: Path = typer.Argument(..., metavar="PACK", help="a .rec file or pack prefix"),
                json_: bool = typer.Option(False, "--json", help="print JSON"),
                no_decode: bool = typer.Option(False, "--no-decode", help="do not decode the images")) -> None:
    """One line per record: key, flag, labels, id, id2, payload length and SHA-256, decoded size."""
    from ..data.pack_info import inspect_records
    rows = list(inspect_records(pack, decode_images=not no_decode))
    if json_:
        print_json({"pack": str(pack), "records": rows})
        return
    # plain lines (not a table) so every record stays on one line at any terminal width
    print(f"{'shard':16s} {'key':>8s} {'flag':>4s} {'labels':12s} {'id':>8s} {'id2':>4s} {'bytes':>8s} "
          f"{'sha256':64s} decoded")
    for r in rows:
        decoded = "x".join(map(str, r["decoded"])) if r.get("decoded") else (r.get("error") or "-")
        print(f"{r['shard']:16s} {r['key']:8d} {r['flag']:4d} {','.join(f'{v:g}' for v in r['labels']):12s} "
              f"{r['id']:8d} {r['id2']:4d} {r['length']:8d} {r['sha256']} {decoded}")
    print(f"{len(rows)} records")


@data.command("stats")
def stats_cmd(source: Path = typer.Argument(..., metavar="LIST|PACK|ROOT", help="a list, pack or folder"),
              root: Optional[Path] = typer.Option(None, "--root", help="folder the list's paths are relative to"),
              binaryproto: Optional[Path] = typer.Option(None, "--binaryproto", help="also write a Caffe mean image here"),
              mean_size: int = typer.Option(256, "--mean-size", help="height and width of the Caffe mean image"),
              workers: int = typer.Option(2, "--workers", help="parallel processes"),
              json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Per-channel mean and std of your images (RGB; 0..255 and 0..1), optionally a Caffe mean .binaryproto."""
    from ..data.stats import compute_stats, write_mean_binaryproto
    st = compute_stats(source, root=root, mean_size=(mean_size, mean_size) if binaryproto else None, workers=workers)
    mean_image = st.pop("mean_image")
    if binaryproto:
        write_mean_binaryproto(binaryproto, mean_image)
        st["binaryproto"] = str(binaryproto)
    if json_:
        print_json(st)
        return
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    out.print(f"{st['images']} images ({st['skipped']} skipped), {st['pixels']} pixels per channel")
    out.print(f"mean RGB 0..255: {fmt(st['mean'])}  std: {fmt(st['std'])}")
    out.print(f"mean RGB 0..1:   {fmt(st['mean01'])}  std: {fmt(st['std01'])}")
    if binaryproto:
        out.print(f"Caffe mean image (BGR, {mean_size}x{mean_size}) written to {binaryproto}")


def register(app: typer.Typer) -> None:
    app.add_typer(data, name="data")
