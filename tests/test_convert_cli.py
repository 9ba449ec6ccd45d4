"""`graft convert`: a foreign network in, a graftkit package out that `graftkit.load` rebuilds exactly;
bad input gives one error line, exit status 2 and no output file."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import graftkit
from conftest import fixture, rel_err, run_graft
from graftkit.errors import GraftError
from graftkit.nets import convert as dispatch


def test_convert_writes_a_package_that_loads_to_the_same_net(tmp_path):
    out = tmp_path / "det1.safetensors"
    files = [fixture("caffe/mtcnn_det1.prototxt"), fixture("caffe/mtcnn_det1.caffemodel")]
    r = run_graft("convert", *files, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["converter"] == "caffe" and summary["outputs"] == ["conv4-2", "prob1"]
    assert summary["inputs"][0] == {"name": "data", "shape": [1, 3, 12, 12]}
    assert summary["preprocessing"]["channel_order"] == "BGR" and summary["parameters"] == 6632
    net = graftkit.load(out)
    direct = graftkit.convert(files)
    assert net.state_dict().keys() == direct.state_dict().keys()
    x = torch.from_numpy(np.load(fixture("caffe/mtcnn_det1.input.npy")))
    with torch.no_grad():
        a, b = net(x), direct(x)
    assert set(a) == {"conv4-2", "prob1"} and all(torch.equal(a[k], b[k]) for k in a)
    assert rel_err(a["prob1"], np.load(fixture("caffe/mtcnn_det1.prob1.opencv.npy"))) <= 1e-5
    assert graftkit.read_meta(out)["preprocessing"]["pixel_range"] == 255.0


TRAIN_VAL = """name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "train_lmdb" batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mirror: false crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "val_lmdb" batch_size: 2 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "aux/fc" type: "InnerProduct" bottom: "conv" top: "aux/fc" inner_product_param { num_output: 3 } }
layer { name: "aux/loss" type: "SoftmaxWithLoss" bottom: "aux/fc" bottom: "label" top: "aux/loss" loss_weight: 0.3 }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
"""


def test_convert_table_and_train_phase(tmp_path):
    proto = tmp_path / "train_val.prototxt"
    proto.write_text(TRAIN_VAL)
    out = tmp_path / "t.safetensors"
    r = run_graft("convert", proto, "-o", out, "--phase", "train")
    assert r.returncode == 0, r.stderr
    assert "aux/fc, fc" in r.stdout and "converter" in r.stdout  # the table shows the training outputs
    net = graftkit.load(out)
    pre = net.graftkit_meta["preprocessing"]
    assert net.graph["phase"] == "TRAIN" and pre["mirror"] is True and pre["mean"] == [104.0, 117.0, 123.0]
    assert net.loss_weights == {"aux/fc": 0.3, "fc": 1.0} and net.aux_fc.weight.shape == (3, 144)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert list(net.train()(x)) == ["aux/fc", "fc"]
        assert net.eval()(x).shape == (4, 3)


BAD_PROTOTXTS = {
    "syntax": ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
               'layer { name: "r" type: "ReLU" bottom: "data" top: "r"\n  relu_param { negative_slope: ] } }\n',
               r":4:32: expected a number"),
    "unsupported": ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                    'layer { name: "prop" type: "Proposal" bottom: "data" top: "p" }\n',
                    r"unsupported Caffe layer type: Proposal \(used by prop\)"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PROTOTXTS))
def test_bad_prototxt_one_error_exit_2_no_output(kind, tmp_path):
    text, pattern = BAD_PROTOTXTS[kind]
    proto = tmp_path / "bad.prototxt"
    proto.write_text(text)
    out = tmp_path / "out.safetensors"
    r = run_graft("convert", proto, "-o", out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error:"), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_contradicting_caffemodel_one_error_exit_2_no_output(tmp_path):
    from graftkit.formats.caffe import layer_blobs, read_net, write_caffemodel
    layers = layer_blobs(read_net(fixture("caffe/lenet.caffemodel")))
    write_caffemodel(tmp_path / "w.caffemodel",
                     [(n, t, [a[:250] if n == "ip1" and a.ndim == 2 else a for a in arrays]) for n, t, arrays in layers])
    out = tmp_path / "out.safetensors"
    r = run_graft("convert", fixture("caffe/lenet.prototxt"), tmp_path / "w.caffemodel", "-o", out)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "'ip1'" in r.stderr and "[250, 800]" in r.stderr and "[500, 800]" in r.stderr
    assert not out.exists()


def test_dispatch_by_suffix_and_missing_files(tmp_path):
    assert dispatch.candidates([tmp_path / "a.prototxt", tmp_path / "a.caffemodel"]) == ["caffe"]
    assert dispatch.candidates([tmp_path / "m.onnx"]) == ["onnx"]
    odd = tmp_path / "model.xyz"
    odd.write_text("x")
    with pytest.raises(GraftError, match="cannot tell which framework"):
        graftkit.convert(odd)
    with pytest.raises(GraftError, match="no such file"):
        graftkit.convert(tmp_path / "nope.prototxt")
    r = run_graft("convert", tmp_path / "nope.prototxt", "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "no such file" in r.stderr and not (tmp_path / "o.safetensors").exists()


def test_input_shape_option_for_a_prototxt_without_one(tmp_path):
    proto = tmp_path / "h.prototxt"
    proto.write_text('layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "x" } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                     'inner_product_param { num_output: 3 } }\n')
    out = tmp_path / "h.safetensors"
    r = run_graft("convert", proto, "-o", out, "--input-shape", "data=2,2,4,4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inputs"][0] == {"name": "data", "shape": [2, 2, 4, 4]}
    assert graftkit.load(out).ip.weight.shape == (3, 32)
