"""Keras models converted to torch modules reproduce Keras's own outputs (fixtures, and a model built here)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

import graftkit
from graftkit.errors import GraftError
from graftkit.nets import keras as nk
from graftkit.nets.keras_layers.base import our_axis
from graftkit.nets.keras_layers.pooling import Pool

from conftest import cases, fixture, rel_err, require, run_graft

TARGET_RTOL = 1e-5


def _run(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def seed_cnn_input(images_u8: np.ndarray) -> np.ndarray:
    """The fixtures README's preprocessing, NHWC: pad 2 px to 32x32, /255, 3 channels."""
    x = np.pad(images_u8, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    return np.repeat(x[..., None], 3, axis=-1)


def _model_files(case: dict) -> list:
    paths = [fixture(m) for m in case["model"]]
    if all(p.name.endswith(".weights.h5") for p in paths):
        # A bare weights file has no architecture: pair it with the model it was saved from.
        paths = [fixture(case["model"][0].replace(".weights.h5", ".keras")), *paths]
    return paths


@pytest.mark.parametrize("case", cases("keras"), ids=lambda c: c["id"])
def test_manifest_case_matches_keras(case):
    net = graftkit.convert(_model_files(case))
    (in_name, in_rel), = case["input"].items()
    (out_name, out_rel), = case["expected"].items()
    x = np.load(fixture(in_rel))
    if x.dtype == np.uint8:
        x = seed_cnn_input(x)
    expected = np.load(fixture(out_rel))
    got = _run(net, x)
    err = rel_err(got, expected)
    assert err < min(case["rtol"], TARGET_RTOL), (case["id"], err)
    if "labels" in case:  # the seed CNN: Keras's accuracy on its 1,000 images is 0.845
        labels = np.load(fixture(case["labels"]))
        assert float((got.argmax(1) == labels).mean()) == 0.845
        assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_metadata_and_package_round_trip(tmp_path):
    net = graftkit.convert(fixture("keras/layout_zoo.keras"))
    meta = net.graftkit_meta
    assert meta["spec"]["converter"] == "keras" and meta["spec"]["config"]["class_name"] == "Functional"
    assert meta["preprocessing"]["input_size"] == [3, 33, 32]
    assert meta["extra"]["outputs"] == ["head"]
    assert "stem_conv.weight" in net.state_dict() and net.stem_conv.weight.shape == (16, 3, 3, 3)
    out = tmp_path / "zoo.safetensors"
    graftkit.save(net, out)
    again = graftkit.load(out)  # rebuilt from the spec alone
    x = np.load(fixture("keras/layout_zoo.input_nhwc.npy"))
    assert np.array_equal(_run(net, x), _run(again, x))


def keras2_style_h5(src, dst) -> None:
    """Rewrite a Keras 3 legacy .h5 the way Keras 2 (tf.keras) wrote it: `batch_input_shape`, list-style
    inbound nodes, `name:0` variable names, `depthwise_kernel` for DepthwiseConv2D."""
    import h5py
    with h5py.File(src, "r") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            cfg = layer["config"]
            if "batch_shape" in cfg:
                cfg["batch_input_shape"] = cfg.pop("batch_shape")
            layer["inbound_nodes"] = [[[*ref, {}] for ref in nk._node_inputs(node)[0]]
                                      for node in layer["inbound_nodes"]]
        for key in ("input_layers", "output_layers"):
            config["config"][key] = [config["config"][key]]
        root = f["model_weights"]
        with h5py.File(dst, "w") as g:
            g.attrs["keras_version"], g.attrs["backend"] = "2.13.1", "tensorflow"
            g.attrs["model_config"] = json.dumps(config)
            out = g.create_group("model_weights")
            out.attrs["layer_names"] = root.attrs["layer_names"]
            for lname in root.attrs["layer_names"]:
                lname = lname.decode() if isinstance(lname, bytes) else lname
                grp, names = out.create_group(lname), []
                for wn in root[lname].attrs["weight_names"]:
                    wn = wn.decode() if isinstance(wn, bytes) else wn
                    new = f"{lname}/{wn.split('/')[-1]}:0"
                    if lname.startswith("dw1") and new.endswith("/kernel:0"):
                        new = new.replace("/kernel:0", "/depthwise_kernel:0")
                    grp[new] = root[lname][wn][()]
                    names.append(new.encode())
                grp.attrs["weight_names"] = names


def test_keras2_style_h5_converts(tmp_path):
    path = tmp_path / "zoo_k2.h5"
    keras2_style_h5(fixture("keras/layout_zoo.h5"), path)
    ours = graftkit.read(path)
    ref = graftkit.read(fixture("keras/layout_zoo.keras"))
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    net = graftkit.convert(path)
    got = _run(net, np.load(fixture("keras/layout_zoo.input_nhwc.npy")))
    assert rel_err(got, np.load(fixture("keras/layout_zoo.output.npy"))) < TARGET_RTOL


def test_channels_last_input_is_a_clear_error():
    net = graftkit.convert(fixture("keras/layout_zoo.keras"))
    with pytest.raises(GraftError, match="channels last"):
        net(torch.zeros(1, 33, 32, 3))


def test_weights_file_must_come_with_its_architecture():
    with pytest.raises(GraftError, match="no architecture|model file"):
        graftkit.convert(fixture("keras/layout_zoo.weights.h5"))


# ---------------------------------------------------------------- a model built here, with Keras as the oracle

@pytest.fixture(scope="module")
def keras():
    return require("keras")


def build_layer_zoo(keras):
    """Layer types the fixtures do not cover, on an odd-sized input so `same` padding is asymmetric."""
    L = keras.layers
    rng = np.random.default_rng(0)
    inp = keras.Input((15, 14, 3), name="img")
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
    norm = L.Normalization(axis=-1, name="norm")
    norm.adapt(rng.uniform(-1, 1, (16, 15, 14, 3)).astype("float32") * np.array([1, 2, 3], "float32"))
    x = norm(x)
    x = L.ZeroPadding2D(((1, 2), (0, 1)), name="zpad")(x)                                  # 18x15
    c1 = L.Conv2D(8, 3, strides=2, padding="same", activation="hard_sigmoid", name="c1")(x)  # 9x8
    c2 = L.Conv2D(8, (2, 3), strides=2, padding="same", use_bias=False, name="c2")(x)
    c2 = L.BatchNormalization(scale=False, epsilon=1e-2, name="bn_noscale")(c2)
    c2 = L.LeakyReLU(negative_slope=0.1, name="lrelu")(c2)
    c3 = L.Conv2D(8, 3, padding="same", dilation_rate=2, groups=2, activation="gelu", name="c3")(c1)
    c3 = L.PReLU(shared_axes=[1, 2], name="prelu")(c3)
    m = L.Multiply(name="mul")([c1, c2])
    s = L.Subtract(name="sub")([m, c3])
    av = L.Average(name="avg")([s, c1])
    mx = L.Maximum(name="max")([av, c3])
    cat = L.Concatenate(name="cat")([mx, s])                                                 # 9x8x16
    # Symmetric `same` padding here: Keras's torch backend pads asymmetric average pooling by replicating
    # edges, unlike TensorFlow and Keras's documentation (see test_same_average_pooling_excludes_padding).
    ap = L.AveragePooling2D(3, strides=1, padding="same", name="apool")(cat)                 # 9x8
    up = L.UpSampling2D(2, name="up")(ap)                                                    # 18x16
    crop = L.Cropping2D(((1, 8), (0, 8)), name="crop")(up)                                   # 9x8
    add = L.Add(name="add")([crop, cat])
    add = L.SpatialDropout2D(0.3, name="sdrop")(add)
    dt = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="elu", name="deconv")(add)  # 18x16
    dw = L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same", activation="relu6", name="dw")(dt)
    mp = L.MaxPooling2D(2, strides=1, padding="same", name="mpool")(dw)
    sep = L.SeparableConv2D(6, 3, depth_multiplier=2, activation="swish", name="sep")(mp)    # 7x6x6
    inner = keras.Sequential([L.Conv2D(4, 1, name="inner_conv"),
                              L.ReLU(max_value=3.0, negative_slope=0.1, threshold=0.5, name="inner_relu")],
                             name="inner")
    nested = inner(sep)                                                                      # 7x6x4
    gmp = L.GlobalMaxPooling2D(keepdims=True, name="gmp")(nested)
    flat = L.Flatten(name="flat")(gmp)
    dn = L.Dense(5, activation="tanh", name="dense_nd")(nested)                              # 7x6x5
    pm = L.Permute((2, 1, 3), name="perm")(dn)
    rs = L.Reshape((21, 10), name="reshape")(pm)
    rs = L.ELU(alpha=0.5, name="elu")(rs)
    joined = L.Concatenate(axis=-1, name="join")([flat, L.Flatten(name="flat2")(rs)])
    joined = L.Dropout(0.5, name="drop")(joined)
    probs = L.Dense(3, activation="softmax", name="probs")(joined)
    heat = L.UpSampling2D((2, 3), interpolation="bilinear", name="smooth")(L.Activation("sigmoid", name="sig")(nested))
    heat = L.Softmax(axis=-1, name="heat")(heat)
    model = keras.Model(inp, [probs, heat], name="layer_zoo")
    for layer in model.layers:  # non-trivial BatchNorm statistics and PReLU slopes
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape).astype("float32"))
        if isinstance(layer, L.PReLU):
            layer.alpha.assign(rng.uniform(0, 0.5, layer.alpha.shape).astype("float32"))
    x = rng.uniform(0, 255, (2, 15, 14, 3)).astype("float32")
    return model, x


@pytest.fixture(scope="module")
def layer_zoo(keras, tmp_path_factory):
    model, x = build_layer_zoo(keras)
    expected = [keras.ops.convert_to_numpy(t) for t in model(x, training=False)]
    d = tmp_path_factory.mktemp("keras_zoo")
    model.save(d / "zoo.keras")
    model.save(d / "zoo.h5")
    model.save_weights(d / "zoo.weights.h5")
    return d, x, expected


@pytest.mark.parametrize("files", [["zoo.keras"], ["zoo.h5"], ["zoo.h5", "zoo.weights.h5"]])
def test_layers_built_here_match_keras(layer_zoo, files):
    d, x, (probs, heat) = layer_zoo
    net = graftkit.convert([d / f for f in files])
    with torch.no_grad():
        out = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert set(out) == {"probs", "heat"}                 # several outputs: a dict by Keras layer name
    assert rel_err(out["probs"].numpy(), probs) < TARGET_RTOL
    assert rel_err(out["heat"].numpy(), heat.transpose(0, 3, 1, 2)) < TARGET_RTOL  # returned NCHW
    if files == ["zoo.keras"]:  # a package rebuilds the same function from its spec alone
        graftkit.save(net, d / "zoo.safetensors")
        with torch.no_grad():
            again = graftkit.load(d / "zoo.safetensors")(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        assert torch.equal(again["probs"], out["probs"]) and torch.equal(again["heat"], out["heat"])
    pre = net.graftkit_meta["preprocessing"]
    assert [p["op"] for p in pre["in_model"]] == ["rescaling", "normalization"]
    assert pre["in_model"][0]["offset"] == -1.0 and pre["input_size"] == [3, 15, 14]


def test_graph_features_match_keras(keras, tmp_path):
    """Two inputs, a shared layer called twice, LayerNormalization, Keras operations with constants, a nested
    Functional model, valid Conv2DTranspose, BatchNorm without gamma/beta, unshared PReLU, Normalization on a
    vector, and Conv1D/pooling 1-D."""
    L = keras.layers
    rng = np.random.default_rng(3)
    a_in, b_in = keras.Input((7, 6, 2), name="a"), keras.Input((7, 6, 2), name="b")
    shared = L.Conv2D(3, 3, padding="same", name="train")  # a name torch modules cannot take as is
    x = L.Add(name="sum")([shared(a_in), shared(b_in)])
    x = L.LayerNormalization(name="ln")(x)
    x = keras.ops.relu6(x * 2.0 + 3.0) / 6.0  # Keras operations on symbolic tensors (MobileNetV3's hard sigmoid)
    t_in = keras.Input((7, 6, 3))
    t = L.Conv2DTranspose(4, 3, strides=2, name="tconv")(t_in)                          # valid: 15x13
    t = L.BatchNormalization(scale=False, center=False, name="bn_plain")(t)
    t = L.PReLU(name="prelu_full")(t)
    sub = keras.Model(t_in, t, name="sub")
    y = sub(x)
    y = L.Reshape((15 * 13, 4), name="seq")(y)
    y = L.Conv1D(3, 4, strides=2, padding="same", name="c1d")(y)
    y = L.MaxPooling1D(3, padding="same", name="mp1d")(y)
    v = L.GlobalAveragePooling1D(name="gap1d")(y)
    norm = L.Normalization(name="vnorm")
    norm.adapt(rng.normal(size=(9, 3)).astype("float32"))
    out = L.Dense(2, name="out")(norm(v))
    model = keras.Model([a_in, b_in], [out, y])
    for w in model.weights:
        if w.dtype == "float32":
            w.assign(rng.uniform(0.2, 1.0, w.shape).astype("float32"))
    xa, xb = (rng.normal(size=(2, 7, 6, 2)).astype("float32") for _ in range(2))
    expected = [keras.ops.convert_to_numpy(t) for t in model([xa, xb], training=False)]
    model.save(tmp_path / "g.keras")
    net = graftkit.convert(tmp_path / "g.keras")
    nchw = [torch.from_numpy(v.transpose(0, 3, 1, 2).copy()) for v in (xa, xb)]
    with torch.no_grad():
        out = net(*nchw)
        by_name = net({"a": nchw[0], "b": nchw[1]})
    assert list(out) == ["out", "mp1d"]
    assert rel_err(out["out"].numpy(), expected[0]) < TARGET_RTOL
    assert rel_err(out["mp1d"].numpy(), expected[1].transpose(0, 2, 1)) < TARGET_RTOL  # (N, C, L)
    assert torch.equal(by_name["out"], out["out"])
    assert "sub.tconv.weight" in net.state_dict() and "train_.weight" in net.state_dict()
    assert net.source_name("train_.weight") == "train.weight" and net.layer_of["train_"] == "train"


@pytest.fixture(scope="module")
def embedding_model(keras, tmp_path_factory):
    """A text-and-grid model: Embedding on token ids (N, L) feeding Conv1D, and on a grid of ids (N, H, W)
    feeding Conv2D; one output is an embedding itself."""
    L = keras.layers
    rng = np.random.default_rng(5)
    tokens, grid = keras.Input((12,), dtype="int32", name="tokens"), keras.Input((4, 5), dtype="int32", name="grid")
    seq = L.Embedding(50, 8, name="embed")(tokens)                                    # (N, 12, 8)
    t = L.Conv1D(6, 3, padding="same", activation="relu", name="conv1d")(seq)
    t = L.GlobalMaxPooling1D(name="gmp")(t)
    g = L.Embedding(7, 3, name="cell_embed")(grid)                                     # (N, 4, 5, 3)
    g = L.Conv2D(4, 3, name="conv2d")(g)
    g = L.GlobalAveragePooling2D(name="gap")(g)
    out = L.Dense(3, activation="softmax", name="out")(L.Concatenate(name="cat")([t, g]))
    model = keras.Model([tokens, grid], [out, seq])
    x = [rng.integers(0, 50, (2, 12)).astype("int32"), rng.integers(0, 7, (2, 4, 5)).astype("int32")]
    expected = [keras.ops.convert_to_numpy(v) for v in model(x, training=False)]
    d = tmp_path_factory.mktemp("keras_embedding")
    model.save(d / "emb.keras")
    model.save(d / "emb.h5")
    model.save_weights(d / "emb.weights.h5")
    return d, x, expected


@pytest.mark.parametrize("files", [["emb.keras"], ["emb.h5"], ["emb.h5", "emb.weights.h5"]])
def test_embedding_matches_keras(embedding_model, files, tmp_path):
    d, (tokens, grid), (out, seq) = embedding_model
    net = graftkit.convert([d / f for f in files])
    ids = [torch.from_numpy(tokens), torch.from_numpy(grid.transpose(0, 2, 1).copy())]  # rank 3: channels first
    with torch.no_grad():
        got = net(*ids)
    assert rel_err(got["out"].numpy(), out) < TARGET_RTOL
    assert rel_err(got["embed"].numpy(), seq.transpose(0, 2, 1)) < TARGET_RTOL  # (N, D, L): channels first
    assert net.embed.weight.shape == (50, 8) and net.cell_embed.weight.shape == (7, 3)
    graftkit.save(net, tmp_path / "emb.safetensors")  # a package rebuilds it from the spec alone
    with torch.no_grad():
        assert torch.equal(graftkit.load(tmp_path / "emb.safetensors")(*ids)["out"], got["out"])


def test_embedding_mask_is_refused(keras, tmp_path):
    L = keras.layers
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    y = L.GlobalAveragePooling1D(name="gap")(L.Embedding(9, 4, mask_zero=True, name="masked")(tokens))  # masked mean
    keras.Model(tokens, y).save(tmp_path / "masked.keras")
    with pytest.raises(GraftError) as e:
        graftkit.convert(tmp_path / "masked.keras")
    msg = str(e.value)
    # (Keras 3 saves the mask as a NotEqual operation, also refused)
    assert msg.startswith(f"{tmp_path / 'masked.keras'}: unsupported Keras layers: Embedding(mask_zero=True) "
                          "(used by masked); operation NotEqual") and "graft transplant" in msg


def test_masking_zeroes_masked_steps_as_keras(keras, tmp_path):
    L = keras.layers
    x_in = keras.Input((5, 3), name="x")
    y = L.Dense(2, name="d")(L.Masking(mask_value=-1.0, name="mask")(x_in))
    model = keras.Model(x_in, y)
    model.save(tmp_path / "masking.keras")
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    x[0, 2, :] = -1.0  # a masked step: Keras zeroes it before the Dense
    expected = keras.ops.convert_to_numpy(model(x))
    net = graftkit.convert(tmp_path / "masking.keras")
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()
    assert rel_err(got, expected.transpose(0, 2, 1)) < TARGET_RTOL


def test_keras_axes_map_to_channels_first():
    x = torch.randn(2, 5, 3, 4)  # ours: N, C, H, W  <->  Keras: N, H, W, C
    k = x.permute(0, 2, 3, 1)
    for axis in (-1, 1, 2, 3, -3):
        ours = torch.cat([x, x * 2], dim=our_axis(axis, 4))
        assert torch.equal(ours.permute(0, 2, 3, 1), torch.cat([k, k * 2], dim=axis))
    assert our_axis(-1, 2) == 1 and our_axis(1, 3) == 2 and our_axis(2, 3) == 1


def test_same_average_pooling_excludes_padding():
    """TensorFlow's (and Keras's documented) `same` AVG pooling, odd padding after: mean of the real values."""
    x = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).reshape(2, 3, 5, 4).sin()
    pool = Pool("avg", 2, (3, 2), (2, 2), "same")
    got = pool(x)
    a = x.numpy()
    expected = np.zeros((2, 3, 3, 2), np.float32)
    for i in range(3):          # H: 5 -> 3, total pad 2 -> (1, 1); W: 4 -> 2, total pad 0
        for j in range(2):
            h0, w0 = i * 2 - 1, j * 2
            win = a[:, :, max(h0, 0):min(h0 + 3, 5), max(w0, 0):min(w0 + 2, 4)]
            expected[:, :, i, j] = win.mean(axis=(2, 3))
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    pool = Pool("avg", 2, (2, 2), (2, 2), "same")  # H: 5 -> 3, total pad 1 -> (0, 1): the last row alone
    got = pool(x).numpy()
    assert np.allclose(got[:, :, 2, 0], a[:, :, 4, 0:2].mean(axis=2), atol=1e-6)


# ---------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def custom_model_file(keras, tmp_path_factory):
    @keras.saving.register_keras_serializable(package="graftkit_tests")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inp = keras.Input((4, 4, 3), name="x")
    y = keras.layers.Conv2D(2, 1, name="conv")(inp)
    y = Twice(name="twice_a")(y)
    y = Twice(name="twice_b")(y)
    model = keras.Model(inp, y)
    path = tmp_path_factory.mktemp("keras_custom") / "custom.keras"
    model.save(path)
    return path


def test_custom_layer_is_one_clear_error(custom_model_file, tmp_path):
    with pytest.raises(GraftError) as e:
        graftkit.convert(custom_model_file)
    msg = str(e.value)
    assert "Twice" in msg and "twice_a" in msg and "twice_b" in msg and "graft transplant" in msg
    out = tmp_path / "out.safetensors"
    r = run_graft("convert", custom_model_file, "-o", out)
    assert r.returncode == 2 and "Twice" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_custom_layer_is_refused_before_reading_weights(custom_model_file, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were read before the custom layer was refused")
    monkeypatch.setattr(nk.kfile, "read_with_config", boom)
    with pytest.raises(GraftError, match="Twice"):
        graftkit.convert(custom_model_file)


def test_malformed_config_is_one_clear_error(tmp_path):
    src = zipfile.ZipFile(fixture("keras/layout_zoo.keras"))
    config = json.loads(src.read("config.json"))
    del config["config"]["layers"][1]["config"]["filters"]  # stem_conv loses its filter count
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for n in src.namelist():
            z.writestr(n, json.dumps(config) if n == "config.json" else src.read(n))
    with pytest.raises(GraftError, match="malformed"):
        graftkit.convert(bad)


@pytest.mark.parametrize("name", ["layout_zoo.keras", "layout_zoo.h5"])
def test_truncated_files_are_one_clear_error(tmp_path, name):
    data = fixture(f"keras/{name}").read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraftError, match="truncated or corrupt"):
        graftkit.convert(bad)


def test_archive_member_outside_the_archive_is_refused(tmp_path):
    src = zipfile.ZipFile(fixture("keras/layout_zoo.keras"))
    bad = tmp_path / "evil.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for n in src.namelist():
            z.writestr(n, src.read(n))
        z.writestr("../escape.txt", b"x")
    with pytest.raises(GraftError, match="outside the archive"):
        graftkit.convert(bad)
    assert not (tmp_path.parent / "escape.txt").exists()


# ---------------------------------------------------------------- Keras Applications (slow: Keras builds them)

APPLICATIONS = {"MobileNetV2": dict(alpha=0.35), "MobileNetV3Small": {}, "ResNet50": {}, "EfficientNetB0": {},
                "Xception": {}, "InceptionV3": {}, "DenseNet121": {}, "VGG16": {}}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(APPLICATIONS))
def test_keras_applications_match_keras(keras, tmp_path, arch):
    size = {"Xception": 71, "InceptionV3": 75}.get(arch, 64)
    model = getattr(keras.applications, arch)(weights=None, input_shape=(size, size, 3), classes=5,
                                               **APPLICATIONS[arch])
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm statistics that matter
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape).astype("float32"))
    x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    model.save(tmp_path / "app.keras")
    got = _run(graftkit.convert(tmp_path / "app.keras"), x)
    assert rel_err(got, expected) < TARGET_RTOL
