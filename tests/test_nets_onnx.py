"""ONNX -> torch conversion: real torchvision/timm exports checked against onnxruntime."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from onnx import TensorProto, helper

import graftkit
from graftkit.errors import GraftError

from conftest import random_bn, rel_err, run_graft

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_lite0": lambda: timm.create_model("efficientnet_lite0", num_classes=10),
}


def _export(net: nn.Module, path, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          **kwargs)


def _ort(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_model_matches_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / f"{name}.onnx"
    _export(random_bn(MODELS[name](), seed=1), path, x, output_names=["logits"])
    net = graftkit.convert(path)
    assert net.graftkit_meta["spec"]["converter"] == "onnx"
    assert net.graftkit_meta["provenance"]["onnxruntime_max_rel_err"] < 1e-5
    x2 = torch.randn(2, 3, 64, 64)  # not the input used for export
    with torch.no_grad():
        ours = net(x2)
    (expected,) = _ort(path, {"input": x2.numpy()})
    assert rel_err(ours.numpy(), expected) < 1e-5


def test_package_rebuilds_from_weightless_graph(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 48, 48)
    path = tmp_path / "m.onnx"
    _export(random_bn(MODELS["mobilenet_v3_small"](), seed=1), path, x)
    net = graftkit.convert(path)
    spec_graph = net.graftkit_meta["spec"]["graph"]
    assert len(spec_graph) < path.stat().st_size / 4  # the weights are not in the spec
    pkg = graftkit.save(net, tmp_path / "m.safetensors")
    back = graftkit.load(pkg)
    with torch.no_grad():
        assert rel_err(back(x).numpy(), net(x).numpy()) < 1e-6


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.cls, self.box = nn.Linear(8, 4), nn.Linear(8, 2)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return self.cls(f), torch.sigmoid(self.box(f))


def test_several_outputs_come_back_by_name(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "two.onnx"
    _export(_TwoHeads(), path, x, output_names=["scores", "boxes"])
    net = graftkit.convert(path)
    with torch.no_grad():
        out = net(x)
    assert set(out) == {"scores", "boxes"}
    scores, boxes = _ort(path, {"input": x.numpy()})
    assert rel_err(out["scores"].numpy(), scores) < 1e-5 and rel_err(out["boxes"].numpy(), boxes) < 1e-5


def test_unknown_op_named_with_its_nodes(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r1"),
             helper.make_node("WarpField", ["a"], ["b"], name="warp1", domain="com.example"),
             helper.make_node("WarpField", ["b"], ["y"], name="warp2", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(GraftError, match=r"WarpField \(used by warp1, warp2\)"):
        graftkit.convert(path)
    r = run_graft("convert", path, "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "WarpField" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_truncated_model_refused(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "t.onnx"
    _export(_TwoHeads(), path, x)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraftError, match="t.onnx"):
        graftkit.convert(path)


def test_nhwc_graph_takes_nchw(tmp_path):
    """A TensorFlow-style graph (NHWC input, Transpose to NCHW first) becomes a module taking NCHW."""
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((5, 3, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 9, 7, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "nhwc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    net = graftkit.convert(path)
    assert net.input_shapes == {"x": [1, 3, 9, 7]}
    x = rng.standard_normal((1, 3, 9, 7)).astype(np.float32)
    (expected,) = _ort(path, {"x": x.transpose(0, 2, 3, 1)})
    with torch.no_grad():
        assert rel_err(net(torch.from_numpy(x)).numpy(), expected) < 1e-6


def test_nhwc_output_is_returned_nchw(tmp_path):
    """A graph that turns its 4-D output NHWC at the end (Transpose perm [0, 2, 3, 1]) returns it NCHW,
    under its own name; the other outputs are untouched."""
    from onnx import numpy_helper
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["seg"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("ReduceMean", ["c"], ["pooled"], axes=[2, 3], keepdims=0, name="mean")]
    graph = helper.make_graph(nodes, "nhwc_out", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 5])],
                              [helper.make_tensor_value_info("seg", TensorProto.FLOAT, [1, 6, 5, 4]),
                               helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "nhwc_out.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    net = graftkit.convert(path)
    assert net.graftkit_meta["provenance"]["nhwc_outputs_made_nchw"] == ["seg"]
    x = rng.standard_normal((1, 3, 6, 5)).astype(np.float32)
    seg, pooled = _ort(path, {"x": x})
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    assert out["seg"].shape == (1, 4, 6, 5)
    assert rel_err(out["seg"].numpy(), seg.transpose(0, 3, 1, 2)) < 1e-6
    assert rel_err(out["pooled"].numpy(), pooled) < 1e-6
