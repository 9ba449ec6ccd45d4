"""ONNX files whose weights sit in `Constant` nodes (paddle2onnx, some tf2onnx exports), not initializers:
read, inspected, converted and transplanted as completely as the initializer form, checked against onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

import graftkit

from conftest import rel_err, run_graft
from test_formats_onnx import _arr, _model


def _as_constants(model, via_identity: bool = False):
    """The same graph with every initializer moved into a Constant node, the way tf2onnx and
    paddle2onnx write them (paddle2onnx often reads them through an Identity)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = []
    for t in g.initializer:
        out = f"{t.name}_const" if via_identity else t.name
        value = onnx.TensorProto()
        value.CopyFrom(t)
        value.name = ""
        nodes.append(helper.make_node("Constant", [], [out], name=f"const_{t.name}", value=value))
        if via_identity:
            nodes.append(helper.make_node("Identity", [out], [t.name], name=f"id_{t.name}"))
    nodes += list(g.node)
    del g.initializer[:]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def _ort(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_constant_weights_are_read_like_initializers(tmp_path):
    model, inits = _model()
    onnx.save(model, tmp_path / "init.onnx")
    want = graftkit.read(tmp_path / "init.onnx")
    for via_identity in (False, True):
        path = tmp_path / f"const{int(via_identity)}.onnx"
        onnx.save(_as_constants(model, via_identity), path)
        ts = graftkit.read(path)
        suffix = "_const" if via_identity else ""  # an Identity's input names the tensor, as for initializers
        assert set(ts) == {n + suffix for n in inits}, sorted(ts)
        for name in inits:
            a, b = ts.record(name + suffix), want.record(name)
            assert (a.layer, a.kind, a.role) == (b.layer, b.kind, b.role), name
            assert torch.equal(a.tensor, b.tensor), name
        assert ts.record("bnV" + suffix).meta["eps"] == 1e-3
        r = run_graft("inspect", "--json", path)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert len(doc["tensors"]) == len(inits) == doc["totals"]["tensors"]


def test_transplant_from_constant_weights_into_own_conversion_copies_everything(tmp_path):
    model, _ = _model()
    const = _as_constants(model)
    path = tmp_path / "const.onnx"
    onnx.save(const, path)
    x = _arr(2, 4, 8, 8)
    expected = _ort(const, x)
    # The architecture comes from the same graph with other weights, so only the transplant explains the output.
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for t in other.graph.initializer:
        t.CopyFrom(onnx.numpy_helper.from_array(np.abs(onnx.numpy_helper.to_array(t)) * 1.5 + 0.1, t.name))
    onnx.save(_as_constants(other), tmp_path / "other.onnx")
    pkg = tmp_path / "arch.safetensors"
    r = run_graft("convert", tmp_path / "other.onnx", "-o", pkg)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "grafted.safetensors"
    r = run_graft("transplant", path, "--into", pkg, "-o", out, "--json", "--strict")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    summary = rep["summary"]
    # Every tensor but BatchNorm's step counter (which ONNX does not have) is copied; nothing is unused.
    assert summary["left"] == summary["left_harmless"] == 1 and summary["unused_source_tensors"] == 0, summary
    assert summary["copied"] == summary["target_tensors"] - 1 == 11, summary
    # onnx2torch keeps MatMul's constant [in, out] and the Add's bias apart from any module: they pair with
    # the reader's [out, in] dense weight and its bias all the same.
    by_source = {e["source"]: e for e in rep["parameters"]}
    assert by_source["mmW"]["shape"] == [3, 5] and by_source["mmB"]["status"] == "copied"
    net = graftkit.load(out)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    err = rel_err(got, expected)
    assert err < 1e-5, err
