"""Small data is decoded once: the memory cache gives the streamed tensors, falls back when it does not fit,
is shared by worker processes, and keeps training runs (and their exact resume) bit-identical."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit.data import ImageDataset, eval_pipeline, make_lists, train_pipeline
from graftkit.data.memory import parse_budget
from graftkit.data.pack import PackOptions, pack
from graftkit.errors import GraftError
from graftkit.train import RunInterrupted, fit
from graftkit.train.callbacks import WorkerTuner, choose_workers
from test_train import assert_identical, make_model, small_plan, weights

PRE = {"input_size": [3, 32, 32], "resize": 36}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """3 classes x 8 images of several sizes (most larger than the pipeline's presize), PNG, JPEG and gray."""
    root = tmp_path_factory.mktemp("cache") / "photos"
    rng = np.random.default_rng(0)
    for i in range(24):
        h, w = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        a = (rng.integers(0, 255, (h, w, 3)) // 4 + 60 * (i % 3)).astype(np.uint8)
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(a[..., 0] if i % 7 == 0 else a)
        img.save(folder / (f"{i:03d}.jpg" if i % 2 else f"{i:03d}.png"), **({"quality": 90} if i % 2 else {}))
    return root


def _all(ds, epochs=(0, 1)):
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out += [ds[i] for i in range(len(ds))]
    return out


def _same(a, b):
    assert len(a) == len(b)
    for (x, y), (x2, y2) in zip(a, b):
        assert y == y2 and x.dtype == x2.dtype and torch.equal(x, x2)


@pytest.mark.parametrize("source", ["folder", "pack"])
def test_cached_samples_are_the_streamed_ones(photos, tmp_path, source):
    if source == "pack":
        lst = make_lists(photos, tmp_path / "p")["all"]
        pack(lst, tmp_path / "pack", options=PackOptions(resize=0, quality=95), workers=1, progress=False)
        where = tmp_path / "pack"
    else:
        where = photos
    for pipeline in (train_pipeline(PRE, augment=["random_resized_crop", "hflip", "color_jitter"], normalize=False),
                     eval_pipeline(PRE, normalize=False)):
        streamed = ImageDataset.open(where, pipeline, seed=3)
        cached = ImageDataset.open(where, pipeline, seed=3)
        info = cached.cache("64M", progress=False)
        assert info["cached"] and cached.cached and 0 < info["bytes"] <= 24 * 3 * 90 * 90
        # pre-resized: no cached image has a shorter side above the presize (36)
        assert int(cached._cache.shapes[:, 1:].min(1).values.max()) <= 36
        _same(_all(streamed), _all(cached))
        assert cached[0][0].data_ptr() != cached[0][0].data_ptr()  # callers get copies: the cache stays intact


def test_a_budget_too_small_streams_as_before(photos):
    tp = train_pipeline(PRE, normalize=False)
    ds = ImageDataset.open(photos, tp, seed=1)
    info = ds.cache("10K", progress=False)
    assert not info["cached"] and not ds.cached and "over the memory budget" in info["reason"]
    assert not ds.cache(0, progress=False)["cached"]
    _same(_all(ds, [0]), _all(ImageDataset.open(photos, tp, seed=1), [0]))
    # arrays are in memory already: nothing to do
    arr = ImageDataset.from_arrays(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1], tp)
    assert not arr.cache("1G", progress=False)["cached"]


def test_budget_spellings():
    assert parse_budget("2G") == 2 * 2**30 and parse_budget("512MB") == 512 * 2**20 and parse_budget(1000) == 1000
    assert parse_budget("0") == parse_budget("off") == parse_budget(None) == 0
    assert 0 < parse_budget("25%") <= parse_budget("50%")
    for bad in ("lots", "120%", -1):
        with pytest.raises(GraftError):
            parse_budget(bad)
    with pytest.raises(GraftError, match="cache_ram"):
        small_plan(cache_ram="plenty")
    with pytest.raises(GraftError, match="num_workers"):
        small_plan(num_workers="many")


def test_worker_processes_share_the_cache(photos):
    ds = ImageDataset.open(photos, train_pipeline(PRE, normalize=False), seed=2)
    ds.cache("64M", progress=False)
    assert ds._cache.data.is_shared()

    def batches(workers):
        dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=workers)
        return [(x.clone(), y.clone()) for x, y in dl]

    for (x, y), (x2, y2) in zip(batches(0), batches(2)):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_the_worker_rule():
    assert choose_workers(0.005, 0.1, cuda=False, cpus=8) == 0          # cached data: in-process
    assert choose_workers(0.05, 0.1, cuda=False, cpus=8) == 1
    assert choose_workers(0.3, 0.1, cuda=False, cpus=8) == 3
    assert choose_workers(0.3, 0.1, cuda=False, cpus=2) == 1            # the step keeps a core
    assert choose_workers(1.0, 0.01, cuda=True, cpus=16) == 8
    assert WorkerTuner(0, False).workers == 0 and WorkerTuner(3, False).decided


def test_training_from_the_cache_is_the_streamed_run_and_resumes_exactly(photos, tmp_path):
    plan = lambda ram: small_plan(size=32, cache_ram=ram)  # noqa: E731
    streamed = fit(make_model(3), photos, photos, out_dir=tmp_path / "stream", plan=plan("0"), seed=4, quiet=True)
    full = fit(make_model(3), photos, photos, out_dir=tmp_path / "full", plan=plan("64M"), seed=4, quiet=True)
    assert full["loading"]["train"]["cached"] and full["loading"]["val"]["cached"]
    assert not streamed["loading"]["train"]["cached"]
    assert_identical(weights(tmp_path / "stream" / "last.safetensors"), weights(tmp_path / "full" / "last.safetensors"))
    with pytest.raises(RunInterrupted):
        fit(make_model(3), photos, photos, out_dir=tmp_path / "cut", plan=plan("64M"), seed=4, quiet=True,
            interrupt_after=4)
    resumed = fit(make_model(3), photos, photos, out_dir=tmp_path / "cut", plan=plan("64M"), seed=4, quiet=True,
                  resume=True)
    assert_identical(weights(tmp_path / "full" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors"))
    assert full["iterations"] == resumed["iterations"] == 6
