"""Caffe networks converted to torch modules, checked against OpenCV's Caffe importer (the oracle)
and against literal transcriptions of Caffe's own CPU loops where OpenCV deviates from Caffe."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

import graftkit
from conftest import cases, fixture, rel_err
from graftkit.errors import GraftError
from graftkit.formats.caffe import layer_blobs, read_net, write_binaryproto, write_caffemodel
from graftkit.nets import caffe
from graftkit.nets.caffe_layers import LRN, Pooling

TARGET = 1e-5  # the target; the manifest allows 1e-4


def load(rel):
    return torch.from_numpy(np.load(fixture(rel)))


def randomize(net, seed):
    """Seeded random weights of sensible scale (so deep nets neither vanish nor explode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            r = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() >= 2:
                t.copy_(r / math.sqrt(t[0].numel()))
            elif name.endswith("weight"):  # Scale, PReLU
                t.copy_(1 + 0.2 * r)
            else:
                t.copy_(0.1 * r)
    return net


def write_weights(net, path):
    """The net's weights as a caffemodel that OpenCV reads (it cannot read 0-d blobs)."""
    layers = [(n, t, [a.reshape(1) if a.ndim == 0 else a for a in arrays]) for n, t, arrays in caffe.caffe_blobs(net)]
    write_caffemodel(path, layers)
    return path


def opencv(prototxt, caffemodel, x, outputs, fusion=True):
    cv = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    cv.enableFusion(fusion)
    cv.setInput(np.ascontiguousarray(x))
    res = cv.forward(list(outputs))
    return dict(zip(outputs, res))


def uninitialised(prototxt):
    """The net of a prototxt with its parameters allocated but not initialised (randomize fills them)."""
    graph = caffe.compile_graph(caffe._parse_prototxt(prototxt))[0]
    with torch.device("meta"):
        net = caffe.CaffeNet(graph)
    return net.to_empty(device="cpu")


def generated(prototxt, tmp_path, seed=0):
    """(path of a caffemodel with seeded random weights for `prototxt`, our net converted from both)."""
    model = write_weights(randomize(uninitialised(prototxt), seed), tmp_path / "w.caffemodel")
    return model, caffe.convert([prototxt, model])


# ---------------------------------------------------------------- the manifest's cases

def _has_weights(case):
    return (fixture("manifest.json").parent / case["model"][1]).exists()


REAL = [c for c in cases("caffe") if _has_weights(c)]
RANDOM = [c for c in cases("caffe") if not _has_weights(c)]


@pytest.mark.parametrize("case", REAL, ids=[c["id"] for c in REAL])
def test_manifest_case_with_its_weights_reproduces_the_oracle(case):
    net = graftkit.convert([fixture(p) for p in case["model"]])
    inputs = {k: load(v) for k, v in case["input"].items()}
    with torch.no_grad():
        out = net.run(inputs, outputs=list(case["expected"]))
        default = net(*inputs.values())
    for name, rel in case["expected"].items():
        err = rel_err(out[name], np.load(fixture(rel)))
        assert err <= min(case["rtol"], TARGET), (name, err)
    # several unconsumed blobs come back as a dict by blob name, one as a tensor
    if isinstance(default, dict):
        assert set(case["expected"]) <= set(default)
    else:
        assert len(net.outputs) == 1


@pytest.mark.parametrize("case", RANDOM, ids=[c["id"] for c in RANDOM])
def test_manifest_case_with_generated_weights_matches_opencv(case, tmp_path):
    prototxt = fixture(case["model"][0])
    model, net = generated(prototxt, tmp_path, seed=len(case["id"]))
    (name, rel), = case["input"].items()
    x = np.load(fixture(rel))
    want = opencv(prototxt, model, x, list(case["expected"]))
    with torch.no_grad():
        ours = net.run({name: torch.from_numpy(x)}, outputs=list(case["expected"]))
    for out in case["expected"]:
        assert rel_err(ours[out], want[out]) <= TARGET, out


@pytest.mark.parametrize("name", ["alexnet", "caffenet"])
def test_alexnet_and_caffenet_with_generated_weights_match_opencv(name, tmp_path):
    prototxt = fixture(f"caffe/{name}.deploy.prototxt")
    model, net = generated(prototxt, tmp_path)
    x = np.random.default_rng(1).normal(0, 50, (1, 3, 227, 227)).astype(np.float32)  # batch 1: FC nets fix the size
    want = opencv(prototxt, model, x, ["fc8", "prob"])
    with torch.no_grad():
        ours = net.run(torch.from_numpy(x), ["fc8", "prob"])
    assert rel_err(ours["fc8"], want["fc8"]) <= TARGET
    assert rel_err(ours["prob"], want["prob"]) <= 1e-4  # a peaked softmax amplifies the logits' float error
    assert net.outputs == ["prob"]
    assert net.conv2.weight.shape == (256, 48, 5, 5)  # group 2


def test_v1_and_v2_cifar10_quick_give_identical_outputs():
    v2 = caffe.convert([fixture("caffe/cifar10_quick.prototxt"), fixture("caffe/cifar10_quick.caffemodel")])
    v1 = caffe.convert([fixture("caffe/cifar10_quick_v1.prototxt"), fixture("caffe/cifar10_quick_v1.caffemodel")])
    x = load("caffe/cifar10_quick.input.npy")
    assert v1.state_dict().keys() == v2.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(v1(x), v2(x))


def test_cifar10_quick_ave_pooling_rounds_up_where_chainer_does_not():
    net = caffe.convert([fixture("caffe/cifar10_quick.prototxt"), fixture("caffe/cifar10_quick.caffemodel")])
    # conv3 is 8x8; AVE 3/2 rounds up to 4x4 (Chainer's CaffeFunction makes 3x3 and then fails at ip1)
    assert net.graph["blob_shapes"]["pool3"][-2:] == [4, 4]
    assert net.ip1.weight.shape == (64, 64 * 4 * 4)
    x = load("caffe/cifar10_quick.input.npy")
    with torch.no_grad():
        blobs = net.run(x, ["conv3", "pool3", "ip2"])
    ref = caffe_pool(blobs["conv3"].numpy(), 3, 3, 2, 2, 0, 0, "AVE", ceil=True)
    assert np.allclose(blobs["pool3"].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert rel_err(blobs["ip2"], np.load(fixture("caffe/cifar10_quick.ip2.opencv.npy"))) <= TARGET


# ---------------------------------------------------------------- GoogLeNet train_val

@pytest.fixture(scope="module")
def googlenet_train_val():
    return randomize(caffe.convert([fixture("caffe/googlenet.train_val.prototxt")]), 3)


def test_googlenet_train_val_returns_auxiliary_classifiers_in_training_only(googlenet_train_val, tmp_path):
    net = googlenet_train_val
    x = load("caffe/googlenet.input.npy")[:1]
    assert net.loss_weights == {"loss1/classifier": 0.3, "loss2/classifier": 0.3, "loss3/classifier": 1.0}
    assert net.inputs == ["data", "label"]  # the label is optional at run time
    net.train()
    with torch.no_grad():
        out = net(x)
    assert list(out) == ["loss1/classifier", "loss2/classifier", "loss3/classifier"]
    assert all(v.shape == (1, 1000) for v in out.values())
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 1000)
    # the same weights in the deploy net give the same eval output
    model = write_weights(net, tmp_path / "g.caffemodel")
    deploy = caffe.convert([fixture("caffe/googlenet.deploy.prototxt"), model])
    with torch.no_grad():
        z = deploy.run(x, ["loss3/classifier"])["loss3/classifier"]
    assert rel_err(y, z) <= TARGET


def test_googlenet_train_val_phases_and_preprocessing(googlenet_train_val):
    test = googlenet_train_val.graftkit_meta["preprocessing"]
    assert test["mean"] == [104.0, 117.0, 123.0] and test["crop"] == 224 and test["mirror"] is False
    assert test["channel_order"] == "BGR" and test["pixel_range"] == 255.0 and test["input_size"] == [3, 224, 224]
    train = caffe.compile_graph(caffe._parse_prototxt(fixture("caffe/googlenet.train_val.prototxt")), "TRAIN")[0]
    names = {L["name"] for L in train["layers"]}
    assert "loss3/classifier" in names and train["inputs"][0]["shape"] == [32, 3, 224, 224]  # TRAIN batch
    assert {x["name"] for x in train["losses"]} == {"loss1/loss", "loss2/loss", "loss3/loss3"}  # no Accuracy
    assert googlenet_train_val.graph["inputs"][0]["shape"] == [50, 3, 224, 224]  # TEST batch


# ---------------------------------------------------------------- module behaviour

def test_module_names_state_dict_in_place_layers_and_run():
    net = caffe.convert([fixture("caffe/lenet.prototxt"), fixture("caffe/lenet.caffemodel")])
    assert list(net.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                      "ip1.weight", "ip1.bias", "ip2.weight", "ip2.bias"]
    real = {n: a for n, _, a in layer_blobs(read_net(fixture("caffe/lenet.caffemodel")))}
    assert np.array_equal(net.conv1.weight.detach().numpy(), real["conv1"][0])
    x = load("caffe/lenet.input.npy")
    with torch.no_grad():
        b = net.run({"data": x}, outputs=["ip1", "ip2", "prob"])
        assert (b["ip1"] >= 0).all()  # relu1 is in place: the blob ip1 is read after it, as in Caffe
        assert torch.allclose(b["prob"], torch.softmax(b["ip2"], 1))
        assert torch.equal(net(x), b["prob"])
    with pytest.raises(GraftError, match="no blob 'nope'"):
        net.run(x, ["nope"])

    g = caffe.convert([fixture("caffe/googlenet.deploy.prototxt")])
    assert g.layer_names["conv1/7x7_s2"] == "conv1_7x7_s2"
    assert g.conv1_7x7_s2.weight.shape == (64, 3, 7, 7)
    assert "inception_3a_1x1.weight" in g.state_dict()
    assert g.layer("pool5/7x7_s1") is g.pool5_7x7_s1
    # parameter-free layers are plain callables (CaffeOp), never submodules; layers with state are modules
    pool = g.layer("pool5/7x7_s1")
    assert not isinstance(pool, torch.nn.Module) and "pool5_7x7_s1" not in dict(g.named_children())
    assert pool(torch.ones(1, 2, 7, 7)).shape == (1, 2, 1, 1)
    assert isinstance(g.layer("pool5/drop_7x7_s1"), torch.nn.Module)  # Dropout: behaves differently in training


def test_batchnorm_scale_factor_and_use_global_stats(tmp_path):
    proto = tmp_path / "bn.prototxt"
    proto.write_text('input: "data" input_shape { dim: 4 dim: 3 dim: 5 dim: 5 }\n'
                     'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0.01 } }\n'
                     'layer { name: "bn_g" type: "BatchNorm" bottom: "data" top: "bn_g" '
                     'batch_norm_param { use_global_stats: true } }\n')
    mean, var = np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.float32)
    write_caffemodel(tmp_path / "bn.caffemodel", [("bn", "BatchNorm", [mean * 8, var * 8, np.array([8], np.float32)]),
                                                  ("bn_g", "BatchNorm", [mean, var, np.array([1], np.float32)])])
    net = caffe.convert([proto, tmp_path / "bn.caffemodel"])
    assert torch.allclose(net.bn.running_mean, torch.from_numpy(mean))
    x = torch.randn(4, 3, 5, 5)
    want = (x.numpy() - mean[:, None, None]) / np.sqrt(var[:, None, None] + 0.01)
    with torch.no_grad():
        assert np.allclose(net.run(x, ["bn"])["bn"].numpy(), want, atol=1e-5)
        net.train()
        out = net.run(x, ["bn", "bn_g"])
    assert torch.allclose(out["bn"].mean((0, 2, 3)), torch.zeros(3), atol=1e-5)  # batch statistics
    want_g = (x.numpy() - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    assert np.allclose(out["bn_g"].numpy(), want_g, atol=1e-5)  # use_global_stats: running statistics


def test_prototxt_alone_gives_initialised_weights_and_a_package_rebuilds_it(tmp_path):
    net = caffe.convert([fixture("caffe/squeezenet_v1.1.deploy.prototxt")])
    assert not any(p.is_meta for p in net.parameters())
    assert net.conv1.weight.abs().sum() > 0 and torch.all(net.conv1.bias == 0)
    pkg = graftkit.save(net, tmp_path / "s.safetensors")
    back = graftkit.load(pkg)
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    # the prototxt is kept as plain text in a metadata key of its own, and comes back in the spec
    from safetensors import safe_open
    with safe_open(str(pkg), "pt") as f:
        metadata = f.metadata()
    text = metadata["graftkit.spec.prototxt"]
    assert text == fixture("caffe/squeezenet_v1.1.deploy.prototxt").read_text()
    assert "prototxt" not in json.loads(metadata["graftkit"])["spec"]
    assert back.graftkit_meta["spec"]["prototxt"] == text == graftkit.read_meta(pkg)["spec"]["prototxt"]
    # a spec holding only the prototxt (no compiled graph) rebuilds the same architecture
    spec = {k: v for k, v in net.graftkit_meta["spec"].items() if k != "graph"}
    again = caffe.build_from_spec(spec)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_mean_file_and_transform_param_become_preprocessing(tmp_path):
    proto = tmp_path / "t.prototxt"
    proto.write_text('layer { name: "data" type: "ImageData" top: "data" top: "label"\n'
                     '  transform_param { scale: 0.5 crop_size: 5 mirror: true mean_file: "../data/ilsvrc12/mean.binaryproto" }\n'
                     '  image_data_param { source: "list.txt" batch_size: 2 new_height: 8 new_width: 8 } }\n'
                     'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                     'convolution_param { num_output: 2 kernel_size: 3 } }\n'
                     'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "label" top: "loss" }\n')
    mean = np.stack([np.full((8, 8), v, np.float32) for v in (10, 20, 30)])
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    net = caffe.convert([proto])
    pre = net.graftkit_meta["preprocessing"]
    assert pre["mean"] == [10.0, 20.0, 30.0] and pre["std"] == [2.0, 2.0, 2.0]
    assert pre["crop"] == 5 and pre["mirror"] is True and pre["input_size"] == [3, 5, 5]
    assert net.outputs == ["c"] and net(torch.randn(2, 3, 5, 5)).shape == (2, 2, 3, 3)
    # the untrusted prototxt's mean_file is only looked up by name beside it; a bad one is a note, not a failure
    (tmp_path / "mean.binaryproto").write_bytes(b"not a blob")
    pre = caffe.convert([proto]).graftkit_meta["preprocessing"]
    assert pre["mean"] == [0.0, 0.0, 0.0] and "unreadable" in " ".join(pre["notes"])


def test_unknown_input_shape_needs_weights_or_a_shape(tmp_path):
    proto = tmp_path / "h.prototxt"
    proto.write_text('layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "x" } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                     'inner_product_param { num_output: 3 } }\n')
    with pytest.raises(GraftError, match="'ip'.*input shape"):
        caffe.convert([proto])
    net = caffe.convert([proto], input_shapes={"data": [1, 2, 4, 4]})
    assert net.ip.weight.shape == (3, 32)
    write_caffemodel(tmp_path / "h.caffemodel", [("ip", "InnerProduct", [np.ones((3, 32), np.float32),
                                                                          np.zeros(3, np.float32)])])
    net = caffe.convert([proto, tmp_path / "h.caffemodel"])  # the blobs give the shapes
    assert net(torch.ones(2, 2, 4, 4)).tolist() == [[32.0] * 3] * 2


# ---------------------------------------------------------------- layer semantics

def caffe_pool(x, kh, kw, sh, sw, ph, pw, pool, ceil=True):
    """A transcription of Caffe's PoolingLayer::Reshape + Forward_cpu (MAX and AVE)."""
    n, c, h, w = x.shape
    rnd = math.ceil if ceil else math.floor
    oh, ow = rnd((h + 2 * ph - kh) / sh) + 1, rnd((w + 2 * pw - kw) / sw) + 1
    if ph or pw:
        if (oh - 1) * sh >= h + ph:
            oh -= 1
        if (ow - 1) * sw >= w + pw:
            ow -= 1
    y = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if pool == "MAX":
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
            else:
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return y


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("h,w,k,s,p,ceil", [
    (8, 8, 3, 2, 0, True),    # rounds up (cifar10_quick)
    (7, 10, 3, 2, 1, True),   # pad, AVE window clipped to the padded input
    (5, 6, 2, 2, 1, True),    # the last window would start in the padding: dropped
    (4, 5, 3, 2, 2, True),    # pad > kernel/2: PyTorch refuses, the general path
    (9, 7, 4, 3, 3, True),    # general path and dropped window
    (7, 10, 3, 2, 1, False),  # round_mode: FLOOR
    (6, 6, 3, 3, 2, False),
])
def test_pooling_is_caffes_loop(pool, h, w, k, s, p, ceil):
    x = np.random.default_rng(h * w + k).standard_normal((2, 3, h, w)).astype(np.float32)
    layer = Pooling({"pool": pool, "global": False, "kernel": [k, k], "stride": [s, s], "pad": [p, p],
                     "ceil": ceil}, [])
    with torch.no_grad():
        ours = layer(torch.from_numpy(x)).numpy()
    ref = caffe_pool(x.astype(np.float64), k, k, s, s, p, p, pool, ceil)
    assert ours.shape == ref.shape
    assert np.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_lrn_is_caffes_formula():
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 5))
    n, alpha, beta, k = 5, 0.3, 0.6, 2.0
    # ACROSS_CHANNELS: scale = k + alpha/n * sum of squares over the n channels centred on c
    sq = np.pad(x ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    across = x * (k + alpha / n * sum(sq[:, i:i + 7] for i in range(n))) ** -beta
    # WITHIN_CHANNEL: Caffe pools the squares (AVE, pad (n-1)/2) and uses shift 1, not k
    within = x * (1 + alpha * caffe_pool(x ** 2, n, n, 1, 1, 2, 2, "AVE")) ** -beta
    for region, want in (("ACROSS_CHANNELS", across), ("WITHIN_CHANNEL", within)):
        layer = LRN({"local_size": n, "alpha": alpha, "beta": beta, "k": k, "region": region}, [])
        with torch.no_grad():
            assert np.allclose(layer(torch.from_numpy(x)).numpy(), want, rtol=1e-10), region


ZOO = """name: "zoo"
input: "data"
input_shape { dim: 2 dim: 4 dim: 13 dim: 11 }
layer { name: "conv_g" type: "Convolution" bottom: "data" top: "conv_g"
  convolution_param { num_output: 8 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 2 } }
layer { name: "conv_d" type: "Convolution" bottom: "conv_g" top: "conv_d"
  convolution_param { num_output: 6 kernel_size: 3 dilation: 2 pad: 2 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv_d" top: "bn" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "sc" top: "prelu" }
layer { name: "prelu_s" type: "PReLU" bottom: "sc" top: "prelu_s" prelu_param { channel_shared: true } }
layer { name: "elt_sum" type: "Eltwise" bottom: "prelu" bottom: "prelu_s" top: "elt_sum"
  eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "elt_prod" type: "Eltwise" bottom: "prelu" bottom: "prelu_s" top: "elt_prod" eltwise_param { operation: PROD } }
layer { name: "elt_max" type: "Eltwise" bottom: "prelu" bottom: "elt_sum" top: "elt_max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "elt_sum" bottom: "elt_prod" bottom: "elt_max" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" top: "s3" slice_param { axis: 1 slice_point: 4 slice_point: 10 } }
layer { name: "tanh" type: "TanH" bottom: "s1" top: "tanh" }
layer { name: "sig" type: "Sigmoid" bottom: "s2" top: "sig" }
layer { name: "abs" type: "AbsVal" bottom: "s3" top: "abs" }
layer { name: "elu" type: "ELU" bottom: "tanh" top: "elu" elu_param { alpha: 0.7 } }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "sig" top: "exp" exp_param { base: 2 scale: 0.5 shift: 0.1 } }
layer { name: "log" type: "Log" bottom: "pow" top: "log" }
layer { name: "bnll" type: "BNLL" bottom: "s1" top: "bnll" }
layer { name: "lrelu" type: "ReLU" bottom: "s2" top: "lrelu" relu_param { negative_slope: 0.1 } }
layer { name: "lrn_a" type: "LRN" bottom: "cat" top: "lrn_a" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 } }
layer { name: "lrn_w" type: "LRN" bottom: "cat" top: "lrn_w" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 norm_region: WITHIN_CHANNEL } }
layer { name: "pool_ave" type: "Pooling" bottom: "lrn_a" top: "pool_ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_max" type: "Pooling" bottom: "lrn_w" top: "pool_max" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "pool_g" type: "Pooling" bottom: "lrn_a" top: "pool_g" pooling_param { pool: AVE global_pooling: true } }
layer { name: "deconv" type: "Deconvolution" bottom: "pool_ave" top: "deconv" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "crop" type: "Crop" bottom: "deconv" bottom: "pool_max" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "reshape" type: "Reshape" bottom: "pool_max" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "softmax" type: "Softmax" bottom: "reshape" top: "softmax" softmax_param { axis: 2 } }
layer { name: "flat" type: "Flatten" bottom: "crop" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "ip_ax" type: "InnerProduct" bottom: "reshape" top: "ip_ax" inner_product_param { num_output: 3 axis: 2 } }
layer { name: "scale2" type: "Scale" bottom: "pool_max" bottom: "pool_g" top: "scale2" scale_param { axis: 0 } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "drop" dropout_param { dropout_ratio: 0.3 } }
layer { name: "mvn" type: "MVN" bottom: "cat" top: "mvn" }
layer { name: "mvn_c" type: "MVN" bottom: "cat" top: "mvn_c" mvn_param { across_channels: true } }
"""


def test_layer_zoo_matches_opencv_blob_by_blob(tmp_path):
    proto = tmp_path / "zoo.prototxt"
    proto.write_text(ZOO)
    model, net = generated(proto, tmp_path, seed=5)
    x = np.random.default_rng(0).standard_normal((2, 4, 13, 11)).astype(np.float32)
    names = [L["name"] for L in net.graph["layers"] if L["name"] != "slice"]  # one top each, named as the layer
    want = opencv(proto, model, x, names, fusion=False)
    with torch.no_grad():
        ours = net.run(torch.from_numpy(x), names)
    errs = {n: rel_err(ours[n], want[n]) for n in names}
    assert max(errs.values()) <= TARGET, {n: e for n, e in errs.items() if e > TARGET}


def test_layers_opencv_lacks_or_computes_differently(tmp_path):
    proto = tmp_path / "more.prototxt"
    proto.write_text("""input: "data" input_shape { dim: 2 dim: 6 dim: 4 dim: 5 }
layer { name: "log" type: "Log" bottom: "data" top: "log" log_param { base: 10 scale: 2 shift: 30 } }
layer { name: "thr" type: "Threshold" bottom: "data" top: "thr" threshold_param { threshold: 0.2 } }
layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: -0.5 max: 0.25 } }
layer { name: "bias" type: "Bias" bottom: "data" top: "bias" }
layer { name: "bias2" type: "Bias" bottom: "data" bottom: "clip" top: "bias2" bias_param { axis: 0 } }
layer { name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param { axis: 1 num_axes: 2 } }
layer { name: "ipt" type: "InnerProduct" bottom: "data" top: "ipt" inner_product_param { num_output: 3 transpose: true } }
layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" }
layer { name: "rs" type: "Reshape" bottom: "data" top: "rs" reshape_param { shape { dim: -1 dim: 5 } axis: 2 } }
layer { name: "fl" type: "Flatten" bottom: "data" top: "fl" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "cr" type: "Crop" bottom: "data" bottom: "sc" top: "cr" crop_param { axis: 2 offset: 0 offset: 0 } }
layer { name: "sw" type: "Swish" bottom: "data" top: "sw" }
layer { name: "silence" type: "Silence" bottom: "a" }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
layer { name: "mvn_c" type: "MVN" bottom: "data" top: "mvn_c" mvn_param { across_channels: true normalize_variance: false } }
layer { name: "red" type: "Reduction" bottom: "data" top: "red" reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 } }
layer { name: "tile" type: "Tile" bottom: "data" top: "tile" tile_param { axis: 2 tiles: 3 } }
layer { name: "ids" type: "Threshold" bottom: "data" top: "ids" }
layer { name: "emb" type: "Embed" bottom: "ids" top: "emb" embed_param { input_dim: 2 num_output: 3 } }
""")
    net = randomize(caffe.convert([proto]), 7)
    x = torch.randn(2, 6, 4, 5)
    names = ["log", "thr", "clip", "bias", "bias2", "sc", "ipt", "a", "b", "c", "rs", "fl", "cr", "sw", "mvn", "mvn_c",
             "red", "tile", "emb"]
    with torch.no_grad():
        o = net.run(x, names)
    xn = x.numpy().astype(np.float64)
    assert np.allclose(o["log"].numpy(), np.log10(30 + 2 * xn), rtol=1e-6)
    assert np.array_equal(o["thr"].numpy(), (xn > 0.2).astype(np.float32))
    assert np.allclose(o["clip"].numpy(), np.clip(xn, -0.5, 0.25))
    assert np.allclose(o["bias"].numpy(), xn + net.bias.bias.detach().numpy()[:, None, None], atol=1e-6)
    assert torch.allclose(o["bias2"], x + o["clip"])
    assert np.allclose(o["sc"].numpy(), xn * net.sc.weight.detach().numpy()[:, :, None], atol=1e-6)
    wt = caffe.caffe_blobs(net)
    blob = dict((n, a) for n, _, a in wt)["ipt"][0]
    assert blob.shape == (120, 3)  # transposed InnerProduct blobs are [in, out]
    assert np.allclose(o["ipt"].numpy(), xn.reshape(2, -1) @ blob + net.ipt.bias.detach().numpy(), atol=1e-5)
    assert [o[k].shape[1] for k in "abc"] == [2, 2, 2]
    assert o["rs"].shape == (2, 6, 4, 5) and o["fl"].shape == (2, 24, 5) and o["cr"].shape == (2, 6, 4, 5)
    assert torch.allclose(o["sw"], x * torch.sigmoid(x))
    assert "a" not in net.outputs and "log" in net.outputs  # Silence consumes nothing we compute
    centred = xn - xn.mean((2, 3), keepdims=True)
    assert np.allclose(o["mvn"].numpy(), centred / (np.sqrt((centred ** 2).mean((2, 3), keepdims=True)) + 1e-9),
                       atol=1e-5)
    assert np.allclose(o["mvn_c"].numpy(), xn - xn.mean((1, 2, 3), keepdims=True), atol=1e-6)
    assert np.allclose(o["red"].numpy(), 0.5 * (xn ** 2).reshape(2, -1).sum(1), rtol=1e-5)
    assert np.array_equal(o["tile"].numpy(), np.tile(x.numpy(), (1, 1, 3, 1)))
    w = net.emb.weight.detach().numpy()
    assert np.allclose(o["emb"].numpy(), w[(xn > 0).astype(int)] + net.emb.bias.detach().numpy(), atol=1e-6)


# ---------------------------------------------------------------- bad input

def test_unsupported_layer_types_are_named_before_any_weights_are_read(tmp_path):
    proto = tmp_path / "u.prototxt"
    proto.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                     'layer { name: "py1" type: "Python" bottom: "data" top: "p1" }\n'
                     'layer { name: "py2" type: "Python" bottom: "p1" top: "p2" }\n'
                     'layer { name: "roi" type: "ROIPooling" bottom: "p2" top: "r" }\n')
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff" * 64)  # never read: the type check comes first
    with pytest.raises(GraftError) as e:
        caffe.convert([proto, junk])
    msg = str(e.value)
    assert msg.startswith(f"{proto}: unsupported Caffe layer types: ")
    assert "Python (used by py1, py2); ROIPooling (used by roi)" in msg and "graft transplant" in msg
    assert "\n" not in msg


def test_blob_shapes_contradicting_the_prototxt_name_layer_and_shapes(tmp_path):
    layers = layer_blobs(read_net(fixture("caffe/lenet.caffemodel")))
    bad = [(n, t, [a[:, :, :3, :3] if n == "conv2" and a.ndim == 4 else a for a in arrays]) for n, t, arrays in layers]
    write_caffemodel(tmp_path / "bad.caffemodel", bad)
    with pytest.raises(GraftError, match=r"'conv2'.*\[50, 20, 3, 3\].*\[50, 20, 5, 5\]"):
        caffe.convert([fixture("caffe/lenet.prototxt"), tmp_path / "bad.caffemodel"])
    nobias = [(n, t, arrays[:1] if n == "ip1" else arrays) for n, t, arrays in layers]
    write_caffemodel(tmp_path / "nobias.caffemodel", nobias)
    with pytest.raises(GraftError, match="'ip1'.*1 blobs.*2"):
        caffe.convert([fixture("caffe/lenet.prototxt"), tmp_path / "nobias.caffemodel"])


def test_weights_of_another_net_are_refused():
    with pytest.raises(GraftError, match="none of its layers matches.*conv1, conv2, ip1, ip2"):
        caffe.convert([fixture("caffe/googlenet.deploy.prototxt"), fixture("caffe/lenet.caffemodel")])


def test_a_bottom_nobody_produces_is_reported(tmp_path):
    proto = tmp_path / "m.prototxt"
    proto.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                     'layer { name: "r" type: "ReLU" bottom: "dat" top: "r" }\n')
    with pytest.raises(GraftError, match="'r'.*'dat'"):
        caffe.convert([proto])


def test_claims_only_caffe_files():
    from pathlib import Path
    assert caffe.claims([Path("a.prototxt"), Path("a.caffemodel")])
    assert caffe.claims([Path("deploy.prototxt")])
    assert caffe.claims([Path("a.caffemodel")]) and not caffe.claims([Path("m.onnx")])
    assert not caffe.claims([Path("a.prototxt"), Path("m.onnx")]) and not caffe.claims([Path("mean.binaryproto")])


@pytest.mark.parametrize("name,out", [("lenet", "ip2"), ("mtcnn_det1", "conv4-2")])
def test_a_caffemodel_alone_uses_its_own_training_net(name, out):
    # the caffemodel holds the TRAIN net: data layers without shapes (parameter shapes come from the blobs),
    # labels (MTCNN's HDF5Data lists its label top first) told apart by what feeds the losses' targets
    net = caffe.convert([fixture(f"caffe/{name}.caffemodel")])
    assert net.graph["phase"] == "TRAIN" and len(net.data_inputs) == 1
    assert net.data_inputs[0] in ("data", "data12face") and out in net.loss_weights
    x = load(f"caffe/{name}.input.npy")
    with torch.no_grad():
        y = net.run(x, [out])[out]
    assert rel_err(y, np.load(fixture(f"caffe/{name}.{out}.opencv.npy"))) <= TARGET
    assert not any(b.startswith("label") for b in net.train_outputs)


def test_parameters_named_alike_are_shared_as_in_caffe(tmp_path):
    proto = tmp_path / "siamese.prototxt"
    proto.write_text('input: "a" input_shape { dim: 2 dim: 1 dim: 6 dim: 6 }\n'
                     'input: "b" input_shape { dim: 2 dim: 1 dim: 6 dim: 6 }\n'
                     'layer { name: "conv_a" type: "Convolution" bottom: "a" top: "fa" param { name: "w" } '
                     'param { name: "bias" } convolution_param { num_output: 3 kernel_size: 3 } }\n'
                     'layer { name: "conv_b" type: "Convolution" bottom: "b" top: "fb" param { name: "w" } '
                     'param { name: "bias" } convolution_param { num_output: 3 kernel_size: 3 } }\n')
    net = caffe.convert([proto])
    assert net.conv_a.weight is net.conv_b.weight and len(list(net.parameters())) == 2
    back = graftkit.load(graftkit.save(net, tmp_path / "s.safetensors"))
    assert back.conv_a.weight is back.conv_b.weight and back.conv_a.bias is back.conv_b.bias
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        out = back(x, x)  # two inputs, positionally
        assert torch.equal(out["fa"], out["fb"]) and torch.equal(out["fa"], net(x, x)["fa"])


def test_converted_weights_train_in_place_without_touching_the_caffemodel():
    model = fixture("caffe/lenet.caffemodel")
    before = model.read_bytes()
    net = caffe.convert([fixture("caffe/lenet.prototxt"), model]).train()
    w0 = net.conv1.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = load("caffe/lenet.input.npy"), torch.tensor([3, 7])
    loss = torch.nn.functional.cross_entropy(net.run(x, ["ip2"])["ip2"], y)
    loss.backward()
    opt.step()
    assert not torch.equal(net.conv1.weight, w0)  # the weights view a private copy-on-write map
    assert model.read_bytes() == before
