"""The Keras reader: the three file kinds agree with each other and with Keras's own get_weights()."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import graftkit
from graftkit.errors import GraftError
from graftkit.formats import detect
from graftkit.formats import keras as kreader

from conftest import fixture, require, run_graft


def keras_to_torch(cls: str, var: str, a: np.ndarray) -> np.ndarray:
    """The documented layout conversion, written out again independently of the reader."""
    if cls == "Conv2D" and var == "kernel":
        return a.transpose(3, 2, 0, 1)
    if cls == "Conv2DTranspose" and var == "kernel":
        return a.transpose(3, 2, 0, 1)
    if var in ("depthwise_kernel",) or (cls == "DepthwiseConv2D" and var == "kernel"):
        kh, kw, c, m = a.shape
        return a.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    if var == "pointwise_kernel":
        return a.transpose(3, 2, 0, 1)
    if cls == "Dense" and var == "kernel":
        return a.T
    if cls == "PReLU":
        return a.reshape(-1) if a.size == a.shape[-1] else np.moveaxis(a, -1, 0)
    return a


TORCH_NAME = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_variance": "running_var", "alpha": "weight",
              "mean": "mean", "variance": "variance", "count": "count"}


def expected_from_keras(model) -> dict[str, np.ndarray]:
    """name -> array from Keras's own per-layer weights, walking nested models like the reader names them."""
    import keras
    out: dict[str, np.ndarray] = {}

    def walk(layers, prefix):
        for layer in layers:
            if isinstance(layer, keras.Model):
                walk(layer.layers, f"{prefix}{layer.name}.")
                continue
            cls = type(layer).__name__
            for w in layer.weights:
                var = w.path.rsplit("/", 1)[-1]
                if cls == "SeparableConv2D":
                    part = "depthwise" if var == "depthwise_kernel" else "pointwise"
                    name = f"{prefix}{layer.name}.{part}.{'bias' if var == 'bias' else 'weight'}"
                else:
                    name = f"{prefix}{layer.name}.{TORCH_NAME[var]}"
                out[name] = keras_to_torch(cls, var, keras.ops.convert_to_numpy(w.value))

    walk(model.layers, "")
    return out


def _read_all(paths):
    return [kreader.read(p) for p in paths]


@pytest.mark.parametrize("stem", ["layout_zoo", "seed_cnn"])
def test_file_kinds_agree_with_each_other(stem):
    kinds = [".keras", ".h5"] + ([".weights.h5"] if stem == "layout_zoo" else [])
    sets = _read_all([fixture(f"keras/{stem}{k}") for k in kinds])
    ref = sets[0]
    for s in sets[1:]:
        assert list(s) == list(ref)
        for name in ref:
            assert s[name].shape == ref[name].shape and s[name].equal(ref[name]), name
            a, b = s.record(name), ref.record(name)
            assert (a.layer, a.kind, a.role, a.position) == (b.layer, b.kind, b.role, b.position), name
    assert [s.meta["file_kind"] for s in sets] == ["keras", "legacy_h5", "weights_h5"][:len(sets)]


def test_legacy_weights_only_h5_kinds_are_inferred(tmp_path):
    """A Keras 2 style weights-only .h5 (layer_names/weight_names, no config) reads like the .keras."""
    keras = require("keras")
    from keras.src.legacy.saving import legacy_h5_format
    import h5py
    model = keras.saving.load_model(fixture("keras/layout_zoo.keras"), compile=False)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    s, ref = kreader.read(tmp_path / "w.h5"), kreader.read(fixture("keras/layout_zoo.keras"))
    assert s.meta["file_kind"] == "legacy_weights_h5" and s.graph is None
    assert list(s) == list(ref)
    for k in ref:
        assert s[k].equal(ref[k]) and s.record(k).kind == ref.record(k).kind, k
    net = graftkit.convert([fixture("keras/layout_zoo.keras"), tmp_path / "w.h5"])
    assert net.dw1.weight.equal(ref["dw1.weight"])


def test_layout_zoo_records():
    s = kreader.read(fixture("keras/layout_zoo.keras"))
    shapes = {k: tuple(v.shape) for k, v in s.items()}
    assert shapes["stem_conv.weight"] == (16, 3, 3, 3) and "stem_conv.bias" not in shapes  # use_bias=False
    assert shapes["dw1.weight"] == (16, 1, 3, 3) and s.record("dw1.weight").kind == "depthwise_conv"
    assert shapes["sep2.depthwise.weight"] == (16, 1, 3, 3) and shapes["sep2.pointwise.weight"] == (24, 16, 1, 1)
    assert shapes["head.weight"] == (7, 24) and s.record("head.weight").kind == "linear"
    bn = s.record("stem_bn.running_var")
    assert (bn.kind, bn.role, bn.meta["eps"]) == ("batchnorm", "running_var", 0.001)
    assert [r.layer for r in s.records.values() if r.role == "weight"] == \
        ["stem_conv", "stem_bn", "dw1", "dw1_bn", "sep2", "sep2", "branch", "head"]
    assert s.graph["class_name"] == "Functional"          # the model config, for the converter
    assert kreader.read(fixture("keras/layout_zoo.weights.h5")).graph is None


def test_fixture_weights_equal_keras_get_weights():
    keras = require("keras")
    model = keras.saving.load_model(fixture("keras/layout_zoo.keras"), compile=False)
    expected = expected_from_keras(model)
    for path in ("layout_zoo.keras", "layout_zoo.h5", "layout_zoo.weights.h5"):
        s = kreader.read(fixture(f"keras/{path}"))
        assert set(s) == set(expected), path
        for name, a in expected.items():
            assert np.array_equal(s[name].numpy(), a), (path, name)


@pytest.fixture(scope="module")
def odd_layers(tmp_path_factory):
    """A model with BatchNorm without gamma/beta, PReLU, Conv2DTranspose, Normalization and a nested model."""
    keras = require("keras")
    L = keras.layers
    inp = keras.Input((6, 5, 3), name="x")
    y = L.Conv2DTranspose(4, 3, strides=2, name="up")(inp)
    y = L.BatchNormalization(scale=False, center=False, epsilon=1e-5, name="bn_plain")(y)
    y = L.BatchNormalization(scale=False, name="bn_beta")(y)
    y = L.PReLU(name="prelu_full")(y)
    y = L.PReLU(shared_axes=[1, 2], name="prelu_ch")(y)
    inner = keras.Sequential([L.Conv2D(2, 1, name="in_conv"), L.BatchNormalization(name="in_bn")], name="inner")
    y = inner(y)
    norm = L.Normalization(name="norm")
    norm.adapt(np.random.default_rng(1).normal(size=(8, 2)).astype("float32"))
    y = norm(L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(y)))
    model = keras.Model(inp, y)
    rng = np.random.default_rng(2)
    for w in model.weights:  # distinct values everywhere, so a mix-up cannot pass
        w.assign(rng.normal(size=w.shape).astype("float32") if w.dtype == "float32" else w.value)
    d = tmp_path_factory.mktemp("keras_reader")
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    model.save_weights(d / "m.weights.h5")
    return model, d


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.weights.h5"])
def test_built_model_matches_get_weights(odd_layers, name):
    model, d = odd_layers
    expected = expected_from_keras(model)
    s = kreader.read(d / name)
    assert set(s) == set(expected)
    for k, a in expected.items():
        if k.endswith(".count"):  # Normalization's scalar sample count is stored as shape (1,)
            a = a.reshape(tuple(s[k].shape))
        assert np.array_equal(s[k].numpy(), a), k
    assert "inner.in_conv.weight" in s and s.record("inner.in_bn.weight").layer == "inner.in_bn"
    assert s.record("prelu_ch.weight").tensor.shape == (4,) and s.record("prelu_full.weight").tensor.ndim == 3
    assert s.record("up.weight").kind == "conv_transpose" or name == "m.weights.h5"


def test_absent_batchnorm_affine_is_recorded(odd_layers):
    _, d = odd_layers
    s = kreader.read(d / "m.keras")
    assert "bn_plain.weight" not in s and "bn_plain.bias" not in s
    assert s.record("bn_plain.running_mean").meta["absent"] == ["weight", "bias"]
    assert s.record("bn_plain.running_mean").meta["eps"] == 1e-5
    assert s.record("bn_beta.bias").meta["absent"] == ["weight"]
    # Without a config, a 3-variable BatchNorm reads as scale=False (documented guess); with one it is exact.
    bare = kreader.read(d / "m.weights.h5")
    assert "bn_beta.bias" in bare and "bn_beta.weight" not in bare


# ---------------------------------------------------------------- dispatch, CLI and bad input

def test_graft_inspect_reads_every_kind(tmp_path):
    names = ["layout_zoo.keras", "layout_zoo.h5", "layout_zoo.weights.h5"]
    assert all(detect(fixture(f"keras/{n}")) == "keras" for n in names)
    r = run_graft("inspect", "--json", *[fixture(f"keras/{n}") for n in names])  # one process: imports are slow
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)["files"]
    for doc in docs:
        assert doc["format"] == "keras" and len(doc["tensors"]) == 18
        head = next(t for t in doc["tensors"] if t["name"] == "head.weight")
        assert head["shape"] == [7, 24] and head["kind"] == "linear" and head["layer"] == "head"
    bad = tmp_path / "seed_cnn.h5"
    bad.write_bytes(fixture("keras/seed_cnn.h5").read_bytes()[:4_000_000])
    r = run_graft("inspect", bad)
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["seed_cnn.keras", "seed_cnn.h5", "layout_zoo.weights.h5"])
@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_file_is_one_clear_error(tmp_path, name, keep):
    data = fixture(f"keras/{name}").read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GraftError, match="truncated or corrupt") as e:
        graftkit.read(bad)
    assert str(bad) in str(e.value) and "re-save or re-download" in str(e.value)


def test_corrupt_weights_inside_a_keras_archive(tmp_path):
    src = zipfile.ZipFile(fixture("keras/layout_zoo.keras"))
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for n in src.namelist():
            data = src.read(n)
            z.writestr(n, data[: len(data) // 3] if n == "model.weights.h5" else data)
    with pytest.raises(GraftError, match="truncated or corrupt"):
        kreader.read(bad)


def test_archive_member_paths_are_checked(tmp_path):
    src = zipfile.ZipFile(fixture("keras/layout_zoo.keras"))
    for evil in ("/etc/passwd", "../../x.h5", "a/../../b"):
        bad = tmp_path / "evil.keras"
        with zipfile.ZipFile(bad, "w") as z:
            for n in src.namelist():
                z.writestr(n, src.read(n))
            z.writestr(evil, b"x")
        with pytest.raises(GraftError, match="outside the archive"):
            kreader.read(bad)


def test_non_keras_hdf5_and_zip_are_refused(tmp_path):
    import h5py
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(GraftError, match="not a Keras"):
        kreader.read(tmp_path / "data.h5")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(GraftError, match="no config.json"):
        kreader.read(tmp_path / "empty.keras")


# ---------------------------------------------------------------- the weights in a hand-written PyTorch network

def test_seed_cnn_weights_run_in_a_hand_written_pytorch_cnn():
    """The reader's tensors drop into a plain PyTorch CNN (NCHW Flatten) and give Keras's outputs and 0.845."""
    import torch
    import torch.nn as nn
    from graftkit.nets.keras import chw_columns, flatten_feeds
    from test_nets_keras import seed_cnn_input
    from conftest import rel_err

    s = kreader.read(fixture("keras/seed_cnn.h5"))
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(2304, 512), nn.ReLU(), nn.Linear(512, 10), nn.Softmax(dim=1))
    feeds = flatten_feeds(s.graph, s.meta["keras_version"])
    assert feeds == {"dense_1": [6, 6, 64]}
    weights = [t if name != "dense_1.weight" else chw_columns(t, feeds["dense_1"]) for name, t in s.items()]
    params = [p for _, p in net.named_parameters()]
    assert [tuple(p.shape) for p in params] == [tuple(t.shape) for t in weights]
    with torch.no_grad():
        for p, t in zip(params, weights):
            p.copy_(t)
        x = seed_cnn_input(np.load(fixture("keras/seed_cnn.images_u8.npy")))
        probs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    expected = np.load(fixture("keras/seed_cnn.probs.npy"))
    assert rel_err(probs, expected) < 1e-5
    assert float((probs.argmax(1) == np.load(fixture("keras/seed_cnn.labels.npy"))).mean()) == 0.845


# ---------------------------------------------------------------- hostile HDF5: nothing outside the file is read

SECRET = np.frombuffer(b"TOP-SECRET-BYTES", dtype=np.float32)


def _legacy_weights_file(path, make_kernel):
    """A legacy weights .h5 (layer_names / weight_names) whose one kernel `make_kernel(group)` creates."""
    import h5py
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [b"dense"]
        g = h5.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0"]
        make_kernel(g.create_group("dense"))
    return path


def _secret_files(tmp_path):
    import h5py
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    with h5py.File(tmp_path / "secret.h5", "w") as h5:
        h5["data"] = SECRET.reshape(2, 2)
    return tmp_path


@pytest.mark.parametrize("kind", ["external_link", "external_storage", "virtual"])
def test_hdf5_weights_that_point_outside_the_file_are_refused(tmp_path, kind):
    import h5py
    _secret_files(tmp_path)

    def make(g):
        if kind == "external_link":
            g["kernel:0"] = h5py.ExternalLink("secret.h5", "/data")
        elif kind == "external_storage":
            g.create_dataset("kernel:0", shape=(2, 2), dtype="f4", external=[("secret.bin", 0, 16)])
        else:
            layout = h5py.VirtualLayout(shape=(2, 2), dtype="f4")
            layout[:] = h5py.VirtualSource("secret.h5", "data", shape=(2, 2))
            g.create_virtual_dataset("kernel:0", layout)

    path = _legacy_weights_file(tmp_path / "w.h5", make)
    with pytest.raises(GraftError, match="external link|external files|virtual dataset") as e:
        graftkit.read(path)
    assert "graftkit reads nothing outside" in str(e.value)


def test_a_declared_giant_dataset_without_data_is_refused_before_allocation(tmp_path):
    path = _legacy_weights_file(tmp_path / "w.h5",
                                lambda g: g.create_dataset("kernel:0", shape=(25000, 25000), dtype="f4"))
    assert path.stat().st_size < 100_000
    with pytest.raises(GraftError, match="more than the file could hold"):
        graftkit.read(path)


def test_a_group_that_links_to_itself_is_one_error(tmp_path):
    import h5py
    with h5py.File(tmp_path / "w.weights.h5", "w") as h5:
        layers = h5.create_group("layers")
        dense = layers.create_group("dense")
        dense["layers"] = layers  # a hard link back up: the layer tree never ends
    with pytest.raises(GraftError, match="nest more than 32 deep"):
        graftkit.read(tmp_path / "w.weights.h5")


def test_a_keras_archive_member_that_inflates_to_gibs_is_refused(tmp_path):
    import zipfile
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        with zf.open("model.weights.h5", "w", force_zip64=True) as f:
            chunk = b"\0" * 2**24
            for _ in range(16):  # 256 MiB of zeros, ~250 KB compressed
                f.write(chunk)
    assert path.stat().st_size < 2**20
    with pytest.raises(GraftError, match="inflates to more than"):
        graftkit.read(path)
