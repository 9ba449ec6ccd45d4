"""The issue's messy folder: `check` names each problem, `pack` skips exactly the unusable files, a loader never crashes."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_graft
from graftkit.data import ImageDataset, train_pipeline
from graftkit.data.check import ERROR, check, fix
from graftkit.data.lists import Entry, read_lst, write_lst
from graftkit.data.pack import pack
from graftkit.data.pack_info import inspect_records

UNUSABLE = {"shirt/corrupt.jpg": "corrupt", "shoe/truncated.png": "truncated", "shoe/empty.jpg": "zero_byte",
            "../secret.jpg": "outside_root"}
CONVERTED = {"shirt/cmyk.jpg": "cmyk", "shoe/anim.gif": "animated", "shirt/tiny.png": "too_small",
             "shoe/gray_alpha.png": "alpha", "shirt/good1.jpg": "duplicate"}


def _jpeg(rng, size=(64, 48), mode="RGB"):
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_messy(root: Path) -> Path:
    """Class folders with every kind of bad file, and a .lst over them with labels 1..K and a `../` entry."""
    rng = np.random.default_rng(0)
    (root / "shirt").mkdir(parents=True)
    (root / "shoe").mkdir()
    good = _jpeg(rng)
    noise = lambda h, w, c: rng.integers(0, 255, (h, w, c), dtype=np.uint8)  # noqa: E731
    files = {
        "shirt/good1.jpg": good,
        "shirt/good2.jpg": _jpeg(rng),
        "shirt/corrupt.jpg": good[:20] + bytes(noise(1, 2000, 1).ravel()),
        "shirt/cmyk.jpg": _jpeg(rng, mode="CMYK"),
        "shirt/dup.jpg": good,
        "shirt/tiny.png": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
        "shoe/good3.png": _png(Image.fromarray(noise(40, 40, 3))),
        "shoe/good4.jpg": _jpeg(rng, size=(50, 70)),
        "shoe/truncated.png": _png(Image.fromarray(noise(64, 64, 3)))[:3000],
        "shoe/gray_alpha.png": _png(Image.fromarray(noise(40, 40, 2), "LA")),
        "shoe/empty.jpg": b"",
    }
    frames = [Image.fromarray(noise(40, 40, 3)).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    files["shoe/anim.gif"] = buf.getvalue()
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root.parent / "secret.jpg").write_bytes(_jpeg(rng))  # a real image, but outside the root
    rels = sorted(files) + ["../secret.jpg"]
    entries = [Entry(i, (1.0 if r.startswith("shirt") else 2.0,), r) for i, r in enumerate(rels)]
    return write_lst(root / "messy.lst", entries)


@pytest.fixture
def messy(tmp_path):
    return make_messy(tmp_path / "root")


def test_check_names_every_problem(messy):
    report = check(messy, workers=1)
    found = {(p.path, p.kind) for p in report.problems}
    for path, kind in {**UNUSABLE, **CONVERTED}.items():
        assert (path, kind) in found, (path, kind)
    assert ("shoe/anim.gif", "gif") in found and ("shoe/gray_alpha.png", "grayscale") in found
    assert {p.kind for p in report.problems if p.path is None} >= {"label_gaps", "empty_class"}
    assert next(p for p in report.problems if p.kind == "label_gaps").message.startswith("labels are 1..2")
    errors = {p.path for p in report.errors if p.path}
    assert errors == set(UNUSABLE)  # converted files are warnings/notes, not errors
    for p in report.problems:
        assert p.message and "\n" not in p.message


def test_fix_writes_a_clean_list_and_never_touches_files(messy):
    before = {p: p.read_bytes() for p in messy.parent.rglob("*") if p.is_file()}
    report = check(messy, workers=1)
    out, kept = fix(report, messy.parent.parent / "clean.lst")
    entries = read_lst(out)
    assert kept == len(entries) == 13 - 4 - 1  # unusable and the later duplicate dropped
    assert {e.path for e in entries}.isdisjoint(UNUSABLE) and "shirt/good1.jpg" not in {e.path for e in entries}
    assert sorted({e.label for e in entries}) == [0, 1]  # 1..K renumbered to 0..K-1
    assert not check(out, workers=1).errors
    assert before == {p: p.read_bytes() for p in messy.parent.rglob("*") if p.is_file()}


def test_pack_skips_exactly_the_unusable_ones(messy, tmp_path):
    report = pack(messy, tmp_path / "messy", workers=2, progress=False)
    assert {s["path"] for s in report.skipped} == set(UNUSABLE)
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert "zero-byte" in reasons["shoe/empty.jpg"] and "truncated" in reasons["shoe/truncated.png"]
    assert "outside the root" in reasons["../secret.jpg"]
    rows = list(inspect_records(tmp_path / "messy"))
    assert len(rows) == report.records == 13 - 4 and all(r["error"] is None for r in rows)
    doc = json.loads((tmp_path / "messy.classes.json").read_text())
    assert {s["path"] for s in doc["skipped"]} == set(UNUSABLE)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loader_over_the_messy_folder_never_crashes(messy, workers):
    ds = ImageDataset.open(messy, train_pipeline({"input_size": [3, 32, 32]}), seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    seen = 0
    for x, y in loader:
        assert x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all()
        seen += len(y)
    assert seen == 13
    # the four unusable entries were skipped and counted, in the parent process too
    assert sorted(ds.name(i) for i in ds.failed) == sorted(UNUSABLE)
    assert ds.num_failed == 4


def test_check_folder_and_cli(messy, tmp_path):
    folder = check(messy.parent, workers=1)
    assert {p.path for p in folder.errors if p.path} == {k for k in UNUSABLE if not k.startswith("..")}
    r = run_graft("data", "check", messy, "--json", "--fix", tmp_path / "fixed.lst")
    assert r.returncode == 1  # errors were found
    doc = json.loads(r.stdout)
    assert doc["errors"] == len([p for p in doc["problems"] if p["severity"] == ERROR]) >= 6
    assert doc["fixed"]["images"] == 8 and (tmp_path / "fixed.lst").exists()
    r = run_graft("data", "check", tmp_path / "nowhere.lst")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such" in r.stderr


def test_check_reports_odd_modes_rotation_and_imbalance(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "odd"
    (root / "many").mkdir(parents=True)
    (root / "few").mkdir()
    (root / "empty").mkdir()
    for i in range(10):
        (root / "many" / f"{i}.jpg").write_bytes(_jpeg(rng))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    (root / "few" / "rotated.jpg").write_bytes(buf.getvalue())
    Image.fromarray(np.full((40, 40), 30000, np.uint16)).save(root / "few" / "deep.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P").save(root / "few" / "pal.png")
    report = check(root, workers=1)
    found = {(p.path, p.kind) for p in report.problems}
    assert {("few/rotated.jpg", "exif_rotation"), ("few/deep.png", "16bit"), ("few/pal.png", "palette")} <= found
    kinds = report.kinds()
    assert kinds["imbalance"] == 1 and kinds["empty_class"] == 1
    assert "many has 10 images, few 3" in next(p.message for p in report.problems if p.kind == "imbalance")
    assert "class 0 (empty) has no images" in next(p.message for p in report.problems if p.kind == "empty_class")


def test_pack_options_center_crop_gray_pass_through(messy, tmp_path):
    from graftkit.data.pack import PackOptions
    from graftkit.data.recordio import RecordReader, unpack_header
    good = [l for l in messy.read_text().splitlines() if "good" in l]
    lst = messy.parent / "good.lst"
    lst.write_text("\n".join(good) + "\n")
    rep = pack(lst, tmp_path / "sq", options=PackOptions(resize=16, center_crop=True, color=0), workers=1,
               progress=False)
    rows = list(inspect_records(tmp_path / "sq"))
    assert rep.records == 4 and all(r["decoded"] == [16, 16] for r in rows)
    img = Image.open(io.BytesIO(unpack_header(RecordReader(tmp_path / "sq.rec").read(0)).image))
    assert img.mode == "L"
    pack(lst, tmp_path / "raw", options=PackOptions(pass_through=True), workers=1, progress=False)
    for line, row in zip(good, inspect_records(tmp_path / "raw")):
        data = (messy.parent / line.split("\t")[-1]).read_bytes()
        import hashlib
        assert row["sha256"] == hashlib.sha256(data).hexdigest()  # the file's own bytes, unchanged
