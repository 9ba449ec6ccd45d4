"""Caffe file formats: caffemodel/binaryproto decoding and writing, prototxt parsing.

The oracle is OpenCV's Caffe importer (`cv2.dnn.readNetFromCaffe`, built on
Google protobuf and BVLC's caffe.proto) and Google protobuf itself (message
classes built from our schema): what we decode must be what they decode.
"""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cases, fixture, rel_err, run_graft

from graftkit import formats
from graftkit.errors import GraftError
from graftkit.formats import caffe, caffe_proto, caffe_prototxt, protowire

NET = caffe_proto.message("NetParameter")
# Cases whose weights files are copied into tests/fixtures (real weights, and the V1/V2 pair).
COPIED = [c for c in cases("caffe") if c["weights"].startswith("real") or c["id"].startswith("caffe-cifar10")]


def _model(case) -> tuple[str, str]:
    proto = next(m for m in case["model"] if m.endswith(".prototxt"))
    model = next(m for m in case["model"] if m.endswith(".caffemodel"))
    return str(fixture(proto)), str(fixture(model))


def _opencv_params(net, layer_name: str) -> list[np.ndarray]:
    lid = net.getLayerId(layer_name)
    out = []
    for i in range(8):
        try:
            out.append(np.asarray(net.getParam(lid, i)))
        except cv2.error:
            break
    return out


# ---------------------------------------------------------------------------------------------- reading

@pytest.mark.parametrize("case", COPIED, ids=[c["id"] for c in COPIED])
def test_blobs_are_the_ones_opencv_uses(case):
    proto, model = _model(case)
    net = cv2.dnn.readNetFromCaffe(proto, model)
    in_net = set(net.getLayerNames())
    ours = caffe.layer_blobs(caffe.read_net(model))
    compared = set()
    for name, ltype, arrays in ours:
        if name not in in_net:   # training-only layers of the weights file (not in the deploy prototxt)
            continue
        theirs = _opencv_params(net, name)
        assert len(theirs) == len(arrays), name
        for ours_a, theirs_a in zip(arrays, theirs):
            assert ours_a.size == theirs_a.size, (name, ours_a.shape, theirs_a.shape)
            assert np.array_equal(ours_a.reshape(-1), theirs_a.reshape(-1)), name
        compared.add(name)
    with_weights = {lp["name"] for lp in caffe.v2_layers(caffe_prototxt.parse(proto))
                    if lp["type"] in ("Convolution", "InnerProduct", "PReLU")}
    assert with_weights and compared == with_weights


def test_tensor_set_layout_kinds_and_graph():
    ts = formats.read(fixture("caffe/mtcnn_det3.caffemodel"))
    assert ts.format == "caffe" and formats.detect(fixture("caffe/mtcnn_det3.caffemodel")) == "caffe"
    assert ts["conv1.weight"].shape == (32, 3, 3, 3) and ts.record("conv1.weight").kind == "conv"
    assert ts["prelu1.weight"].shape == (32,) and ts.record("prelu1.weight").kind == "prelu"
    # InnerProduct over a 4-D blob: [out, in] with in = C*H*W.
    assert ts["conv5.weight"].shape == (256, 1152) and ts.record("conv5.weight").kind == "linear"
    assert ts.record("conv5.bias").role == "bias"
    positions = [ts.record(k).position for k in ts]
    assert positions == sorted(positions)
    # The graph keeps every layer (training ones too) with blob shapes but no data.
    layers = ts.graph["layer"]
    conv1 = next(lp for lp in layers if lp["name"] == "conv1")
    assert conv1["blobs"][0] == {"shape": {"dim": [32, 3, 3, 3]}}
    assert any(lp["type"] == "HDF5Data" for lp in layers)


def test_lenet_weights_in_handwritten_pytorch_reproduce_opencv():
    ts = formats.read(fixture("caffe/lenet.caffemodel"))
    x = torch.from_numpy(np.load(fixture("caffe/lenet.input.npy")))
    y = F.max_pool2d(F.conv2d(x, ts["conv1.weight"], ts["conv1.bias"]), 2, 2)
    y = F.max_pool2d(F.conv2d(y, ts["conv2.weight"], ts["conv2.bias"]), 2, 2)
    y = F.relu(F.linear(y.flatten(1), ts["ip1.weight"], ts["ip1.bias"]))
    y = F.linear(y, ts["ip2.weight"], ts["ip2.bias"])
    assert rel_err(y.numpy(), np.load(fixture("caffe/lenet.ip2.opencv.npy"))) < 1e-5
    assert set(ts) == {f"{n}.{r}" for n in ("conv1", "conv2", "ip1", "ip2") for r in ("weight", "bias")}


def test_v1_and_v2_cifar10_quick_give_identical_tensors():
    v2 = formats.read(fixture("caffe/cifar10_quick.caffemodel"))
    v1 = formats.read(fixture("caffe/cifar10_quick_v1.caffemodel"))
    assert v1.meta["caffe_format"].startswith("V1") and v2.meta["caffe_format"].startswith("V2")
    assert list(v1) == list(v2)
    for k in v2:
        assert v1[k].shape == v2[k].shape and torch.equal(v1[k], v2[k]), k
        assert v1.record(k).kind == v2.record(k).kind
    assert v1["ip1.weight"].shape == (64, 1024)   # legacy 1x1xOUTxIN blob became [out, in]
    # The V1 layers upgrade to the V2 ones (types and parameters).
    up = caffe.v2_layers(caffe.read_net(fixture("caffe/cifar10_quick_v1.caffemodel")))
    assert [lp["type"] for lp in up if lp.get("blobs")] == ["Convolution"] * 3 + ["InnerProduct"] * 2


def test_v1_prototxt_upgrades_to_the_v2_one():
    v1 = caffe.v2_layers(caffe_prototxt.parse(fixture("caffe/cifar10_quick_v1.prototxt")))
    v2 = [lp for lp in caffe.v2_layers(caffe_prototxt.parse(fixture("caffe/cifar10_quick.prototxt")))
          if lp["type"] != "Input"]   # V1 declares its input with `input:`/`input_dim:` instead
    assert v1 == [{k: v for k, v in lp.items() if k != "param"} for lp in v2]   # the V1 file sets no blobs_lr
    legacy = caffe_prototxt.parse_text('layers { name: "c" type: CONVOLUTION blobs_lr: 1 blobs_lr: 2 '
                                       'weight_decay: 1 weight_decay: 0 param: "shared_w" }')
    assert caffe.v2_layers(legacy) == [{"name": "c", "type": "Convolution", "param": [
        {"name": "shared_w", "lr_mult": 1.0, "decay_mult": 1.0}, {"lr_mult": 2.0, "decay_mult": 0.0}]}]


def test_decoding_agrees_with_google_protobuf():
    classes = caffe_proto.protobuf_classes()
    for name in ("mtcnn_det2.caffemodel", "cifar10_quick_v1.caffemodel"):
        data = fixture(f"caffe/{name}").read_bytes()
        ref = classes["NetParameter"].FromString(data)
        assert _pb_dict(ref) == _plain(protowire.decode(data, NET)), name


def test_reencoding_a_caffe_written_file_is_byte_identical():
    data = fixture("caffe/lenet.caffemodel").read_bytes()
    assert protowire.encode(protowire.decode(data, NET), NET) == data


def test_unpacked_float_data_from_old_writers():
    values = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    # BlobProto{num: 1, channels: 1, height: 1, width: 1000, data: <1000 unpacked floats>}, then diff, then data.
    body = b"\x08\x01\x10\x01\x18\x01\x20\xe8\x07" + b"".join(b"\x2d" + struct.pack("<f", v) for v in values)
    body += b"\x35" + struct.pack("<f", 7.0) + b"\x2d" + struct.pack("<f", 5.0)
    blob = protowire.decode(body, caffe_proto.message("BlobProto"))
    assert np.array_equal(blob["data"], np.append(values, np.float32(5.0))) and blob["diff"] == [7.0]


def test_binaryproto_mean_roundtrip(tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 5, 7)).astype(np.float32)
    path = caffe.write_binaryproto(tmp_path / "mean.binaryproto", mean)
    assert np.array_equal(caffe.read_binaryproto_mean(path), mean)
    ref = caffe_proto.protobuf_classes()["BlobProto"].FromString(path.read_bytes())
    assert (ref.num, ref.channels, ref.height, ref.width) == (1, 3, 5, 7)
    assert np.array_equal(np.array(ref.data, np.float32), mean.ravel())
    assert formats.read(path)["mean"].shape == (3, 5, 7)


# ---------------------------------------------------------------------------------------------- writing

def test_write_read_roundtrip(tmp_path):
    src = caffe.layer_blobs(caffe.read_net(fixture("caffe/lenet.caffemodel")))
    path = caffe.write_caffemodel(tmp_path / "out.caffemodel", src, name="LeNet")
    back = caffe.layer_blobs(caffe.read_net(path))
    assert [(n, t) for n, t, _ in back] == [(n, t) for n, t, _ in src]
    for (_, _, a), (_, _, b) in zip(src, back):
        assert all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))
    assert not [p for p in tmp_path.iterdir() if p.name != "out.caffemodel"]   # no temp file left


def test_random_weights_for_cifar10_quick_are_what_opencv_loads(tmp_path):
    proto = str(fixture("caffe/cifar10_quick.prototxt"))
    shapes = [(n, t, [a.shape for a in arrays])
              for n, t, arrays in caffe.layer_blobs(caffe.read_net(fixture("caffe/cifar10_quick.caffemodel")))]
    rng = np.random.default_rng(42)
    layers = [(n, t, [rng.standard_normal(s).astype(np.float32) * 0.05 for s in ss]) for n, t, ss in shapes]
    model = str(caffe.write_caffemodel(tmp_path / "random.caffemodel", layers))
    net = cv2.dnn.readNetFromCaffe(proto, model)
    for name, _, arrays in layers:
        theirs = _opencv_params(net, name)
        assert len(theirs) == len(arrays)
        for a, b in zip(arrays, theirs):
            assert np.array_equal(a.reshape(-1), b.reshape(-1)), name
    net.setInput(np.load(fixture("caffe/cifar10_quick.input.npy")))
    assert np.isfinite(net.forward("ip2")).all()


@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batchnorm_scale_factor_folded_like_opencv(tmp_path, factor):
    rng = np.random.default_rng(3)
    # Stored statistics are sums scaled by `factor`; Caffe divides them back (and zeroes them when it is 0).
    mean = rng.standard_normal(4).astype(np.float32) * 3
    var = rng.uniform(0.5, 2.0, 4).astype(np.float32) * 3
    proto = tmp_path / "bn.prototxt"
    proto.write_text('name: "bn"\ninput: "data"\ninput_shape { dim: 2 dim: 4 dim: 3 dim: 3 }\n'
                     'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "out"\n'
                     '        batch_norm_param { use_global_stats: true eps: 0.001 } }\n')
    # The weights file carries the layer's parameters too, as Caffe writes them.
    net = {"name": "bn", "layer": [{"name": "bn", "type": "BatchNorm", "batch_norm_param": {"eps": 0.001},
                                    "blobs": [caffe._blob(mean), caffe._blob(var), caffe._blob([factor])]}]}
    model = caffe.write_caffemodel(tmp_path / "bn.caffemodel", net)
    ts = formats.read(model)
    rec = ts.record("bn.running_var")
    assert rec.kind == "batchnorm" and rec.meta["eps"] == pytest.approx(0.001) and rec.meta["scale_factor"] == factor
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    ocv = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    ocv.setInput(x)
    expected = ocv.forward("bn")
    ours = F.batch_norm(torch.from_numpy(x), ts["bn.running_mean"], ts["bn.running_var"], eps=rec.meta["eps"])
    assert rel_err(ours.numpy(), expected) < 1e-5
    if factor == 0:
        assert not ts["bn.running_mean"].any() and not ts["bn.running_var"].any()


@pytest.mark.parametrize("name", ["googlenet.train_val.prototxt", "cifar10_quick_v1.prototxt"])
def test_encoder_output_is_what_google_protobuf_decodes(name):
    net = caffe_prototxt.parse(fixture(f"caffe/{name}"))
    net["layer" if "layer" in net else "layers"][0]["blobs"] = [
        {"shape": {"dim": [2, 3]}, "data": np.arange(6, dtype=np.float32)},
        {"num": -1, "double_data": np.array([0.1, -2.5])}]
    data = protowire.encode(net, NET)
    ref = caffe_proto.protobuf_classes()["NetParameter"].FromString(data)
    assert _pb_dict(ref) == _plain(net)
    assert _plain(protowire.decode(data, NET)) == _plain(net)


def test_a_layer_listed_for_several_phases_is_read_once(tmp_path):
    net = {"layer": [
        {"name": "fc", "type": "InnerProduct", "include": [{"phase": "TRAIN"}],
         "blobs": [caffe._blob(np.ones((2, 3))), caffe._blob(np.zeros(2))]},
        {"name": "fc", "type": "InnerProduct", "include": [{"phase": "TEST"}],
         "blobs": [caffe._blob(np.ones((2, 3))), caffe._blob(np.zeros(2))]},
        {"name": "scale", "type": "Scale", "blobs": [caffe._blob(np.full(3, 2.0))]}]}
    ts = formats.read(caffe.write_caffemodel(tmp_path / "phases.caffemodel", net))
    assert list(ts) == ["fc.weight", "fc.bias", "scale.weight"]
    assert ts.record("scale.weight").position == 2 and ts.record("scale.weight").kind == "scale"
    assert ts.graph["layer"][1]["blobs"][0] == {"shape": {"dim": [2, 3]}}   # the graph keeps shapes, not data


# ---------------------------------------------------------------------------------------------- bad input

def test_truncated_caffemodel_fails_clearly(tmp_path):
    data = fixture("caffe/lenet.caffemodel").read_bytes()
    for cut in (3, 40, 1000, len(data) // 3, len(data) // 2, len(data) - 5, len(data) - 1):
        path = tmp_path / f"cut{cut}.caffemodel"
        path.write_bytes(data[:cut])
        with pytest.raises(GraftError, match=r"cut\d+\.caffemodel: corrupt or truncated .* at byte offset \d+"):
            formats.read(path)


def test_corrupt_caffemodel_fails_clearly(tmp_path):
    data = bytearray(fixture("caffe/lenet.caffemodel").read_bytes())
    first_layer = data.index(b"\xa2\x06")            # tag of NetParameter.layer (field 100)
    bad = data[:first_layer + 2] + b"\xff\xff\xff\xff\x0f" + data[first_layer + 3:]
    (tmp_path / "len.caffemodel").write_bytes(bad)
    garbage = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "garbage.caffemodel").write_bytes(garbage)
    blob_data = data.index(b"\x2a\xd0\x0f")           # conv1 weight: packed data of 500 floats (2000 bytes)
    wrong_count = data[:blob_data] + b"\x2a\xcc\x0f" + data[blob_data + 3: blob_data + 3 + 1996] \
        + b"\x2d\x00\x00\x00\x00" + data[blob_data + 3 + 2000 - 1:]
    (tmp_path / "count.caffemodel").write_bytes(wrong_count[:len(data)])
    (tmp_path / "text.caffemodel").write_bytes(fixture("caffe/lenet.prototxt").read_bytes())
    for name, pattern in [("len", r"at byte offset \d+"), ("garbage", r"corrupt|holds no Caffe layers"),
                          ("count", r"corrupt|values but its shape"), ("text", "text file")]:
        with pytest.raises(GraftError, match=pattern):
            formats.read(tmp_path / f"{name}.caffemodel")


def test_graft_inspect_on_truncated_caffemodel_one_line_exit_2(tmp_path):
    data = fixture("caffe/mtcnn_det1.caffemodel").read_bytes()
    path = tmp_path / "det1.caffemodel"
    path.write_bytes(data[: len(data) - 37])
    r = run_graft("inspect", path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "det1.caffemodel" in r.stderr and "Traceback" not in r.stderr
    ok = run_graft("inspect", "--json", fixture("caffe/mtcnn_det1.caffemodel"))
    assert ok.returncode == 0 and '"PReLU1.weight"' in ok.stdout


# ---------------------------------------------------------------------------------------------- prototxt

PROTOTXTS = sorted(p.name for p in fixture("caffe").glob("*.prototxt"))


@pytest.mark.parametrize("name", PROTOTXTS)
def test_prototxt_parses_like_google_protobuf(name):
    from google.protobuf import text_format
    text = fixture(f"caffe/{name}").read_text()
    ref = text_format.Parse(text, caffe_proto.protobuf_classes()["NetParameter"]())
    assert _plain(caffe_prototxt.parse(fixture(f"caffe/{name}"))) == _pb_dict(ref)


def test_prototxt_types_come_from_the_schema():
    net = caffe_prototxt.parse_text("""
        name: 'x' # a comment
        input: "data" input_dim: 1 input_dim: 3 input_dim: 0x10 input_dim: 16;
        layer { name: "c\\x41\\101" type: "Convolution" convolution_param: { kernel_size: 3 pad: [1, 2] }
                loss_weight: 1e-3f, loss_weight: -inf }
        layers < type: INNER_PRODUCT blobs { data: 1 data: 2.5 shape { dim: 2 } } >
        layer { type: "Pooling" pooling_param { pool: AVE round_mode: FLOOR kernel_size: 2 } phase: 1 }""")
    assert net["input_dim"] == [1, 3, 16, 16]
    conv = net["layer"][0]
    assert conv["name"] == "cAA" and conv["convolution_param"] == {"kernel_size": [3], "pad": [1, 2]}
    assert conv["loss_weight"] == [np.float32(1e-3).item(), -np.inf]
    assert net["layers"][0]["type"] == "INNER_PRODUCT"
    data = net["layers"][0]["blobs"][0]["data"]
    assert isinstance(data, np.ndarray) and data.dtype == np.float32 and data.tolist() == [1.0, 2.5]
    pool = net["layer"][1]
    assert pool["pooling_param"] == {"pool": "AVE", "round_mode": "FLOOR", "kernel_size": 2} and pool["phase"] == "TEST"


@pytest.mark.parametrize("text, where, what", [
    ('layer {\n  name: "a"\n  type: "ReLU"\n  bottom: "x" top "y"\n}\n', "4:19", "expected ':' after 'top'"),
    ('layer {\n  name: "a"\n', "3:1", "expected '}' to close the LayerParameter block"),
    ('layer {\n  convolution_param {\n    kernal_size: 3\n  }\n}', "3:5", "unknown field 'kernal_size' in ConvolutionParameter"),
    ('layer { pooling_param { pool: MEAN } }', "1:31", "'MEAN' is not a value of PoolingParameter.PoolMethod"),
    ('layer { convolution_param { kernel_size: 2.5 } }', "1:42", "expected an integer for 'kernel_size'"),
    ('layer { name: "a\n" }', "1:15", "string that does not end"),
    ('name: "a" name: "b"', "1:11", "'name' of NetParameter is given twice"),
])
def test_prototxt_errors_name_line_and_column(tmp_path, text, where, what):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(GraftError) as e:
        caffe_prototxt.parse(path)
    assert str(e.value).startswith(f"{path}:{where}: ") and what in str(e.value)


# ---------------------------------------------------------------------------------------------- helpers

def _plain(value):
    """Our decoded dicts with numpy arrays as lists, for comparison with protobuf's view."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _pb_dict(msg) -> dict:
    """A google.protobuf message in graftkit's dict convention (present fields only, enums by name)."""
    from google.protobuf.descriptor import FieldDescriptor
    out = {}
    for fd, value in msg.ListFields():
        def one(v):
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                return _pb_dict(v)
            if fd.type == FieldDescriptor.TYPE_ENUM:
                return fd.enum_type.values_by_number[v].name
            return v
        repeated = fd.is_repeated
        out[fd.name] = [one(v) for v in value] if repeated else one(value)
    return out



@pytest.mark.parametrize("digits", [1_500, 100_000])
def test_a_huge_malformed_number_is_refused_in_linear_time(digits):
    """A backtracking number pattern took minutes on 1,500 digits followed by a letter."""
    import time
    from graftkit.formats.caffe_prototxt import parse_text
    text = 'layer { name: "a" type: "Input" top: "a" input_param { shape { dim: ' + "7" * digits + "x } } }"
    t = time.perf_counter()
    with pytest.raises(GraftError, match=r"1:\d+: unexpected character: a malformed number '7777"):
        parse_text(text)
    assert time.perf_counter() - t < 0.5
