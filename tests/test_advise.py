"""Strategy by measurement: the feature cache, the probes, `graft advise`, `graft train --strategy`,
on real data (the ants/bees photos of ../shared and the built-in Fashion-MNIST subset)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import graftkit
from conftest import run_graft
from graftkit.advise import features, probe, recommend
from graftkit.advise.advice import decide
from graftkit.advise.probe import stratified_folds
from graftkit.data import ImageDataset, demo_arrays
from graftkit.errors import GraftError
from graftkit.nets.probe import PRE_LOGITS

ANTS_BEES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ants_bees"
FMNIST_SIZE = {"input_size": [3, 112, 112], "resize": 112}  # what `graft train` uses for 28 px images


@pytest.fixture(scope="module")
def lite0():
    return graftkit.resolve("lite0")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture
def few_photos(tmp_path):
    """12 photos per class copied from ants_bees (so that touching one changes nothing shared)."""
    assert ANTS_BEES.is_dir(), "../shared/datasets/ants_bees is missing"
    for c in ("ants", "bees"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for p in sorted((ANTS_BEES / c).glob("*.jpg"))[:12]:
            shutil.copy2(p, tmp_path / "photos" / c / p.name)
    return tmp_path / "photos"


def test_photos_final_features_win_and_auto_chooses_the_probe(lite0, cache):
    advice = recommend(lite0, ANTS_BEES, cache_dir=cache, budget=60, progress=False)
    acc = {p.depth: p.cv_acc for p in advice.probes}
    assert max(acc, key=acc.get) == PRE_LOGITS, acc
    assert acc[PRE_LOGITS] > 0.9 and acc["blocks.0"] < acc[PRE_LOGITS] - 0.15
    assert advice.strategy == "probe" and "small data" in advice.scenario and "similar" in advice.scenario
    assert advice.data["images"] == 245 and advice.data["per_class"] == {"ants": 124, "bees": 121}


def test_fashion_mnist_probes_best_at_an_earlier_depth_and_auto_fine_tunes(lite0, cache):
    x, y = demo_arrays("train")
    ds = ImageDataset.from_arrays(x, y, classes=[str(i) for i in range(10)])
    pre = {**lite0.graftkit_meta["preprocessing"], **FMNIST_SIZE}
    advice = recommend(lite0, ds, cache_dir=cache, preprocessing=pre, progress=False)
    acc = {p.depth: p.cv_acc for p in advice.probes}
    earlier = max(acc, key=lambda d: (d != PRE_LOGITS, acc[d]))
    assert acc[earlier] > acc[PRE_LOGITS], acc          # far from ImageNet: the final features are not the best
    assert acc[PRE_LOGITS] < 0.9                        # and no linear probe fits the data well
    assert "different" in advice.scenario
    # with no budget to respect, fine-tune from the best probe, the network cut at its depth
    assert advice.strategy == f"lp-ft-at:{earlier}" and advice.depth == earlier
    # its epochs are counted at the speed of the cut network it trains, which never runs the last stages
    speed = advice.speed
    assert speed["cut_at"] == earlier and speed["cut_train_img_s"] > 0, speed
    assert speed["epoch_s"] == pytest.approx(advice.data["images"] / speed["cut_train_img_s"], abs=0.1)
    from graftkit.advise.advice import _cut
    cut = _cut(lite0, next(p for p in advice.probes if p.depth == earlier))
    ran = []
    cut.base.blocks[-1].register_forward_hook(lambda *a: ran.append(1))
    with torch.no_grad():
        assert cut(torch.randn(1, *pre["input_size"])).shape == (1, 10) and not ran
    # with a budget that pays for no fine-tune, the best earlier depth is probed instead
    tight = decide("auto", advice.probes, advice.data, advice.speed, advice.spent_seconds + 1, advice.spent_seconds)
    assert tight.strategy == f"probe-at:{earlier}" and "fewer than" in tight.why


def test_cache_serves_unchanged_data_and_recomputes_on_any_change(lite0, few_photos, tmp_path):
    cache = tmp_path / "cache"
    t = time.perf_counter()
    first = features(lite0, few_photos, cache_dir=cache, progress=False)
    cold = time.perf_counter() - t
    assert first.cached == [] and set(first.at) == {"blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6",
                                                    PRE_LOGITS}
    t = time.perf_counter()
    again = features(lite0, few_photos, cache_dir=cache, progress=False)
    warm = time.perf_counter() - t
    assert again.cached == list(first.at) and again.seconds == 0
    assert all(torch.equal(first.at[d], again.at[d]) for d in first.at)
    assert cold / warm > 5, (cold, warm)  # (the 20x of the issue is measured on the CLI: benchmarks/README)
    one = next((few_photos / "bees").iterdir())
    os.utime(one, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = features(lite0, few_photos, [PRE_LOGITS], cache_dir=cache, progress=False)
    assert touched.cached == []
    smaller = features(lite0, few_photos, [PRE_LOGITS], cache_dir=cache, progress=False,
                       preprocessing={**lite0.graftkit_meta["preprocessing"], "input_size": [3, 160, 160]})
    assert smaller.cached == []
    assert not torch.equal(smaller.at[PRE_LOGITS], touched.at[PRE_LOGITS])


def test_float16_cache_and_any_module_depth(lite0, few_photos, tmp_path):
    f = features(lite0, few_photos, ["blocks.3", "conv_head"], cache_dir=tmp_path, dtype=torch.float16,
                 progress=False)
    assert f.at["blocks.3"].shape == (24, 80) and f.at["conv_head"].shape == (24, 1280)
    assert f.at["blocks.3"].dtype == torch.float32


def test_probe_head_on_raw_features_equals_the_standardised_fit():
    x, y = demo_arrays("val")
    feats = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
    r = probe(feats, torch.from_numpy(y), [str(i) for i in range(10)], "pixels", folds=3)
    assert 0.6 < r.cv_acc < 1 and r.folds == 3 and r.ncm_acc > 0.4
    train_acc = float((r.head(feats).argmax(1) == torch.from_numpy(y)).float().mean())
    assert train_acc >= r.cv_acc


def test_stratified_folds_partition_every_class():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(15))
    for f in folds:
        assert set(labels[f]) == {0, 1, 2}


def test_train_probe_at_depth_package_exports_to_onnx_with_the_same_predictions(few_photos, tmp_path):
    import onnxruntime as ort
    env = {**os.environ, "GRAFTKIT_CACHE": str(tmp_path / "cache")}
    r = run_graft("train", "--train", few_photos, "-o", tmp_path / "run", "--strategy", "probe-at:blocks.4",
                  "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["strategy"]["chosen"] == "probe-at:blocks.4" and summary["epochs"] == 0
    pkg = tmp_path / "run" / "best.safetensors"
    model = graftkit.load(pkg)
    assert model.graftkit_meta["spec"]["depth"] == "blocks.4" and model.head.in_features == 112
    r = run_graft("export", pkg, "--onnx", tmp_path / "m.onnx", "--dynamic-batch")
    assert r.returncode == 0, r.stderr
    from graftkit.data import eval_pipeline
    ds = ImageDataset.open(few_photos, eval_pipeline(model.graftkit_meta["preprocessing"]))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        ours = model(x).softmax(1).numpy()
    (theirs,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})
    theirs = torch.from_numpy(theirs).softmax(1).numpy()
    assert (ours.argmax(1) == theirs.argmax(1)).all() and np.abs(ours - theirs).max() < 1e-4
    r = run_graft("evaluate", pkg, few_photos, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["top1"] > 0.8


def test_advise_cli_json_and_plan(few_photos, tmp_path):
    env = {**os.environ, "GRAFTKIT_CACHE": str(tmp_path / "cache")}
    r = run_graft("advise", few_photos, "--at", "blocks.6", "--at", PRE_LOGITS, "-o", tmp_path / "plan.yaml",
                  "--val", few_photos, "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [p["depth"] for p in doc["probes"]] == ["blocks.6", PRE_LOGITS]
    assert all(p["val_acc"] >= 0.9 for p in doc["probes"])  # (scored on its own training images here)
    assert doc["strategy"] and doc["why"] and doc["data"]["images"] == 24 and doc["speed"]["train_img_s"] > 0
    from graftkit.tune import Plan
    assert Plan.load(tmp_path / "plan.yaml").strategy == doc["strategy"]


@pytest.mark.parametrize("args, message", [
    (["--at", "blocks.99"], "no layer named 'blocks.99'"),
    (["--budget", "0.01"], "too small for any strategy"),
])
def test_advise_bad_input_is_one_line(few_photos, tmp_path, args, message):
    r = run_graft("advise", few_photos, *args, "--cache", tmp_path / "c")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_unwritable_cache_and_single_image_class(few_photos, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run_graft("advise", few_photos, "--cache", blocker / "cache")
    assert r.returncode == 2 and "cannot be written" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    for p in list((few_photos / "bees").iterdir())[1:]:
        p.unlink()
    r = run_graft("train", "--train", few_photos, "-o", tmp_path / "run", "--cache", tmp_path / "c")
    assert r.returncode == 2 and "class 'bees' has a single image" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_strategy_is_refused(few_photos, tmp_path):
    r = run_graft("train", "--train", few_photos, "-o", tmp_path / "run", "--strategy", "magic")
    assert r.returncode == 2 and "strategy 'magic' is not understood" in r.stderr


def test_lp_ft_starts_from_the_probe(few_photos, tmp_path):
    from graftkit.advise import train
    from graftkit.tune import Plan
    s = train("lite0", few_photos, few_photos, out_dir=tmp_path / "run", strategy="lp-ft", cache_dir=tmp_path / "c",
              plan=Plan.load(None, epochs=1, size=96, batch_size=8), quiet=True)
    assert s["strategy"]["chosen"] == "lp-ft" and s["epochs"] == 1 and s["seconds_measuring"] > 0
    head = s["strategy"]["evidence"]["probes"][0]
    assert head["depth"] == PRE_LOGITS
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["strategy"]["chosen"] == "lp-ft"
    # the generic early layers (stride <= 4: the stem, blocks 0 and 1) were kept as they are, the rest trained
    assert saved["strategy"]["evidence"]["generic_layers_end"] == "blocks.1"
    before, after = graftkit.resolve("lite0").state_dict(), graftkit.resolve(tmp_path / "run" / "last.safetensors").state_dict()
    for name in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.1.1.conv_pwl.weight"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["blocks.2.0.conv_pwl.weight"], after["blocks.2.0.conv_pwl.weight"])
    # lp-ft's own lr where the plan leaves it (2e-3, the head's too); the batch size the plan gives stays
    assert {g["lr"][0] for g in saved["groups"] if g["status"] == ["trainable"]} == {2e-3}
    assert saved["iterations"] == 3  # 24 images in batches of 8, not lp-ft's 16


def test_lp_ft_at_a_depth_fine_tunes_the_cut_network_from_its_probe(few_photos, tmp_path):
    from graftkit.advise import train
    from graftkit.serve import evaluate
    from graftkit.tune import Plan
    plan = Plan.load(None, epochs=1, size=96, batch_size=8)
    plan.stop_gradient = "blocks.2"    # named as in the original network: it is under `base.` once cut
    s = train("lite0", few_photos, few_photos, out_dir=tmp_path / "run", strategy="lp-ft-at:blocks.4",
              cache_dir=tmp_path / "c", plan=plan, quiet=True)
    assert s["strategy"]["chosen"] == "lp-ft-at:blocks.4" and s["epochs"] == 1
    net = graftkit.resolve(tmp_path / "run" / "last.safetensors")
    assert net.graftkit_meta["spec"]["depth"] == "blocks.4" and net.head.in_features == 112
    before = graftkit.resolve("lite0").state_dict()
    after = net.state_dict()
    assert torch.equal(before["blocks.2.1.conv_pwl.weight"], after["base.blocks.2.1.conv_pwl.weight"])  # the plan's
    assert not torch.equal(before["blocks.4.0.conv_pwl.weight"], after["base.blocks.4.0.conv_pwl.weight"])
    assert torch.equal(before["blocks.6.0.conv_pwl.weight"], after["base.blocks.6.0.conv_pwl.weight"])  # never run
    # the package evaluates like any other, to the accuracy the run measured on the same images
    assert abs(evaluate(tmp_path / "run" / "last.safetensors", few_photos, progress=False)["top1"]
               - s["last"]["val_top1"]) < 1e-6


def test_generic_layers_end_at_stride_four_in_any_network():
    from graftkit.advise.features import generic_end
    assert generic_end(graftkit.resolve("timm:resnet18", pretrained=False), (3, 112, 112)) == "layer1"
    assert generic_end(graftkit.resolve("lite0"), (3, 224, 224)) == "blocks.1"
    assert generic_end(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=8)), (3, 64, 64)) is None


def test_features_of_a_converted_caffe_network(few_photos, tmp_path):
    from conftest import fixture
    net = graftkit.convert([fixture("caffe/cifar10_quick.prototxt"), fixture("caffe/cifar10_quick.caffemodel")])
    f = features(net, few_photos, cache_dir=tmp_path, progress=False)
    assert list(f.at) == ["conv1", "conv2", "conv3"]   # the last layer at each resolution (32, 16, 8 px)
    assert [t.shape for t in f.at.values()] == [(24, 32), (24, 32), (24, 64)]
    assert all(torch.isfinite(t).all() for t in f.at.values())


def test_probe_run_with_validation_data_and_taps_on_a_probe_package(lite0, few_photos, tmp_path):
    from graftkit.advise import train
    s = train("lite0", few_photos, few_photos, out_dir=tmp_path / "run", strategy="probe", cache_dir=tmp_path / "c",
              quiet=True)
    assert s["val"]["n"] == 24 and s["best"]["val_top1"] == s["val"]["top1"] > 0.8
    net = graftkit.load(tmp_path / "run" / "best.safetensors")
    f = features(net, few_photos, ["base.blocks.6", PRE_LOGITS], cache_dir=tmp_path / "c", progress=False)
    assert f.at["base.blocks.6"].shape == (24, 320) and f.at[PRE_LOGITS].shape == (24, 1280)
    only = features(net, few_photos, ["base.blocks.4"], cache_dir=tmp_path / "c", progress=False)
    assert only.at["base.blocks.4"].shape == (24, 112)


def test_large_data_is_cross_validated_on_a_stratified_subsample():
    from graftkit.advise.probe import _subsample
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(9000), torch.ones(900), torch.full((100,), 2.0)]).long()
    x = torch.randn(len(y), 4, generator=g) + y[:, None]
    xs, ys = _subsample(x, y, 5000, seed=0)
    assert len(ys) == 5000 and torch.bincount(ys).tolist() == [4500, 450, 50]
    r = probe(x, y, ["a", "b", "c"], "toy", folds=3)
    assert r.cv_acc > 0.7 and r.head.weight.shape == (3, 4)


def test_auto_on_a_converted_caffe_network_makes_a_probe_package(few_photos, tmp_path):
    """A converted graph cannot get a new head yet, so auto probes at its best depth instead of fine-tuning."""
    from conftest import fixture
    from graftkit.advise import train
    net = graftkit.convert([fixture("caffe/cifar10_quick.prototxt"), fixture("caffe/cifar10_quick.caffemodel")])
    graftkit.save(net, tmp_path / "c10.safetensors")
    s = train(tmp_path / "c10.safetensors", few_photos, out_dir=tmp_path / "run", cache_dir=tmp_path / "c", quiet=True)
    assert s["strategy"]["chosen"].startswith("probe-at:conv") and "cannot yet give this network" in s["strategy"]["why"]
    r = run_graft("evaluate", tmp_path / "run" / "best.safetensors", few_photos, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 24


def test_measured_speed_is_reused_for_an_hour_then_measured_again(tmp_path):
    from graftkit.advise.advice import SPEED_MAX_AGE, _cached
    calls = []
    measure = lambda: calls.append(1) or {"train_img_s": float(len(calls))}  # noqa: E731
    assert _cached(tmp_path, ("speed", "m"), measure) == {"train_img_s": 1.0}
    assert _cached(tmp_path, ("speed", "m"), measure) == {"train_img_s": 1.0} and len(calls) == 1
    (path,) = tmp_path.glob("speed-*.json")
    old = time.time() - SPEED_MAX_AGE - 1
    os.utime(path, (old, old))  # measured long ago, perhaps on a busy machine
    assert _cached(tmp_path, ("speed", "m"), measure) == {"train_img_s": 2.0} and len(calls) == 2
