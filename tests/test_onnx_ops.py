"""ONNX ops real networks use (GlobalMaxPool, LSTM, GRU, If, BatchNormalization after a Reshape computed at
run time), converted by graftkit's own converters and checked against onnxruntime within 1e-5 relative."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

import graftkit
from graftkit.errors import GraftError

from conftest import rel_err, run_graft

RTOL = 1e-5


def _arr(rng, *shape, positive=False):
    a = rng.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def _save(tmp_path, name, nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _check(path, feeds: dict[str, np.ndarray]) -> float:
    """Convert, then compare every output with onnxruntime on `feeds` (not the convert-time input)."""
    net = graftkit.convert(path)
    assert net.graftkit_meta["provenance"]["onnxruntime_max_rel_err"] < RTOL
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        ours = net(*[torch.from_numpy(v) for v in feeds.values()])
    if torch.is_tensor(ours):
        ours = {net.outputs[0]: ours}
    worst = max(rel_err(ours[name].numpy(), exp) for name, exp in zip(net.outputs, expected))
    print(f"{path.stem}: max relative error vs onnxruntime {worst:.2e}")
    assert worst < RTOL, worst
    return worst


def test_global_max_pool(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalMaxPool", ["c"], ["p"], name="gmp"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    path = _save(tmp_path, "gmp", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 7])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                 [nh.from_array(_arr(rng, 8, 3, 3, 3), "w"), nh.from_array(_arr(rng, 8), "b"),
                  nh.from_array(_arr(rng, 5, 8), "fw"), nh.from_array(_arr(rng, 5), "fb")])
    _check(path, {"x": _arr(rng, 2, 3, 9, 7)})


def test_batchnorm_after_a_reshape_computed_at_run_time(tmp_path):
    """Reshape to [N, C, -1] with a shape sliced from Shape(x) up to rank-2: shape inference gives no rank."""
    rng = np.random.default_rng(1)
    c = 6
    inits = [nh.from_array(_arr(rng, c), n) for n in ("s", "b", "m")] + [
        nh.from_array(_arr(rng, c, positive=True), "v"), nh.from_array(np.array([0], np.int64), "zero"),
        nh.from_array(np.array([2], np.int64), "two"), nh.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Shape", ["shape"], ["rank"]),
             helper.make_node("Sub", ["rank", "two"], ["end"]),
             helper.make_node("Slice", ["shape", "zero", "end"], ["nc"]),
             helper.make_node("Concat", ["nc", "minus1"], ["new_shape"], axis=0),
             helper.make_node("Reshape", ["x", "new_shape"], ["r"], name="reshape"),
             helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"], name="bn", epsilon=1e-3)]
    path = _save(tmp_path, "bn_reshape", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 4, 5])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c, "k"])], inits)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(path))
    assert not next(v for v in inferred.graph.value_info if v.name == "r").type.tensor_type.HasField("shape")
    _check(path, {"x": _arr(rng, 3, c, 4, 5)})
    ts = graftkit.read(path)
    assert {r.kind for r in ts.records.values() if r.layer == "bn"} == {"batchnorm"}


def _export(net, args, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), args, str(path), dynamo=False, opset_version=17, **kwargs)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_rnn_exported_by_pytorch(cls, tmp_path):
    """torch.onnx.export writes an ONNX LSTM/GRU node (batch_first, bidirectional, initial state)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, cls)(5, 7, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(14, 3)

        def forward(self, x, h0):
            y, _ = self.rnn(x, h0 if cls == "GRU" else (h0, torch.zeros_like(h0)))
            return self.fc(y)

    path = tmp_path / f"{cls.lower()}.onnx"
    _export(Net(), (torch.randn(2, 6, 5), torch.randn(2, 2, 7)), path, input_names=["x", "h0"],
            output_names=["y"])
    assert cls in {n.op_type for n in onnx.load(path).graph.node}
    rng = np.random.default_rng(2)
    _check(path, {"x": _arr(rng, 2, 6, 5), "h0": _arr(rng, 2, 2, 7)})


def _rnn_node_model(tmp_path, op, direction, *, layout=0, lens=True, name=None):
    rng = np.random.default_rng(3)
    t, b, i, h = 5, 3, 4, 6
    d = 2 if direction == "bidirectional" else 1
    g = 4 if op == "LSTM" else 3
    inits = [nh.from_array(_arr(rng, d, g * h, i) * 0.5, "W"), nh.from_array(_arr(rng, d, g * h, h) * 0.5, "R"),
             nh.from_array(_arr(rng, d, 2 * g * h) * 0.5, "B")]
    ins = ["X", "W", "R", "B", "lens" if lens else "", "h0"] + (["c0"] if op == "LSTM" else [])
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = {"hidden_size": h, "direction": direction, "layout": layout}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(op, ins, outs, name=name or op.lower(), **attrs)
    xs = [b, t, i] if layout else [t, b, i]
    hs = [b, d, h] if layout else [d, b, h]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xs)]
    if lens:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [b]))
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, hs) for n in ins[5:]]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [b, t, d, h] if layout else [t, d, b, h])] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, hs) for n in outs[1:]]
    path = _save(tmp_path, f"{op}_{direction}_{layout}", [node], inputs, outputs, inits, opset=14)
    feeds = {"X": _arr(rng, *xs)}
    if lens:
        feeds["lens"] = np.array([5, 2, 4], np.int32)
    feeds.update({n: _arr(rng, *hs) for n in ins[5:]})
    return path, feeds


@pytest.mark.parametrize("op,direction,layout", [("LSTM", "forward", 0), ("LSTM", "reverse", 0),
                                                 ("LSTM", "bidirectional", 0), ("GRU", "reverse", 0),
                                                 ("GRU", "bidirectional", 0)])
def test_rnn_nodes_with_sequence_lengths_states_and_directions(op, direction, layout, tmp_path):
    path, feeds = _rnn_node_model(tmp_path, op, direction, layout=layout)
    # Random inputs at convert time have no int32 lengths: the check says so; the test checks with lengths.
    _check_without_convert_check(path, feeds)


def _check_without_convert_check(path, feeds):
    net = graftkit.convert(path)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        ours = net(*[torch.from_numpy(v) for v in feeds.values()])
    worst = max(rel_err(ours[name].numpy(), exp) for name, exp in zip(net.outputs, expected))
    print(f"{path.stem}: max relative error vs onnxruntime {worst:.2e}")
    assert worst < RTOL, worst
    # The package rebuilds the same network from its weightless graph.
    out = path.with_suffix(".safetensors")
    graftkit.save(net, out)
    again = graftkit.load(out)
    with torch.no_grad():
        again_out = again(*[torch.from_numpy(v) for v in feeds.values()])
    assert all(torch.equal(again_out[k], ours[k]) for k in ours)


def test_gru_with_onnx_default_reset_is_refused_clearly(tmp_path):
    path, _ = _rnn_node_model(tmp_path, "GRU", "forward", lens=False)
    model = onnx.load(path)
    for a in model.graph.node[0].attribute:
        if a.name == "linear_before_reset":
            a.i = 0
    onnx.save(model, path)
    r = run_graft("convert", path, "-o", tmp_path / "g.safetensors")
    assert r.returncode == 2 and "linear_before_reset" in r.stderr and "Traceback" not in r.stderr


def _if_model(tmp_path, cond_from_constants: bool):
    """x -> If(cond) { then: Conv(wt) } else { Conv(we) } -> Relu; each branch holds its weights."""
    rng = np.random.default_rng(4)

    def branch(tag, k):
        w = nh.from_array(_arr(rng, 4, 3, k, k), f"w_{tag}")
        bias = nh.from_array(_arr(rng, 4), f"b_{tag}")
        conv = helper.make_node("Conv", ["x", w.name, bias.name], [f"y_{tag}"], name=f"conv_{tag}",
                                pads=[k // 2] * 4)
        return helper.make_graph([conv], tag, [], [helper.make_tensor_value_info(f"y_{tag}", TensorProto.FLOAT,
                                                                                  None)], [w, bias])

    inits, nodes = [], []
    if cond_from_constants:  # as exporters trace `if self.flag:` : Constant -> Greater
        nodes += [helper.make_node("Constant", [], ["flag"], value=nh.from_array(np.array(3.0, np.float32))),
                  helper.make_node("Greater", ["flag", "limit"], ["cond"])]
        inits.append(nh.from_array(np.array(5.0, np.float32), "limit"))  # 3 > 5 is false: else branch
    else:
        inits.append(nh.from_array(np.array(True), "cond"))
    nodes += [helper.make_node("If", ["cond"], ["z"], name="choose", then_branch=branch("then", 3),
                               else_branch=branch("else", 1)),
              helper.make_node("Relu", ["z"], ["y"], name="relu")]
    return _save(tmp_path, f"if_{int(cond_from_constants)}", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)


@pytest.mark.parametrize("cond_from_constants", [False, True])
def test_if_with_a_constant_condition(cond_from_constants, tmp_path):
    path = _if_model(tmp_path, cond_from_constants)
    r = run_graft("inspect", "--json", path)
    assert r.returncode == 0, r.stderr
    listed = {t["name"]: t for t in json.loads(r.stdout)["tensors"]}
    for tag in ("then", "else"):  # both branches' weights are listed, tagged by their Conv
        assert listed[f"w_{tag}"]["kind"] == "conv" and listed[f"b_{tag}"]["role"] == "bias", listed
    _check(path, {"x": _arr(np.random.default_rng(5), 1, 3, 8, 8)})


def test_if_on_the_input_is_refused_by_name(tmp_path):
    path = _if_model(tmp_path, False)
    model = onnx.load(path)
    model.graph.initializer.pop(0)
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    onnx.save(model, path)
    with pytest.raises(GraftError, match=r"If \(used by choose\)"):
        graftkit.convert(path)
