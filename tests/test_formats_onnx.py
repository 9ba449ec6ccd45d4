"""ONNX initializers: roles from the consuming node, PyTorch layout, checked against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import graftkit
from graftkit.errors import GraftError

from conftest import run_graft

RNG = np.random.default_rng(0)


def _arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _model():
    """x -> Conv(4->6, 3x3, pad 1) -> BatchNorm(eps 1e-3) -> PRelu -> GlobalAveragePool -> Flatten
         -> Gemm(transB=0, 6->5) -> MatMul(5->3) + Add -> y"""
    inits = {"convW": _arr(6, 4, 3, 3), "convB": _arr(6), "bnS": _arr(6), "bnB": _arr(6), "bnM": _arr(6),
             "bnV": np.abs(_arr(6)) + 0.5, "slope": _arr(6, 1, 1) * 0.1, "gemmW": _arr(6, 5), "gemmB": _arr(5),
             "mmW": _arr(5, 3), "mmB": _arr(3)}
    nodes = [helper.make_node("Conv", ["x", "convW", "convB"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bnS", "bnB", "bnM", "bnV"], ["b"], name="bn1",
                              epsilon=1e-3),
             helper.make_node("PRelu", ["b", "slope"], ["p"], name="prelu1"),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "gemmW", "gemmB"], ["h"], name="fc1", transB=0),
             helper.make_node("MatMul", ["h", "mmW"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "mmB"], ["y"], name="fc2_bias")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, inits


def test_roles_layout_and_order(tmp_path):
    model, inits = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    ts = graftkit.read(path)
    assert ts.format == "onnx" and ts.meta["opset"] == 17
    expect = {"convW": ("conv1", "conv", "weight"), "convB": ("conv1", "conv", "bias"),
              "bnS": ("bn1", "batchnorm", "weight"), "bnB": ("bn1", "batchnorm", "bias"),
              "bnM": ("bn1", "batchnorm", "running_mean"), "bnV": ("bn1", "batchnorm", "running_var"),
              "slope": ("prelu1", "prelu", "weight"), "gemmW": ("fc1", "linear", "weight"),
              "gemmB": ("fc1", "linear", "bias"), "mmW": ("fc2", "linear", "weight"), "mmB": ("fc2", "linear", "bias")}
    for name, (layer, kind, role) in expect.items():
        r = ts.record(name)
        assert (r.layer, r.kind, r.role) == (layer, kind, role), name
    assert ts.record("bnV").meta["eps"] == 1e-3
    assert list(ts.layers()) == ["conv1", "bn1", "prelu1", "fc1", "fc2"]
    # Linear weights in PyTorch's [out, in]; PReLU slope as (C,).
    assert torch.equal(ts["gemmW"], torch.from_numpy(inits["gemmW"].T))
    assert torch.equal(ts["mmW"], torch.from_numpy(inits["mmW"].T))
    assert ts["slope"].shape == (6,)
    assert torch.equal(ts["convW"], torch.from_numpy(inits["convW"]))

    # The tensors, used the PyTorch way, give onnxruntime's output.
    x = _arr(2, 4, 8, 8)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    t = torch.from_numpy(x)
    t = F.conv2d(t, ts["convW"], ts["convB"], padding=1)
    t = F.batch_norm(t, ts["bnM"], ts["bnV"], ts["bnS"], ts["bnB"], eps=ts.record("bnV").meta["eps"])
    t = F.prelu(t, ts["slope"])
    t = F.linear(t.mean((2, 3)), ts["gemmW"], ts["gemmB"])
    t = F.linear(t, ts["mmW"], ts["mmB"])
    assert np.abs(t.numpy() - expected).max() / np.abs(expected).max() < 1e-5


def test_external_data_inside_folder_only(tmp_path):
    model, inits = _model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    ts = graftkit.read(path)
    assert torch.equal(ts["convW"], torch.from_numpy(inits["convW"]))
    # A model whose external data points outside its folder is refused, whatever the file there.
    evil = onnx.load(path, load_external_data=False)
    (tmp_path / "sub").mkdir()
    for t in evil.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../ext.data"
    onnx.save(evil, tmp_path / "sub" / "evil.onnx")
    with pytest.raises(GraftError, match="outside the model's folder"):
        graftkit.read(tmp_path / "sub" / "evil.onnx")
    (tmp_path / "ext.data").unlink()
    with pytest.raises(GraftError, match="external data"):
        graftkit.read(path)


def test_truncated_and_corrupt(tmp_path):
    model, _ = _model()
    data = model.SerializeToString()
    bad = tmp_path / "bad.onnx"
    for broken in (data[: len(data) // 2], data[:-9], b"\xff" * 64):
        bad.write_bytes(broken)
        with pytest.raises(GraftError, match="bad.onnx"):
            graftkit.read(bad)
    r = run_graft("inspect", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_inspect_json(tmp_path):
    model, _ = _model()
    onnx.save(model, tmp_path / "m.onnx")
    r = run_graft("inspect", "--json", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    import json
    doc = json.loads(r.stdout)
    assert {t["name"]: t["shape"] for t in doc["tensors"]}["gemmW"] == [5, 6]


def test_an_external_data_length_of_ten_terabytes_is_refused_before_reading(tmp_path):
    model, _ = _model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    bomb = onnx.load(path, load_external_data=False)
    for e in bomb.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = str(10**13)
    onnx.save(bomb, path)
    with pytest.raises(GraftError, match=r"claims bytes 0\.\.10,000,000,000,000 of a"):
        graftkit.read(path)
