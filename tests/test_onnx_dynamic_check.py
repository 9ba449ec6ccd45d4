"""Converted ONNX models with dynamic input shapes are checked against onnxruntime at convert time on a
concrete shape (or say clearly that they were not)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

import graftkit
from graftkit.errors import GraftError

from conftest import run_graft


def _export_dynamic(path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["y"],
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})


def test_dynamic_input_is_checked_on_a_representative_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    _export_dynamic(path)
    prov = graftkit.convert(path).graftkit_meta["provenance"]
    assert prov["onnxruntime_checked_shapes"] == {"image": [1, 3, 224, 224]}, prov
    assert prov["onnxruntime_max_rel_err"] < 1e-5 and "representative" in prov["onnxruntime_checked_how"]
    prov = graftkit.convert(path, input_shapes={"image": [2, 3, 40, 48]}).graftkit_meta["provenance"]
    assert prov["onnxruntime_checked_shapes"] == {"image": [2, 3, 40, 48]}
    print(f"dynamic conv net: max relative error vs onnxruntime {prov['onnxruntime_max_rel_err']:.2e}")
    r = run_graft("convert", path, "-o", tmp_path / "p.safetensors", "--input-shape", "image=1,3,64,80")
    assert r.returncode == 0, r.stderr
    assert "checked against onnxruntime on image [1, 3, 64, 80]" in r.stderr
    with pytest.raises(GraftError, match="not an input of this graph"):
        graftkit.convert(path, input_shapes={"data": [1, 3, 8, 8]})


def test_a_model_that_cannot_be_checked_says_so(tmp_path):
    # Token ids in, a float embedding out: graftkit does not invent integer inputs.
    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [onnx.numpy_helper.from_array(table, "table")])
    path = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = run_graft("convert", path, "-o", tmp_path / "p.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "onnxruntime" in x]
    assert line.startswith("warning: not checked against onnxruntime: input ids is int64"), line
    json.loads(r.stdout)
