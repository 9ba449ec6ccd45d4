"""`graft train` end to end on small image folders: outputs, and one clear error for each bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from test_train import HERE

SPEC = f"{HERE}:tiny_net"


def make_folder(root, classes=("ant", "bee", "cat"), per=4, empty=()):
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        if c in empty:
            continue
        for i in range(per):
            img = (rng.random((16, 16, 3)) * 60 + k * 60).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def args(data, out, *extra):
    return ["train", "--model", SPEC, "--strategy", "finetune", "--train", str(data), "-o", str(out), "--batch-size", "4", "--size", "32",
            *map(str, extra)]


def test_train_writes_packages_logs_curves_and_summary(graft, tmp_path):
    data = make_folder(tmp_path / "data")
    r = graft(*args(data, tmp_path / "run", "--val", data, "--epochs", "2", "--json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    run = tmp_path / "run"
    for name in ("best.safetensors", "last.safetensors", "checkpoint.pt", "log.csv", "curves.png", "summary.json"):
        assert (run / name).stat().st_size > 0, name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert summary["classes"] == ["ant", "bee", "cat"] and summary["epochs"] == 2
    assert len(summary["val"]["confusion"]) == 3 and set(summary["val"]["per_class"]) == {"ant", "bee", "cat"}
    assert (run / "log.csv").read_text().count("\n") == 3
    from graftkit import load
    net = load(run / "best.safetensors", trust=True)  # (the test's own model file)
    meta = net.graftkit_meta
    assert meta["classes"] == ["ant", "bee", "cat"] and meta["preprocessing"]["input_size"] == [3, 32, 32]
    assert net.fc.out_features == 3


def test_labels_one_to_k_in_a_list(graft, tmp_path):
    data = make_folder(tmp_path / "data")
    lines = [f"{i}\t{k + 1}\t{c}/{j}.png" for i, (k, c, j) in
             enumerate((k, c, j) for k, c in enumerate(("ant", "bee", "cat")) for j in range(4))]
    (data / "train.lst").write_text("\n".join(lines) + "\n")
    r = graft(*args(data / "train.lst", tmp_path / "run", "--epochs", "1"))
    assert r.returncode == 2 and r.stderr.count("graft: error") == 1, r.stderr
    assert "labels" in r.stderr and "0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_empty_class_and_missing_layer(graft, tmp_path):
    data = make_folder(tmp_path / "data", empty=("bee",))
    r = graft(*args(data, tmp_path / "run", "--epochs", "1"))
    assert r.returncode == 2 and r.stderr.count("graft: error") == 1, r.stderr
    assert "'bee' has no images" in r.stderr
    data = make_folder(tmp_path / "data2")
    plan = tmp_path / "plan.yaml"
    plan.write_text("freeze: [features.0]\n")
    r = graft(*args(data, tmp_path / "run2", "--plan", plan))
    assert r.returncode == 2 and r.stderr.count("graft: error") == 1 and "'features.0' names no layer" in r.stderr, r.stderr


def test_diverging_lr_is_diagnosed_and_checkpoints_stay_intact(graft, tmp_path):
    data = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert graft(*args(data, run, "--epochs", "1")).returncode == 0
    before = {n: (run / n).read_bytes() for n in ("checkpoint.pt", "last.safetensors", "best.safetensors")}
    r = graft(*args(data, run, "--epochs", "3", "--resume", "--lr", "1e12", "--optimizer", "sgd"))
    assert r.returncode == 2 and r.stderr.count("graft: error") == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("graft: error: the loss became") and "too high" in last and "intact" in last, r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr
    assert {n: (run / n).read_bytes() for n in before} == before
