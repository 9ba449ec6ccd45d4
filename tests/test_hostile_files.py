"""Hostile files of every kind the fuzzer (tests/fuzz.py) found, one per class of fix: each is one clean
GraftError, and the memory bombs are refused in a child whose address space may grow by 1 GiB at most."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import graftkit
from graftkit.errors import GraftError

from conftest import fixture

TESTS = Path(__file__).parent


def in_sandbox(cases: list[tuple[str, dict[str, Path], str]]) -> list[tuple[str, str]]:
    """(outcome, detail) of each (entry, files, mutated role) case, read by tests/fuzz.py's entry points in
    a forked child limited to its starting address space + 1 GiB (one warm subprocess for all cases)."""
    spec = [{"entry": e, "files": {k: str(v) for k, v in f.items()}, "role": r} for e, f, r in cases]
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import fuzz; "
            "fuzz.warm_up(); out = []\n"
            "for i, c in enumerate(json.loads(sys.argv[2])):\n"
            "    files = {k: Path(v) for k, v in c['files'].items()}\n"
            "    t = fuzz.Target('case', files, c['role'], c['entry'])\n"
            "    out.append(fuzz.run_in_child(t, files[c['role']].read_bytes(), Path(sys.argv[3]) / str(i), 120, 1024)[:2])\n"
            "print(json.dumps(out))")
    work = Path(cases[0][1][cases[0][2]]).parent / "sandbox"
    res = subprocess.run([sys.executable, "-c", code, str(TESTS), json.dumps(spec), str(work)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [tuple(o) for o in json.loads(res.stdout.strip().splitlines()[-1])]


# ---------------------------------------------------------------- memory bombs: refused before the process grows 1 GiB

def _mx_params(path: Path, name: bytes, body: bytes) -> Path:
    path.write_bytes(struct.pack("<QQQ", 0x112, 0, 1) + body + struct.pack("<QQ", 1, len(name)) + name)
    return path


def _mx_dense(shape, dtype=np.float32) -> bytes:
    a = np.ones(shape, dtype=dtype)
    return (struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack(f"<i{len(shape)}q", len(shape), *shape)
            + struct.pack("<iii", 1, 0, 0) + a.tobytes())


def _bombs(tmp_path: Path) -> dict[str, tuple[str, dict[str, Path], str]]:
    import h5py
    import onnx
    from onnx import TensorProto, helper
    bombs = {}
    # an .h5 weight declared 25000^2 with no data stored
    with h5py.File(tmp_path / "giant.h5", "w") as h5:
        h5.attrs["layer_names"] = [b"dense"]
        g = h5.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0"]
        g.create_group("dense").create_dataset("kernel:0", shape=(25000, 25000), dtype="f4")
    bombs["h5 25000^2"] = ("read", {"h5": tmp_path / "giant.h5"}, "h5")
    # an MXNet row_sparse array of one stored row whose dense shape is 10^9 x 3
    body = (struct.pack("<Ii", 0xF993FAC9, 1) + struct.pack("<i2q", 2, 1, 3) + struct.pack("<i2q", 2, 10**9, 3)
            + struct.pack("<iii", 1, 0, 0) + struct.pack("<i", 6) + struct.pack("<iq", 1, 1)
            + np.ones(3, np.float32).tobytes() + np.zeros(1, np.int64).tobytes())
    bombs["mxnet row_sparse"] = ("read", {"params": _mx_params(tmp_path / "sparse.params", b"arg:emb_weight", body)},
                                 "params")
    # an MXNet symbol whose convolution kernel (100000^2) does not fit its small weight
    d = tmp_path / "mx"
    d.mkdir()
    nodes = [{"op": "null", "name": "data", "inputs": []}, {"op": "null", "name": "c_weight", "inputs": []},
             {"op": "Convolution", "name": "c", "inputs": [[0, 0, 0], [1, 0, 0]],
              "attrs": {"kernel": "(100000, 100000)", "num_filter": "1000", "no_bias": "True"}}]
    (d / "net-symbol.json").write_text(json.dumps({"nodes": nodes, "arg_nodes": [0, 1], "heads": [[2, 0, 0]]}))
    _mx_params(d / "net-0000.params", b"arg:c_weight", _mx_dense((1000, 3, 1, 1)))
    bombs["mxnet kernel"] = ("convert", {"symbol": d / "net-symbol.json", "params": d / "net-0000.params"}, "params")
    # an ONNX initializer that claims 30000^2 and holds 4 bytes
    t = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[30000, 30000], raw_data=b"\0" * 4)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 30000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 30000])], [t])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "big.onnx")
    bombs["onnx 30000^2"] = ("read", {"onnx": tmp_path / "big.onnx"}, "onnx")
    bombs["onnx 30000^2 convert"] = ("convert", {"onnx": tmp_path / "big.onnx"}, "onnx")
    # an .npz member whose npy header declares 16e9 floats
    npz = tmp_path / "big.npz"
    with zipfile.ZipFile(npz, "w") as zf:
        hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (16000000000,), }"
        hdr += b" " * (-(10 + len(hdr) + 1) % 64) + b"\n"
        zf.writestr("W.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + b"\0" * 64)
    bombs["npz header"] = ("read", {"npz": npz}, "npz")
    # a prototxt-only layer of absurd size (num_output 2e9 over a 3x227x227 input)
    proto = tmp_path / "absurd.prototxt"
    proto.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }\n'
                     'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                     'inner_product_param { num_output: 2000000000 } }\n')
    bombs["caffe absurd layer"] = ("convert", {"prototxt": proto}, "prototxt")
    proto2 = tmp_path / "big.prototxt"
    proto2.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }\n'
                      'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                      'inner_product_param { num_output: 4096 } }\n')  # 633 M parameters: 2.4 GiB
    bombs["caffe prototxt-only 2.4 GiB"] = ("convert", {"prototxt": proto2}, "prototxt")
    return bombs


@pytest.mark.slow
def test_memory_bombs_are_refused_before_the_process_grows_by_a_gib(tmp_path):
    bombs = _bombs(tmp_path)
    outcomes = dict(zip(bombs, in_sandbox(list(bombs.values()))))
    assert {k: o for k, (o, _) in outcomes.items() if o != "clean"} == {}, outcomes


def test_memory_bombs_are_one_clean_error(tmp_path):
    """The same files in this process (fast): one GraftError each, naming the size or the misfit."""
    expect = {"h5 25000^2": "more than the file could hold", "mxnet row_sparse": "densify",
              "mxnet kernel": "do not fit its weight", "onnx 30000^2": "corrupt", "npz header": "holds at most",
              "caffe absurd layer": "would need a parameter", "caffe prototxt-only 2.4 GiB": "GiB of parameters"}
    bombs = _bombs(tmp_path)
    for name, (entry, files, _) in bombs.items():
        if name not in expect:
            continue
        with pytest.raises(GraftError, match=expect[name]):
            if entry == "read":
                graftkit.read(next(iter(files.values())))
            else:
                graftkit.convert(list(files.values()))


# ---------------------------------------------------------------- safetensors and packages

def _st(path: Path, header, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header, match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    (b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}", "corrupt safetensors header"),
    ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, "corrupt safetensors entry"),
    ({"a": {"dtype": "F32", "shape": "ab", "data_offsets": [0, 8]}}, "corrupt safetensors entry"),
    ({"a": {"dtype": "F32", "shape": [1.5, 2], "data_offsets": [0, 12]}}, "corrupt safetensors entry"),
    ({"a": {"dtype": "F32", "shape": [30000, 30000], "data_offsets": [0, 16]}}, "wrong size"),
    (b'{"a": {"dtype": "F32", "shape": ' + b"[" * 1000 + b"]" * 1000 + b', "data_offsets": [0, 8]}}',
     "corrupt safetensors entry"),
    ({"__metadata__": ["x"], "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "__metadata__"),
    ({"__metadata__": {"graftkit": 5}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
     "__metadata__"),
])
def test_hostile_safetensors_headers(tmp_path, header, match):
    path = _st(tmp_path / "x.safetensors", header, b"\0" * 16)
    with pytest.raises(GraftError, match=match):
        graftkit.read(path)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    net = graftkit.convert([fixture("caffe/lenet.prototxt"), fixture("caffe/lenet.caffemodel")])
    path = tmp_path_factory.mktemp("pkg") / "lenet.safetensors"
    graftkit.save(net, path, classes=[str(i) for i in range(10)])
    return path


def _with_doc(src: Path, dst: Path, change) -> Path:
    raw = src.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    doc = json.loads(header["__metadata__"]["graftkit"])
    header["__metadata__"]["graftkit"] = change(doc) if callable(change) else change
    return _st(dst, json.dumps(header).encode(), raw[8 + n:])


@pytest.mark.parametrize("change, match", [
    ("[" * 50000 + "]" * 50000, "metadata.* is corrupt"),
    ('"just a string"', "not a graftkit package document"),
    (lambda d: {**d, "classes": {"a": 1}}, "classes is not"),
    (lambda d: {**d, "order": True}, "order is not"),
    (lambda d: {**d, "spec": 5}, "spec is not"),
    (lambda d: {**d, "preprocessing": [1, 2]}, "preprocessing is not"),
])
def test_hostile_package_documents(tmp_path, package, change, match):
    path = _with_doc(package, tmp_path / "bad.safetensors",
                     (lambda d: json.dumps(change(d))) if callable(change) else change)
    for fn in (graftkit.read, graftkit.package.read_meta, graftkit.load):
        with pytest.raises(GraftError, match=match):
            fn(path)


@pytest.mark.parametrize("pre, match", [
    ({"input_size": [1, 28, 28], "mean": 0, "std": 1}, None),  # LeNet's own: works
    ({"input_size": [3, 28, 28], "mean": 0, "std": 1}, "cannot run on its preprocessed input"),
    ({"input_size": [1, 100000, 100000]}, "sides must be"),
    ({"input_size": "big"}, "not \\[channels,\\] height, width"),
    ({"input_size": [1, 28, 28], "mean": [float("nan")], "std": 1}, "not finite"),
    ({"input_size": [1, 28, 28], "pixel_range": "x"}, "pixel_range"),
    ({"input_size": [1, 28, 28], "resize": 10**12}, "resize"),
])
def test_a_package_whose_preprocessing_does_not_fit_its_network(tmp_path, package, pre, match):
    from graftkit.serve.predict import predict
    path = _with_doc(package, tmp_path / "p.safetensors", lambda d: json.dumps({**d, "preprocessing": pre}))
    if match is None:
        assert predict(path, [fixture("images/cat.jpg")], progress=False, device="cpu")[0]["predictions"]
        return
    with pytest.raises(GraftError, match=match):
        predict(path, [fixture("images/cat.jpg")], progress=False, device="cpu")


def test_a_package_with_fewer_class_names_than_outputs(tmp_path, package):
    from graftkit.serve.predict import predict
    path = _with_doc(package, tmp_path / "p.safetensors", lambda d: json.dumps({**d, "classes": ["a", "b"]}))
    with pytest.raises(GraftError, match="names 2 classes but outputs 10"):
        predict(path, [fixture("images/cat.jpg")], progress=False, device="cpu")


# ---------------------------------------------------------------- MXNet symbols

def _symbol_case(tmp_path: Path, mutate) -> list[Path]:
    d = tmp_path / "m"
    shutil.copytree(fixture("mxnet").parent / "mxnet", d, ignore=shutil.ignore_patterns("im2rec", "*.npy"))
    sym = d / "vgg_tiny-symbol.json"
    doc = json.loads(sym.read_text())
    mutate(doc)
    sym.write_text(json.dumps(doc))
    return [sym, d / "vgg_tiny-0001.params"]


def _set_node(i, v):
    def f(doc):
        doc["nodes"][i] = v
    return f


def _set_input(v):
    def f(doc):
        node = next(n for n in doc["nodes"] if n.get("inputs"))
        node["inputs"][0] = v
    return f


def _set_attr(k, v):
    def f(doc):
        node = next(n for n in doc["nodes"] if n["op"] == "Convolution")
        node.setdefault("attrs", {})[k] = v
    return f


@pytest.mark.parametrize("mutate, match", [
    (_set_node(3, [1, 2]), "not an object"),
    (_set_node(3, {"op": {}, "name": "x"}), "no string 'op'"),
    (_set_input([10**9, 0, 0]), "not an earlier node"),
    (_set_input([-1, 0, 0]), "not an earlier node"),
    (lambda doc: doc.__setitem__("heads", [[10**9, 0, 0]]), "head"),
    (lambda doc: doc["nodes"][1].__setitem__("inputs", [[5, 0, 0]]), "not an earlier node"),  # a cycle
    (lambda doc: doc.__setitem__("arg_nodes", 7), "arg_nodes"),
    (lambda doc: next(n for n in doc["nodes"] if n["op"] == "Convolution").__setitem__("attrs", [1]),
     "attributes that are not short strings"),
    (_set_attr("kernel", "(" * 5000 + "3" + ")" * 5000), "attributes that are not short strings"),
    (_set_attr("kernel", "abc"), "invalid attributes"),
    (_set_attr("num_group", "0"), "do not fit its weight"),
])
def test_hostile_mxnet_symbols(tmp_path, mutate, match):
    paths = _symbol_case(tmp_path, mutate)
    with pytest.raises(GraftError, match=match):
        graftkit.convert(paths)


# ---------------------------------------------------------------- npz, .idx, images, Caffe, Keras

def test_npz_members_that_are_not_npy_and_names_that_are_not_utf8(tmp_path):
    a = tmp_path / "a.npz"
    buf = __import__("io").BytesIO()
    np.save(buf, np.ones(3, np.float32))
    with zipfile.ZipFile(a, "w") as zf:
        zf.writestr("W.npy", buf.getvalue())
        zf.writestr("notes.txt", b"hello")
    with pytest.raises(GraftError, match="is not a .npy array"):
        graftkit.read(a)
    b = tmp_path / "b.npz"
    np.savez(b, W=np.ones(3, np.float32))
    raw = bytearray(b.read_bytes())
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = raw.find(sig)
        raw[at + flag_at + 1] |= 0x08  # bit 11: the name is UTF-8
        raw[at + name_at] = 0xFF  # ... and it is not
    b.write_bytes(bytes(raw))
    with pytest.raises(GraftError, match="corrupt or truncated NumPy file"):
        graftkit.read(b)


def test_a_corrupt_npy_header_is_one_error(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.ones(3, np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"(3,)", b"((((", 1))
    with pytest.raises(GraftError, match="corrupt"):
        graftkit.read(path)


@pytest.mark.parametrize("line", [b"0\t\xff\xfe\n", b"0\t-8\n", b"0\t8\t9\n", b"0\t" + b"1" * 5000 + b"\n"])
def test_hostile_idx_lines(tmp_path, line):
    from graftkit.data.recordio import RecordReader
    src = fixture("mxnet/im2rec/multi.rec")
    shutil.copy(src, tmp_path / "p.rec")
    (tmp_path / "p.idx").write_bytes(line)
    with pytest.raises(GraftError, match="expected `key<TAB>offset`"):
        RecordReader(tmp_path / "p.rec")


def test_probe_of_a_damaged_image_is_a_decode_error():
    from graftkit.data.decode import DecodeError, probe
    raw = bytearray(fixture("mxnet/im2rec/imgs/tshirt/01.png").read_bytes())
    raw[16:24] = struct.pack(">II", 2**31 - 1, 2**31 - 1)
    with pytest.raises(DecodeError):
        probe(bytes(raw))


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("stride: 1", "stride: 0", 1), "stride \\[0, 0\\] must be at least 1"),
    (lambda t: t.replace('bottom: "pool1"', "", 1), "has 0 bottoms but takes 1"),
    (lambda t: t.replace('bottom: "pool1"', 'bottom: "pool1"\n  bottom: "pool1"', 1), "has 2 bottoms but takes 1"),
    (lambda t: t.replace("kernel_size: 5", "kernel_size: 2000000000", 1), "would need a parameter"),
    (lambda t: t.replace("num_output: 20", "num_output: 0", 1), "num_output 0 must be at least 1"),
])
def test_hostile_caffe_prototxts(tmp_path, edit, match):
    text = fixture("caffe/lenet.prototxt").read_text()
    new = edit(text)
    assert new != text
    (tmp_path / "n.prototxt").write_text(new)
    with pytest.raises(GraftError, match=match):
        graftkit.convert([tmp_path / "n.prototxt"])


def test_a_damaged_hdf5_symbol_table_is_one_error(tmp_path):
    raw = fixture("keras/layout_zoo.h5").read_bytes()
    assert b"SNOD" in raw
    (tmp_path / "m.h5").write_bytes(raw.replace(b"SNOD", b"XXXX"))
    with pytest.raises(GraftError, match="truncated or corrupt"):
        graftkit.read(tmp_path / "m.h5")
    with pytest.raises(GraftError):
        graftkit.convert([tmp_path / "m.h5"])


def test_an_onnx_initializer_of_an_unknown_data_type(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    t = onnx.TensorProto(name="W", data_type=55, dims=[2], raw_data=b"\0" * 8)
    g = helper.make_graph([helper.make_node("Relu", ["W"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [t])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(GraftError, match="unknown data type 55"):
        graftkit.read(tmp_path / "m.onnx")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, 93, zipfile.ZIP_LZMA])
def test_a_keras_archive_with_a_compression_zipfile_cannot_read(tmp_path, method):
    src = fixture("keras/layout_zoo.keras")
    raw = bytearray(src.read_bytes())
    if method == zipfile.ZIP_LZMA:  # an LZMA member whose properties are damaged
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "m.keras", "w", method) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info))
        raw = bytearray((tmp_path / "m.keras").read_bytes())
        at = raw.find(b"PK\x03\x04")
        while raw[at + 30:at + 30 + 16] != b"model.weights.h5":
            at = raw.find(b"PK\x03\x04", at + 4)
        data = at + 30 + 16 + struct.unpack_from("<H", raw, at + 28)[0]
        raw[data + 4:data + 9] = b"\xff" * 5  # the LZMA properties after zipfile's 4-byte header
        (tmp_path / "m.keras").write_bytes(bytes(raw))
    elif method == 93:  # zstd: patch the method field of every header
        for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            i = raw.find(sig)
            while i >= 0:
                raw[i + at:i + at + 2] = struct.pack("<H", 93)
                i = raw.find(sig, i + 4)
        (tmp_path / "m.keras").write_bytes(bytes(raw))
    else:
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "m.keras", "w", method) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info))
    if method == zipfile.ZIP_BZIP2:  # Python reads bzip2: this one must still work
        assert len(graftkit.read(tmp_path / "m.keras")) > 0
        return
    with pytest.raises(GraftError, match="cannot be read|truncated or corrupt"):
        graftkit.read(tmp_path / "m.keras")


def test_a_tflite_conv_whose_weight_is_no_constant(tmp_path):
    raw = fixture("tflite/ops_zoo.tflite").read_bytes()  # (found by the fuzzer: a buffer index made huge)
    (tmp_path / "m.tflite").write_bytes(raw[:13336] + struct.pack("<Q", 2**40) + raw[13344:])
    with pytest.raises(GraftError, match="is not a constant of rank"):
        graftkit.convert([tmp_path / "m.tflite"])


def test_an_onnx_external_data_location_with_a_nul_byte(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    t = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "a\0b.bin"), ("offset", "0"), ("length", "8")):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Relu", ["W"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [t])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(GraftError, match="NUL byte"):
        graftkit.read(tmp_path / "m.onnx")


@pytest.mark.parametrize("change, match", [
    (lambda s: s.__setitem__("graph", [1, 2]), None),  # not a graph: rebuilt from the prototxt
    (lambda s: s["graph"]["layers"].__setitem__(0, "conv1"), "Caffe graph is corrupt"),
    (lambda s: s["graph"]["layers"][1].__setitem__("bottoms", ["nowhere"]), "no earlier layer produces"),
    (lambda s: s["graph"]["layers"][0].__setitem__("shapes", [[2**40, 2**40]]), "parameter of shape"),
    (lambda s: s["graph"].__setitem__("outputs", 5), "Caffe graph is corrupt"),
    (lambda s: (s.__setitem__("graph", None), s.__setitem__("prototxt", 5)), "neither a graph nor a prototxt"),
])
def test_a_package_whose_caffe_graph_is_corrupt(tmp_path, package, change, match):
    def edit(doc):
        change(doc["spec"])
        return json.dumps(doc)
    path = _with_doc(package, tmp_path / "p.safetensors", edit)
    if match is None:
        assert graftkit.load(path) is not None
        return
    with pytest.raises(GraftError, match=match):
        graftkit.load(path)
