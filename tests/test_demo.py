"""`graft demo`: the README's first command, end to end on the shipped Fashion-MNIST subset."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from test_serve import run_cli


def test_demo_refuses_a_folder_in_use(capsys, tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "demo", "-o", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already exists and is not empty" in err
    assert (tmp_path / "old.txt").read_text() == "keep me"


@pytest.mark.slow  # features, probes, a probe or a short fine-tune, evaluation and predictions: ~2-3 min on 2 cores
def test_demo_smoke_with_a_small_time_budget(capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "-o", out, "--time-budget", "45")
    assert code == 0, err
    doc = json.loads((out / "summary.json").read_text())
    # every file the summary names exists, and the numbers agree with the files they come from
    for rel in doc["files"].values():
        assert (out / rel).exists(), rel
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert doc["test_top1"] == metrics["top1"] and metrics["n"] == doc["test_images"] == 500
    assert sum(map(sum, metrics["confusion"])) == 500 and len(metrics["per_class"]) == 10
    assert doc["data_checks"]["train"] == {"images": 1000, "errors": 0, "warnings": 0}
    assert (out / "data" / "packs" / "train.rec").stat().st_size > 0
    train = json.loads((out / "run" / "summary.json").read_text())
    assert train["train_images"] == 1000 and train["strategy"]["asked"] == "auto"
    assert doc["strategy"]["chosen"] == train["strategy"]["chosen"] and doc["strategy"]["why"]
    fine_tuned = train["epochs"] > 0
    assert ("time budget" in train["stop_reason"]) == fine_tuned and ("curves" in doc["files"]) == fine_tuned
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 10 and all(len(p["predictions"]) == 3 for p in predictions)
    for png in (["run/curves.png"] if fine_tuned else []) + ["eval/confusion.png"]:
        assert Image.open(out / png).format == "PNG"
    report = (out / "report.md").read_text()
    assert f"{doc['test_top1']:.1%}" in report
    assert "test top-1" in stdout and str(out / "report.md") in stdout
