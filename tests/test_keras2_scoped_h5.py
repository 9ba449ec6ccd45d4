"""Keras 2.0-2.3 `.h5` files whose layer weights sit under a uniquified scope (layer `conv2d_1` holding
`conv2d_1_1/kernel:0`): read the way Keras pairs them (by layer, then by position), checked against
Keras 3 loading the same file into the same architecture."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import graftkit

from conftest import fixture, rel_err, require
from test_nets_keras import _run, keras2_style_h5


def _scoped(src, dst, *, with_config: bool = True) -> dict[str, list[np.ndarray]]:
    """Rewrite a Keras 2 style .h5 as Keras 2.2.4 wrote a model built twice in one TensorFlow graph:
    `conv/conv_1/kernel:0`, and for BatchNorm a doubled scope `bn/bn/bn_1/gamma:0`. The values are
    new random ones (variances positive), so that only this file can explain the outputs."""
    rng = np.random.default_rng(3)
    values: dict[str, list[np.ndarray]] = {}
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        g.attrs["keras_version"], g.attrs["backend"] = "2.2.4", "tensorflow"
        if with_config:
            g.attrs["model_config"] = f.attrs["model_config"]
        root, out = f["model_weights"], g.create_group("model_weights")
        out.attrs["keras_version"], out.attrs["backend"] = "2.2.4", "tensorflow"
        out.attrs["layer_names"] = root.attrs["layer_names"]
        for lname in (n.decode() if isinstance(n, bytes) else n for n in root.attrs["layer_names"]):
            grp, names = out.create_group(lname), []
            for wn in root[lname].attrs["weight_names"]:
                wn = wn.decode() if isinstance(wn, bytes) else wn
                var = wn.split("/")[-1]
                a = root[lname][wn][()]
                new_value = rng.standard_normal(a.shape).astype(a.dtype) * float(np.abs(a).mean() + 0.1)
                if "variance" in var:
                    new_value = np.abs(new_value) + 0.5
                scope = f"{lname}/{lname}_1" if "moving" in var or "gamma" in var or "beta" in var \
                    else f"{lname}_1"
                name = f"{scope}/{var}"
                grp[name] = new_value
                names.append(name.encode())
                values.setdefault(lname, []).append(new_value)
            grp.attrs["weight_names"] = names
    return values


@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    d = tmp_path_factory.mktemp("k2scoped")
    keras2_style_h5(fixture("keras/layout_zoo.h5"), d / "k2.h5")
    values = _scoped(d / "k2.h5", d / "scoped.h5")
    _scoped(d / "k2.h5", d / "scoped_weights.h5", with_config=False)
    return d, values


def _keras_oracle(weights_path, x):
    keras = require("keras")
    model = keras.saving.load_model(fixture("keras/layout_zoo.keras"), compile=False)
    model.load_weights(str(weights_path))  # Keras's own legacy-h5 loader: by layer, then by position
    return np.asarray(model.predict(x, verbose=0))


def test_scoped_weights_read_as_their_layer(scoped):
    d, values = scoped
    for path in (d / "scoped.h5", d / "scoped_weights.h5"):
        ts = graftkit.read(path)
        ref = graftkit.read(fixture("keras/layout_zoo.keras"))
        assert list(ts) == list(ref), (path.name, list(ts)[:6])
        for name in ref:
            assert ts[name].shape == ref[name].shape, name
            assert ts.record(name).kind == ref.record(name).kind, name
    # One check of the numbers: the first convolution's kernel, HWIO -> OIHW.
    first = graftkit.read(d / "scoped.h5")
    k = values["stem_conv"][0]
    assert torch.equal(first["stem_conv.weight"], torch.from_numpy(np.moveaxis(k, (-1, -2), (0, 1)).copy()))


def test_scoped_h5_converts_like_keras_loads_it(scoped):
    d, _ = scoped
    x = np.load(fixture("keras/layout_zoo.input_nhwc.npy"))
    expected = _keras_oracle(d / "scoped.h5", x)
    # Keras really loaded the file's new values (not the architecture file's own weights).
    assert rel_err(expected, np.load(fixture("keras/layout_zoo.output.npy"))) > 0.1
    for files in ([d / "scoped.h5"], [fixture("keras/layout_zoo.keras"), d / "scoped_weights.h5"]):
        net = graftkit.convert(files)
        err = rel_err(_run(net, x), expected)
        print(f"{files[-1].name}: max relative error vs Keras 3 {err:.2e}")
        assert err < 1e-5, (files[-1].name, err)
