"""graftkit's own fuzzer: seeded mutants of real files of every format, each read in a sandboxed child.

    python tests/fuzz.py --count 2000 --seed 0            # summary table format x outcome
    python tests/fuzz.py --seed 0 --case 137 --here --save out/  # mutant 137 into out/, read here (traceback)
    python tests/fuzz.py --count 500 --only 'mxnet|onnx' --jobs 2 --save bad/  # some targets; failing mutants kept

Seeds are the real fixtures of tests/fixtures (Caffe prototxt/caffemodel, Keras .h5/.keras, MXNet
symbol/params, RecordIO .rec/.idx/.lst, Chainer .npz, TFLite, images) plus ONNX (inline and
external data), safetensors and graftkit package files written at start with graftkit's own writers.
Mutants come from truncation, bit flips, byte-range overwrites, duplicated/deleted chunks, and inflated
length/size fields of each container (protobuf varints, HDF5/zip/RecordIO/MXNet/FlatBuffers/safetensors
headers, JSON shapes and offsets), plus format-aware edits (hostile .lst/.idx lines, MXNet symbol nodes,
Caffe geometry, package documents, image dimensions).

Mutant i of seed S is a pure function of (S, i): `--case i` reproduces it. Each mutant runs in a
child forked from this (already warm) process, under a wall timeout and an RLIMIT_AS of the child's
starting address space plus `--mem-mib` (1 GiB: "refused before the process grows by more than
1 GiB"). Outcomes:
    clean      a GraftError (one clean line)         accepted   read fine
    traceback  any other exception                   hang       over the timeout
    memory     MemoryError / an allocation refused at the limit
    signal     the child died of a signal
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import re
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MALLOC_ARENA_MAX", "2")

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
OUTCOMES = ("clean", "accepted", "traceback", "hang", "memory", "signal")
BAD = ("traceback", "hang", "memory", "signal")
HUGE = [2**31 - 1, 2**32 - 1, 2**32 + 1, 2**40, 25000 * 25000, 30000, 100000, 2**62, 2**63 - 1, 2**64 - 1]


# ------------------------------------------------------------------------------------------- targets

@dataclass
class Target:
    """One thing to fuzz: the files (role -> path), which one is mutated, how it is read."""
    fmt: str
    files: dict[str, Path]
    mutate: str           # the role of the file that is mutated
    entry: str            # name of the entry function below
    kinds: tuple = ()     # format-aware mutators besides the generic ones
    label: str = ""

    def name(self) -> str:
        return self.label or f"{self.fmt}/{self.files[self.mutate].name}"


def _fx(rel: str) -> Path:
    return FIXTURES / rel


def make_generated_seeds(folder: Path) -> dict[str, Path]:
    """ONNX, plain safetensors and graftkit package seeds, tiny, written with graftkit's own writers."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    import graftkit
    from graftkit.formats.safetensors_file import write_safetensors

    rng = np.random.default_rng(0)
    arr = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"convW": arr(4, 3, 3, 3), "convB": arr(4), "bnS": arr(4), "bnB": arr(4), "bnM": arr(4),
             "bnV": np.abs(arr(4)) + 0.5, "gemmW": arr(4, 5), "gemmB": arr(5)}
    nodes = [helper.make_node("Conv", ["x", "convW", "convB"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bnS", "bnB", "bnM", "bnV"], ["b"], name="bn1"),
             helper.make_node("Relu", ["b"], ["r"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "gemmW", "gemmB"], ["y"], name="fc1")]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    out = {"onnx": folder / "tiny.onnx"}
    onnx.save(model, out["onnx"])
    ext = folder / "ext"
    ext.mkdir()
    out["onnx_ext"], out["onnx_ext_data"] = ext / "tiny_ext.onnx", ext / "tiny_ext.data"
    onnx.save(model, out["onnx_ext"], save_as_external_data=True, all_tensors_to_one_file=True,
              location="tiny_ext.data", size_threshold=0)

    out["safetensors"] = folder / "tiny.safetensors"
    tensors = {"conv.weight": torch.from_numpy(arr(4, 3, 3, 3)), "conv.bias": torch.from_numpy(arr(4)),
               "fc.weight": torch.from_numpy(arr(5, 4)), "steps": torch.tensor([3], dtype=torch.int64),
               "half": torch.from_numpy(arr(2, 2)).half()}
    with open(out["safetensors"], "wb") as f:
        write_safetensors(f, tensors, {"note": "fuzz seed", "framework": "pt"})

    out["package"] = folder / "tiny.package.safetensors"
    net = graftkit.convert([_fx("caffe/cifar10_quick.prototxt"), _fx("caffe/cifar10_quick.caffemodel")])
    graftkit.save(net, out["package"], classes=[f"c{i}" for i in range(10)])
    return out


def targets(gen: dict[str, Path]) -> list[Target]:
    proto, text, zipk, h5k, mxp, mxs = ("varint",), ("text",), ("zip",), ("h5",), ("mxparams",), ("symbol", "text")
    caffe = [("lenet", True), ("cifar10_quick", True), ("mtcnn_det1", True), ("cifar10_quick_v1", True)]
    t: list[Target] = []
    for case, _ in caffe:
        files = {"prototxt": _fx(f"caffe/{case}.prototxt"), "caffemodel": _fx(f"caffe/{case}.caffemodel")}
        t.append(Target("caffemodel", {"caffemodel": files["caffemodel"]}, "caffemodel", "read", proto))
        t.append(Target("caffe_net", files, "caffemodel", "convert", proto, f"caffe_net/{case}.caffemodel"))
        t.append(Target("prototxt", files, "prototxt", "convert", text + ("prototxt",), f"prototxt/{case}.prototxt"))
    for name in ("alexnet.deploy", "googlenet.deploy", "squeezenet_v1.1.deploy"):
        t.append(Target("prototxt", {"prototxt": _fx(f"caffe/{name}.prototxt")}, "prototxt", "convert",
                        text + ("prototxt",)))
    for name in ("layout_zoo.h5", "seed_cnn.h5", "layout_zoo.weights.h5"):
        if _fx(f"keras/{name}").exists():
            t.append(Target("keras_h5", {"h5": _fx(f"keras/{name}")}, "h5", "read", h5k))
            if not name.endswith(".weights.h5"):
                t.append(Target("keras_h5", {"h5": _fx(f"keras/{name}")}, "h5", "convert", h5k,
                                f"keras_h5/{name}:convert"))
    for name in ("layout_zoo.keras", "seed_cnn.keras"):
        t.append(Target("keras_zip", {"keras": _fx(f"keras/{name}")}, "keras", "read", zipk + h5k))
        t.append(Target("keras_zip", {"keras": _fx(f"keras/{name}")}, "keras", "convert", zipk + h5k,
                        f"keras_zip/{name}:convert"))
    for prefix, params in (("vgg_tiny", "vgg_tiny-0001.params"), ("mobilenet0.25", "mobilenet0.25-0000.params")):
        files = {"symbol": _fx(f"mxnet/{prefix}-symbol.json"), "params": _fx(f"mxnet/{params}")}
        t.append(Target("mxnet_params", files, "params", "read", mxp))
        t.append(Target("mxnet_params", files, "params", "convert", mxp, f"mxnet_params/{params}:convert"))
        t.append(Target("mxnet_symbol", files, "symbol", "convert", mxs))
    im = "mxnet/im2rec"
    for stem in ("fmnist_val", "multi"):
        files = {"rec": _fx(f"{im}/{stem}.rec"), "idx": _fx(f"{im}/{stem}.idx"), "lst": _fx(f"{im}/{stem}.lst")}
        t.append(Target("recordio", files, "rec", "recordio", ("recordio",)))
        t.append(Target("recordio_idx", files, "idx", "recordio", text + ("idx",)))
        t.append(Target("lst", files, "lst", "lst", text + ("lst",)))
    t.append(Target("chainer_npz", {"npz": _fx("chainer/chainer_net.npz")}, "npz", "read", zipk + ("npy",)))
    for name in ("images/cat.jpg", f"{im}/imgs/tshirt/01.png", f"{im}/imgs/sneaker/04.jpg"):
        t.append(Target("image", {"image": _fx(name)}, "image", "image", ("image",)))
    for name in ("ops_zoo.tflite", "face_detection_short_range.tflite"):
        t.append(Target("tflite", {"tflite": _fx(f"tflite/{name}")}, "tflite", "read", ("flatbuffer",)))
        t.append(Target("tflite", {"tflite": _fx(f"tflite/{name}")}, "tflite", "convert", ("flatbuffer",),
                        f"tflite/{name}:convert"))
    t.append(Target("onnx", {"onnx": gen["onnx"]}, "onnx", "read", proto))
    t.append(Target("onnx", {"onnx": gen["onnx"]}, "onnx", "convert", proto, "onnx/tiny.onnx:convert"))
    ext = {"onnx": gen["onnx_ext"], "data": gen["onnx_ext_data"]}
    t.append(Target("onnx", ext, "onnx", "read", proto + ("onnx_location",), "onnx/tiny_ext.onnx"))
    t.append(Target("onnx", ext, "data", "convert", (), "onnx/tiny_ext.data:convert"))
    t.append(Target("safetensors", {"st": gen["safetensors"]}, "st", "read", ("safetensors",)))
    t.append(Target("package", {"pkg": gen["package"]}, "pkg", "read", ("safetensors", "package")))
    t.append(Target("package", {"pkg": gen["package"]}, "pkg", "package", ("safetensors", "package"),
                    "package/tiny.package.safetensors:load+predict"))
    return t


# ------------------------------------------------------------------------------------------- entry points
# Each reads the mutant the way a user's command would, touching every tensor it returns.

def _touch(obj) -> None:
    import torch
    if torch.is_tensor(obj):
        if obj.numel():
            obj.reshape(-1)[-1].item()
            obj.sum()
    elif isinstance(obj, dict):
        for v in obj.values():
            _touch(v)


def entry_read(files, path):
    import graftkit.formats
    ts = graftkit.formats.read(path)
    for rec in ts.records if hasattr(ts, "records") else ts.values():
        _touch(getattr(rec, "tensor", rec))


def entry_convert(files, path):
    from graftkit.nets.convert import convert
    net = convert(list(files.values()))
    _touch(net.state_dict())


def entry_recordio(files, path):
    from graftkit.data.decode import DecodeError, decode_tensor
    from graftkit.data.recordio import RecordReader, read_idx, unpack_header
    from graftkit.errors import GraftError
    read_idx(files["idx"])
    reader = RecordReader(files["rec"], files["idx"])
    try:
        for i, payload in enumerate(reader):
            rec = unpack_header(payload)
            if i < 3:
                try:
                    decode_tensor(rec.image if hasattr(rec, "image") else payload)
                except DecodeError:
                    pass
    finally:
        reader.close()
    reader = RecordReader(files["rec"])  # without the .idx: scans the file
    try:
        for payload in reader:
            unpack_header(payload)
    except GraftError:
        pass
    finally:
        reader.close()


def entry_lst(files, path):
    from graftkit.data import open_list, read_lst
    read_lst(path)
    lst = open_list(path)
    len(lst.entries)


def entry_image(files, path):
    from graftkit.data.decode import decode, decode_tensor, probe
    data = path.read_bytes()
    for fn in (lambda: probe(data), lambda: decode(data), lambda: decode_tensor(data),
               lambda: decode(data, min_side=8), lambda: decode(str(path), mode="L")):
        fn()


def entry_package(files, path):
    from graftkit import package
    from graftkit.serve.predict import predict
    package.read_meta(path)
    net = package.load(path)
    _touch(net.state_dict())
    predict(path, [str(FIXTURES / "images/cat.jpg")], progress=False, device="cpu")


ENTRIES = {"read": entry_read, "convert": entry_convert, "recordio": entry_recordio, "lst": entry_lst,
           "image": entry_image, "package": entry_package}


# ------------------------------------------------------------------------------------------- mutators

def _rand_bytes(rng, n):
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def m_truncate(b, rng):
    cut = int(rng.integers(0, len(b))) if len(b) else 0
    return b[:cut], f"truncate@{cut}"


def m_bitflip(b, rng):
    b = bytearray(b)
    k = int(rng.integers(1, 9))
    where = []
    for _ in range(k):
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        where.append(i)
    return bytes(b), f"bitflip@{','.join(map(str, where))}"


def m_overwrite(b, rng):
    i = int(rng.integers(0, len(b)))
    n = int(rng.integers(1, 65))
    fill = [_rand_bytes(rng, n), b"\x00" * n, b"\xff" * n, b"\x7f" * n, b"9" * n][int(rng.integers(0, 5))]
    return b[:i] + fill + b[i + n:], f"overwrite@{i}+{n}"


def m_dup_chunk(b, rng):
    i = int(rng.integers(0, len(b)))
    n = int(rng.integers(1, min(4096, len(b) - i) + 1))
    j = int(rng.integers(0, len(b) + 1))
    return b[:j] + b[i:i + n] + b[j:], f"dup[{i}:{i + n}]->{j}"


def m_del_chunk(b, rng):
    i = int(rng.integers(0, len(b)))
    n = int(rng.integers(1, min(4096, len(b) - i) + 1))
    return b[:i] + b[i + n:], f"del[{i}:{i + n}]"


def m_inflate_int(b, rng):
    """A little-endian u32/u64 that looks like a size (1..65535) made huge: HDF5, MXNet, zip, npy fields."""
    wide = bool(rng.integers(0, 2))
    fmt, step = ("<Q", 8) if wide else ("<I", 4)
    arr = np.frombuffer(b[:len(b) // step * step], dtype=np.uint64 if wide else np.uint32)
    cand = np.nonzero((arr >= 1) & (arr <= 65535))[0]
    if not len(cand):
        return m_bitflip(b, rng)
    k = int(cand[int(rng.integers(0, len(cand)))]) * step
    v = HUGE[int(rng.integers(0, len(HUGE)))] & ((1 << (8 * step)) - 1)
    return b[:k] + struct.pack(fmt, v) + b[k + step:], f"inflate{'64' if wide else '32'}@{k}={v}"


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(b, i):
    v = shift = 0
    while i < len(b) and shift < 70:
        byte = b[i]
        v |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if not byte & 0x80:
            return v, i
    return None, i


def m_varint(b, rng):
    """A protobuf length or varint field (a tag byte, then its varint) made huge, or a packed dim inflated."""
    for _ in range(64):
        i = int(rng.integers(0, max(1, len(b) - 2)))
        tag = b[i]
        if tag & 0x80 or (tag & 7) not in (0, 2) or not 1 <= tag >> 3 <= 15:
            continue
        v, j = _read_varint(b, i + 1)
        if v is None or (tag & 7 == 2 and i + 1 + (j - i - 1) + v > len(b)):
            continue
        new = HUGE[int(rng.integers(0, len(HUGE)))]
        if rng.integers(0, 3) == 0:
            new = v + int(rng.integers(1, 64))  # a length a little too long
        return b[:i + 1] + _varint(new % (1 << 64)) + b[j:], f"varint@{i}:{v}->{new}"
    return m_bitflip(b, rng)


ZIP_FIELDS = {b"PK\x03\x04": [(18, "I"), (22, "I"), (26, "H"), (28, "H"), (8, "H")],
              b"PK\x01\x02": [(20, "I"), (24, "I"), (28, "H"), (30, "H"), (42, "I"), (10, "H"), (8, "H")],
              b"PK\x05\x06": [(8, "H"), (10, "H"), (12, "I"), (16, "I")]}


def m_zip(b, rng):
    """A zip local/central/end header's sizes, name length, offsets, flags or compression method changed."""
    spots = [(m.start(), sig) for sig in ZIP_FIELDS for m in re.finditer(re.escape(sig), b)]
    if not spots:
        return m_inflate_int(b, rng)
    at, sig = spots[int(rng.integers(0, len(spots)))]
    off, kind = ZIP_FIELDS[sig][int(rng.integers(0, len(ZIP_FIELDS[sig])))]
    k = at + off
    size = struct.calcsize(kind)
    if k + size > len(b):
        return m_truncate(b, rng)
    if sig != b"PK\x05\x06" and off in ((8,) if sig == b"PK\x03\x04" else (10,)):
        v = [1, 9, 12, 14, 93, 99, 0][int(rng.integers(0, 7))]  # compression method
    elif off == 8 and sig != b"PK\x05\x06" or off == 6:
        v = int(rng.integers(0, 1 << 16))  # flags (encryption, UTF-8 names, data descriptor)
    else:
        v = HUGE[int(rng.integers(0, len(HUGE)))] & ((1 << (8 * size)) - 1)
    return b[:k] + struct.pack("<" + kind, v) + b[k + size:], f"zip{sig[2]}{sig[3]}@{at}+{off}={v}"


def m_zip_members(b, rng):
    """Rewrite the archive: rename a member (non-.npy, non-UTF-8, ../), or store a member that is not npy."""
    try:
        zin = zipfile.ZipFile(io.BytesIO(b))
        items = [(i, zin.read(i)) for i in zin.infolist()]
    except Exception:  # noqa: BLE001 - not a zip any more: fall back to a byte mutation
        return m_bitflip(b, rng)
    out = io.BytesIO()
    k = int(rng.integers(0, len(items)))
    how = int(rng.integers(0, 5))
    with zipfile.ZipFile(out, "w") as zout:
        for n, (info, data) in enumerate(items):
            name = info.filename
            if n == k:
                if how == 0:
                    name = name.replace(".npy", ".txt")
                elif how == 1:
                    data = b"not an npy file at all"
                elif how == 2:
                    data = data.replace(b"'shape': (", b"'shape': (1000000000, ", 1)
                elif how == 3:
                    data = data[:10] + b"{'descr': '<f4', 'fortran_order': False, 'shape': ((((((("
                elif how == 4:
                    data = data.replace(b"'descr': '", b"'descr': 'O", 1)
            zi = zipfile.ZipInfo(name, info.date_time)
            zi.compress_type = info.compress_type
            zout.writestr(zi, data)
    raw = out.getvalue()
    if how == 0 and rng.integers(0, 2):  # a name that is not UTF-8 (flag bit 11 set, bytes invalid)
        raw = raw.replace(b".txt", b"\xff\xfe", 2)
    return raw, f"zipmember#{k}:{how}"


RECORDIO_MAGIC = struct.pack("<I", 0xCED7230A)


def m_recordio(b, rng):
    """A RecordIO record's length (lower 29 bits) or continue flag rewritten, or a label made absurd."""
    spots = [m.start() for m in re.finditer(re.escape(RECORDIO_MAGIC), b)]
    if not spots:
        return m_bitflip(b, rng)
    at = spots[int(rng.integers(0, len(spots)))]
    if at + 8 > len(b):
        return m_truncate(b, rng)
    (lrec,) = struct.unpack_from("<I", b, at + 4)
    how = int(rng.integers(0, 4))
    if how == 0:
        lrec = (lrec & ~((1 << 29) - 1)) | int(rng.choice([(1 << 29) - 1, (lrec & ((1 << 29) - 1)) + 4, 0]))
    elif how == 1:
        lrec = (lrec & ((1 << 29) - 1)) | (int(rng.integers(1, 8)) << 29)
    elif how == 2 and at + 16 <= len(b):  # the image header's flag/label: label = 3e9, nan, inf, -1
        v = float(rng.choice([3e9, float("nan"), float("inf"), -1.0, 2.0**31]))
        return b[:at + 12] + struct.pack("<f", v) + b[at + 16:], f"recordio-label@{at}={v}"
    else:  # the header's flag (number of labels) made large
        if at + 12 > len(b):
            return m_truncate(b, rng)
        v = int(rng.choice([2**31 - 1, 100000, 2**20]))
        return b[:at + 8] + struct.pack("<I", v) + b[at + 12:], f"recordio-flag@{at}={v}"
    return b[:at + 4] + struct.pack("<I", lrec) + b[at + 8:], f"recordio-lrec@{at}={lrec:#x}"


MX_MAGICS = [struct.pack("<I", m) for m in (0xF993FAC9, 0xF993FACA)]


def m_mxparams(b, rng):
    """An MXNet ndarray header: a dim inflated, the storage type switched to row_sparse/csr, the rank changed."""
    spots = [m.start() for mg in MX_MAGICS for m in re.finditer(re.escape(mg), b)]
    if not spots:
        return m_inflate_int(b, rng)
    at = spots[int(rng.integers(0, len(spots)))]
    how = int(rng.integers(0, 4))
    if at + 12 > len(b):
        return m_truncate(b, rng)
    (stype, ndim) = struct.unpack_from("<ii", b, at + 4)
    if how == 0 and ndim > 0 and at + 12 + 8 * ndim <= len(b):
        d = int(rng.integers(0, ndim))
        v = HUGE[int(rng.integers(0, len(HUGE)))] & ((1 << 63) - 1)
        k = at + 12 + 8 * d
        return b[:k] + struct.pack("<q", v) + b[k + 8:], f"mx-dim@{at}[{d}]={v}"
    if how == 1:
        v = int(rng.integers(1, 3))
        return b[:at + 4] + struct.pack("<i", v) + b[at + 8:], f"mx-stype@{at}={v}"
    if how == 2:
        v = int(rng.choice([-1, 0, 33, 2**31 - 1, ndim + 1]))
        return b[:at + 8] + struct.pack("<i", v) + b[at + 12:], f"mx-ndim@{at}={v}"
    # row_sparse with a storage shape of one row and a huge dense shape
    if ndim > 0 and at + 12 + 8 * ndim <= len(b):
        dims = struct.unpack_from(f"<{ndim}q", b, at + 12)
        head = struct.pack("<ii", 1, ndim) + struct.pack(f"<{ndim}q", 1, *dims[1:])
        dense = struct.pack("<i", ndim) + struct.pack(f"<{ndim}q", 10**9, *dims[1:])
        return b[:at + 4] + head + dense + b[at + 12 + 8 * ndim:], f"mx-rowsparse@{at}"
    return m_bitflip(b, rng)


def _jsonable(b):
    try:
        return json.loads(b)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


WEIRD = [None, True, -1, 0, 1.5, 2**63, 2**70, "x", "", [], {}, [[[]]], {"a": {}}, [-1], [2**40, 2**40],
         [1.5, 2], ["1", "2"], [0, 0], float("nan")]


def _weird(rng):
    return copy.deepcopy(WEIRD[int(rng.integers(0, len(WEIRD)))])


def _deep(n: int) -> str:
    """A stand-in for n nested lists, expanded by _expand after json.dumps (which cannot write them)."""
    return f"__DEEP{n}__"


def _expand(raw: str) -> str:
    return re.sub(r'"__DEEP(\d+)__"', lambda m: "[" * int(m.group(1)) + "0" + "]" * int(m.group(1)), raw)


def m_safetensors(b, rng):
    """The safetensors JSON header rewritten: shapes, offsets (overlapping, huge), dtypes, metadata types,
    deep nesting; or the 8-byte header length inflated."""
    if len(b) < 8:
        return m_bitflip(b, rng)
    (n,) = struct.unpack_from("<Q", b)
    header = _jsonable(b[8:8 + n]) if n < len(b) else None
    how = int(rng.integers(0, 9))
    if header is None or not isinstance(header, dict) or how == 0:
        v = int(rng.choice([n + 1, n - 1, n * 1000, 2**63, 2**64 - 1, len(b)]))
        return struct.pack("<Q", v % (1 << 64)) + b[8:], f"st-len={v}"
    data = b[8 + n:]
    names = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    name = names[int(rng.integers(0, len(names)))] if names else None
    desc = ""
    if how == 1 and name:
        header[name]["shape"] = _weird(rng)
        desc = f"shape[{name}]={header[name]['shape']!r}"
    elif how == 2 and name:
        header[name]["shape"] = [int(rng.choice([25000, 30000, 2**31, 2**40]))] * int(rng.integers(1, 4))
        desc = f"shape[{name}]={header[name]['shape']}"
    elif how == 3 and len(names) >= 2:  # overlapping data offsets: two tensors on the same bytes
        a, c = names[0], names[1]
        header[c]["data_offsets"] = list(header[a]["data_offsets"])
        header[c]["shape"], header[c]["dtype"] = header[a]["shape"], header[a]["dtype"]
        desc = f"overlap[{c}={a}]"
    elif how == 4 and name:
        header[name]["data_offsets"] = [int(rng.choice([0, 4, 2**40])), int(rng.choice([0, 8, 2**62, 2**64 + 3]))]
        desc = f"offsets[{name}]={header[name]['data_offsets']}"
    elif how == 5 and name:
        header[name]["dtype"] = _weird(rng) if rng.integers(0, 2) else "F4"
        desc = f"dtype[{name}]={header[name]['dtype']!r}"
    elif how == 6:
        header["__metadata__"] = _weird(rng)
        desc = f"metadata={header['__metadata__']!r}"
    elif how == 7:
        depth = int(rng.choice([100, 1000, 100000]))
        key = name or "deep"
        header[key] = _deep(depth) if rng.integers(0, 2) else {"dtype": "F32", "shape": _deep(depth),
                                                                "data_offsets": [0, 4]}
        desc = f"deep[{key}]={depth}"
    elif name:
        header[name] = _weird(rng)
        desc = f"entry[{name}]={header[name]!r}"
    raw = _expand(json.dumps(header, separators=(",", ":"))).encode()
    return struct.pack("<Q", len(raw)) + raw + data, "st-" + desc[:120]


def _mutate_value(v, rng):
    """A plausible-but-wrong replacement for a JSON value of a package document."""
    choices = WEIRD + [[3, 100000, 100000], [3, 0, 0], [1, 224, 224], [5, 32, 32], [3, 32], "BGR", "nearest",
                       {"converter": 5}, {"converter": "caffe"}, {"converter": "caffe", "prototxt": 5},
                       "timm:resnet18?checkpoint_path=/etc/passwd", "/tmp/x.py:make", [0.5] * 7]
    return copy.deepcopy(choices[int(rng.integers(0, len(choices)))])


def m_package(b, rng):
    """The graftkit document in a package's metadata: a field (spec, classes, preprocessing...) made wrong."""
    if len(b) < 8:
        return m_bitflip(b, rng)
    (n,) = struct.unpack_from("<Q", b)
    header = _jsonable(b[8:8 + n]) if n < len(b) else None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict) \
            or "graftkit" not in header["__metadata__"]:
        return m_safetensors(b, rng)
    md = header["__metadata__"]
    doc = _jsonable(md["graftkit"].encode())
    if not isinstance(doc, dict):
        return m_safetensors(b, rng)
    how = int(rng.integers(0, 6))
    if how == 0:
        md["graftkit"] = json.dumps(_mutate_value(None, rng))
        desc = "doc"
    else:
        paths = [(k,) for k in doc] + [("preprocessing", k) for k in (
            doc["preprocessing"] if isinstance(doc.get("preprocessing"), dict) else {})] + \
                [("spec", k) for k in (doc["spec"] if isinstance(doc.get("spec"), dict) else {})]
        p = paths[int(rng.integers(0, len(paths)))]
        tgt = doc
        for k in p[:-1]:
            tgt = tgt[k]
        tgt[p[-1]] = _mutate_value(tgt[p[-1]], rng) if how < 5 else _deep(int(rng.choice([200, 5000])))
        md["graftkit"] = _expand(json.dumps(doc))
        desc = ".".join(p)
        if rng.integers(0, 4) == 0:  # a long spec text field moved out, or its key damaged
            for k in list(md):
                if k.startswith("graftkit.spec."):
                    md[k] = _mutate_value(None, rng) if rng.integers(0, 2) else md[k][: len(md[k]) // 2]
                    desc += f"+{k}"
                    break
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw + b[8 + n:], "pkg-" + desc[:120]


NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def m_text(b, rng):
    """Text files: a number made huge/negative/zero/nan/1500 digits, lines duplicated/deleted/swapped,
    NUL bytes, invalid UTF-8, deep brackets."""
    how = int(rng.integers(0, 7))
    nums = list(NUMBER.finditer(b))
    if how <= 1 and nums:
        m = nums[int(rng.integers(0, len(nums)))]
        new = [b"0", b"-1", b"-7", b"2147483648", b"3000000000", b"18446744073709551616", b"nan", b"inf", b"-inf",
               b"1e308", b"1" * 1500 + b"x", b"100000", b"30000", b"1.5", b"0x10"][int(rng.integers(0, 15))]
        return b[:m.start()] + new + b[m.end():], f"number@{m.start()}={new[:20]!r}"
    lines = b.split(b"\n")
    if how == 2 and len(lines) > 1:
        i, j = int(rng.integers(0, len(lines))), int(rng.integers(0, len(lines)))
        lines.insert(j, lines[i])
        return b"\n".join(lines), f"dupline{i}->{j}"
    if how == 3 and len(lines) > 1:
        i = int(rng.integers(0, len(lines)))
        del lines[i]
        return b"\n".join(lines), f"delline{i}"
    if how == 4:
        i = int(rng.integers(0, len(b) + 1))
        ins = [b"\0", b"\xff\xfe", b"\t\t\t", b"../../etc/passwd", b"\r"][int(rng.integers(0, 5))]
        return b[:i] + ins + b[i:], f"insert@{i}={ins!r}"
    if how == 5:
        i = int(rng.integers(0, len(b) + 1))
        depth = int(rng.choice([100, 2000, 50000]))
        opener, closer = [(b"[", b"]"), (b"{", b"}"), (b"a { ", b"} ")][int(rng.integers(0, 3))]
        return b[:i] + opener * depth + closer * depth + b[i:], f"nest@{i}x{depth}{opener!r}"
    return m_overwrite(b, rng)


def m_prototxt(b, rng):
    """Caffe-specific values: stride/kernel/group 0, huge num_output, wrong bottoms, huge input dims."""
    keys = [rb"(stride|kernel_size|pad|group|num_output|dim|local_size|axis|kernel_h|stride_w)\s*:\s*(-?\d+)",
            rb"(bottom)\s*:\s*\"([^\"]*)\""]
    spots = [(m, k) for k, pat in enumerate(keys) for m in re.finditer(pat, b)]
    if not spots:
        return m_text(b, rng)
    m, k = spots[int(rng.integers(0, len(spots)))]
    if k == 0:
        new = [b"0", b"-1", b"1000000", b"2000000000", b"65536", b"100"][int(rng.integers(0, 6))]
        return b[:m.start(2)] + new + b[m.end(2):], f"{m.group(1).decode()}@{m.start()}={new.decode()}"
    how = int(rng.integers(0, 3))
    if how == 0:  # a duplicated bottom line: a layer with one input too many
        return b[:m.end()] + b"\n  " + m.group(0) + b[m.end():], f"extra-bottom@{m.start()}"
    if how == 1:
        return b[:m.start()] + b[m.end():], f"no-bottom@{m.start()}"
    return b[:m.start(2)] + b"nowhere" + b[m.end(2):], f"bottom-nowhere@{m.start()}"


def m_symbol(b, rng):
    """MXNet symbol JSON: node indices out of range, non-dict nodes/attrs, cycles, absurd kernels and sizes."""
    doc = _jsonable(b)
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not doc["nodes"]:
        return m_text(b, rng)
    nodes = doc["nodes"]
    i = int(rng.integers(0, len(nodes)))
    node = nodes[i]
    how = int(rng.integers(0, 9))
    desc = f"node{i}:"
    if how == 0 and isinstance(node, dict) and node.get("inputs"):
        node["inputs"][0] = [int(rng.choice([len(nodes), 10**9, -1, i, i + 1])), 0, 0]
        desc += f"input={node['inputs'][0]}"
    elif how == 1:
        nodes[i] = _weird(rng)
        desc += f"node={nodes[i]!r}"
    elif how == 2 and isinstance(node, dict):
        node["attrs" if "attrs" in node else "attr"] = _weird(rng)
        desc += "attrs"
    elif how == 3 and isinstance(node, dict):
        attrs = node.setdefault("attrs", {})
        if isinstance(attrs, dict):
            k = ["kernel", "num_filter", "num_hidden", "stride", "pad", "num_group", "dilate", "pool_size", "axis",
                 "eps", "num_outputs"][int(rng.integers(0, 11))]
            attrs[k] = ["(100000, 100000)", "1000000000", "0", "-1", "(0, 0)", "(3,)", "nan", "((((((1))))))",
                        "(" * 5000 + ")" * 5000, "(30000, 30000)", "abc", "[1, 2]"][int(rng.integers(0, 12))]
            desc += f"{k}={attrs[k][:20]}"
    elif how == 4:  # a cycle: the first node with inputs reads a later one
        for j, n in enumerate(nodes):
            if isinstance(n, dict) and n.get("inputs") and j + 1 < len(nodes):
                n["inputs"][0] = [len(nodes) - 1, 0, 0]
                desc += f"cycle{j}"
                break
    elif how == 5:
        doc["heads"] = [[int(rng.choice([len(nodes), 10**9, -1])), 0, 0]] if rng.integers(0, 2) else "x"
        desc += f"heads={doc['heads']}"
    elif how == 6:
        doc["arg_nodes"] = [len(nodes) + 5, -1] if rng.integers(0, 2) else 7
        desc += "arg_nodes"
    elif how == 7 and isinstance(node, dict):
        node["op"] = _weird(rng) if rng.integers(0, 2) else "Custom"
        desc += f"op={node['op']!r}"
    elif how == 8 and isinstance(node, dict) and node.get("inputs"):
        node["inputs"] = [[0, 0]] * int(rng.choice([0, 1, 7])) if rng.integers(0, 2) else [["a"], 5]
        desc += "inputs"
    else:
        return m_text(b, rng)
    return json.dumps(doc).encode(), "sym-" + desc[:100]


def m_lst(b, rng):
    """An im2rec .lst line with index/label/path made hostile."""
    lines = b.split(b"\n")
    i = int(rng.integers(0, max(1, len(lines) - 1)))
    parts = lines[i].split(b"\t")
    if len(parts) < 3:
        return m_text(b, rng)
    how = int(rng.integers(0, 4))
    if how == 0:
        parts[1] = [b"nan", b"inf", b"-inf", b"3e9", b"2147483648", b"-1", b"1e400", b"0x5"][int(rng.integers(0, 8))]
    elif how == 1:
        parts[0] = [b"18446744073709551616", b"-5", b"1.5", b"9" * 400][int(rng.integers(0, 4))]
    elif how == 2:
        parts[-1] = [b"a\0b.jpg", b"../../x.jpg", b"/etc/passwd", b"", b"\xff\xfe.png", b"C:x.png"][
            int(rng.integers(0, 6))]
    else:
        parts = parts[:1] + [b"1"] * int(rng.choice([0, 1000])) + parts[1:]
    lines[i] = b"\t".join(parts)
    return b"\n".join(lines), f"lst{i}:{how}"


def m_idx(b, rng):
    lines = b.split(b"\n")
    i = int(rng.integers(0, max(1, len(lines) - 1)))
    parts = lines[i].split(b"\t")
    if len(parts) != 2:
        return m_text(b, rng)
    k = int(rng.integers(0, 2))
    parts[k] = [b"-8", b"18446744073709551616", b"999999999", b"3", b"x", b"1" * 5000][int(rng.integers(0, 6))]
    lines[i] = b"\t".join(parts)
    return b"\n".join(lines), f"idx{i}[{k}]"


def m_image(b, rng):
    """JPEG/PNG dimensions declared huge (SOF / IHDR), or generic damage."""
    if b[:3] == b"\xff\xd8\xff":
        m = re.search(rb"\xff[\xc0\xc1\xc2]", b)
        if m and rng.integers(0, 2):
            k = m.start() + 5
            h, w = int(rng.choice([40000, 65535, 0, 1])), int(rng.choice([40000, 65535, 0, 3]))
            return b[:k] + struct.pack(">HH", h, w) + b[k + 4:], f"jpeg-size={h}x{w}"
    if b[:8] == b"\x89PNG\r\n\x1a\n" and rng.integers(0, 2):
        h, w = int(rng.choice([40000, 2**31 - 1, 0])), int(rng.choice([40000, 1, 2**31 - 1]))
        return b[:16] + struct.pack(">II", w, h) + b[24:], f"png-size={w}x{h}"
    return m_overwrite(b, rng)


def m_h5(b, rng):
    """HDF5: an 8-byte little-endian field near a signature (OHDR, TREE, HEAP, SNOD, superblock) inflated."""
    spots = [m.start() for m in re.finditer(rb"OHDR|TREE|HEAP|SNOD|GCOL|\x89HDF", b)]
    if not spots or rng.integers(0, 3) == 0:
        return m_inflate_int(b, rng)
    at = spots[int(rng.integers(0, len(spots)))]
    k = at + int(rng.integers(4, 64))
    if k + 8 > len(b):
        return m_truncate(b, rng)
    v = HUGE[int(rng.integers(0, len(HUGE)))] & ((1 << 64) - 1)
    size = 8 if rng.integers(0, 2) else 4
    return b[:k] + v.to_bytes(8, "little")[:size] + b[k + size:], f"h5@{at}+{k - at}={v}/{size}"


def m_onnx_location(b, rng):
    """An external-data location (13 bytes, so no length changes) pointed outside, at nothing, or NUL."""
    loc = b"tiny_ext.data"
    if loc not in b:
        return m_varint(b, rng)
    new = [b"../../etc/pas", b"/etc/hostname", b"tiny\0ext.data", b"tiny_ext.dat\xff", b"............."][
        int(rng.integers(0, 5))]
    return b.replace(loc, new), f"location={new!r}"


def m_flatbuf(b, rng):
    """A FlatBuffers offset or vector length (an aligned u32) pointed past the end, at itself, or made huge."""
    n = len(b) // 4
    if n < 2:
        return m_bitflip(b, rng)
    k = 4 * int(rng.integers(1, n))
    (v,) = struct.unpack_from("<I", b, k)
    new = int(rng.choice([len(b), len(b) - k, len(b) - k + 4, 0, 2**31 - 1, 2**32 - 1, v + 4, v * 1000 % 2**32]))
    return b[:k] + struct.pack("<I", new) + b[k + 4:], f"flatbuf@{k}:{v}->{new}"


GENERIC = [m_truncate, m_bitflip, m_overwrite, m_dup_chunk, m_del_chunk, m_inflate_int]
SPECIFIC = {"varint": [m_varint, m_varint], "zip": [m_zip, m_zip_members], "h5": [m_h5], "recordio": [m_recordio] * 2,
            "mxparams": [m_mxparams] * 3, "safetensors": [m_safetensors] * 3, "package": [m_package] * 4,
            "text": [m_text, m_text], "prototxt": [m_prototxt, m_prototxt], "symbol": [m_symbol] * 4,
            "lst": [m_lst] * 3, "idx": [m_idx] * 2, "flatbuffer": [m_flatbuf] * 3, "onnx_location": [m_onnx_location], "image": [m_image, m_image], "npy": [m_zip_members]}


def mutate(data: bytes, kinds: tuple, rng) -> tuple[bytes, str]:
    ops = list(GENERIC)
    for k in kinds:
        ops += SPECIFIC[k]
    # format-aware mutators are weighted so that about 60% of mutants use one
    specific = [op for op in ops if op not in GENERIC]
    descs = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        pool = specific if specific and rng.random() < 0.6 else GENERIC
        op = pool[int(rng.integers(0, len(pool)))]
        if not data:
            break
        try:
            data, d = op(data, rng)
        except (TypeError, KeyError, IndexError, AttributeError, ValueError):
            # a structure-aware mutator meeting what an earlier mutation left: damage bytes instead
            data, d = m_bitflip(data, rng)
        descs.append(d)
    return data, " + ".join(descs)


def make_case(tlist: list[Target], seed: int, i: int) -> tuple[Target, bytes, str]:
    rng = np.random.default_rng([seed, i])
    fmts = list(dict.fromkeys(t.fmt for t in tlist))  # round robin over formats, then over each one's targets:
    mine = [t for t in tlist if t.fmt == fmts[i % len(fmts)]]  # every format gets an equal share
    t = mine[(i // len(fmts)) % len(mine)]
    data, desc = mutate(t.files[t.mutate].read_bytes(), t.kinds, rng)
    return t, data, desc


# ------------------------------------------------------------------------------------------- the sandbox

MEMORY_WORDS = ("can't allocate memory", "cannot allocate memory", "not enough memory", "bad_alloc",
                "unable to allocate", "out of memory", "failed to allocate", "defaultcpuallocator")


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def classify(e: BaseException) -> str:
    from graftkit.errors import GraftError
    if isinstance(e, GraftError):
        return "clean"
    if isinstance(e, MemoryError):
        return "memory"
    text = f"{type(e).__name__}: {e}".lower()
    if any(w in text for w in MEMORY_WORDS):
        return "memory"
    return "traceback"


def stage(t: Target, data: bytes, folder: Path) -> tuple[dict[str, Path], Path]:
    """The target's files in `folder`, the mutated one replaced by `data`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, src in t.files.items():
        dst = folder / src.name
        if role == t.mutate:
            dst.write_bytes(data)
        else:
            shutil.copyfile(src, dst)
        files[role] = dst
    return files, files[t.mutate]


def run_in_child(t: Target, data: bytes, folder: Path, timeout: float, mem_mib: int) -> tuple[str, str, float]:
    """(outcome, detail, seconds) of reading the mutant in a forked child."""
    files, path = stage(t, data, folder)
    r, w = os.pipe()
    errlog = folder / "stderr.txt"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: limit itself, read, report one line, exit without cleanup
        os.close(r)
        try:
            fd = os.open(errlog, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(folder)
            limit = _vm_bytes() + mem_mib * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            try:
                ENTRIES[t.entry](files, path)
                out = {"outcome": "accepted", "detail": ""}
            except BaseException as e:  # noqa: BLE001 - classifying is the point
                out = {"outcome": classify(e), "detail": f"{type(e).__name__}: {str(e)[:300]}"}
                if out["outcome"] != "clean":
                    out["tb"] = traceback.format_exc()[-3000:]
            os.write(w, json.dumps(out).encode()[:60000])
        finally:
            os._exit(0)
    os.close(w)
    chunks, status, hung = [], None, False
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            hung = True
            break
        ready, _, _ = select.select([r], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    secs = time.monotonic() - start
    if hung:
        return "hang", f"no answer within {timeout:.0f} s", secs
    if os.WIFSIGNALED(status):
        err = errlog.read_text(errors="replace")[-300:] if errlog.exists() else ""
        outcome = "memory" if any(x in err.lower() for x in MEMORY_WORDS) else "signal"
        return outcome, f"signal {os.WTERMSIG(status)} {err.strip()[-200:]}", secs
    try:
        out = json.loads(b"".join(chunks))
    except ValueError:
        err = errlog.read_text(errors="replace")[-300:] if errlog.exists() else ""
        return "signal", f"no report, exit status {status}: {err.strip()[-200:]}", secs
    detail = out["detail"] + ("\n" + out["tb"] if out.get("tb") else "")
    return out["outcome"], detail, secs


def warm_up() -> None:
    """Import everything the children need, so that each fork starts warm (and none imports under the limit)."""
    import h5py  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch
    torch.set_num_threads(1)
    import PIL.Image  # noqa: F401
    import graftkit  # noqa: F401
    import graftkit.formats  # noqa: F401
    from graftkit.formats import FORMATS, _module
    for name in FORMATS:
        _module(name)
    import importlib
    for mod in ("graftkit.nets.caffe", "graftkit.nets.keras", "graftkit.nets.mxnet", "graftkit.nets.onnx",
                "graftkit.nets.convert", "graftkit.nets.tflite", "graftkit.data", "graftkit.data.recordio", "graftkit.package",
                "graftkit.serve.predict", "graftkit.models", "graftkit.data.transforms", "torchvision.io"):
        importlib.import_module(mod)
    try:
        import onnx2torch  # noqa: F401
    except ImportError:
        pass


@dataclass
class Result:
    i: int
    target: str
    fmt: str
    desc: str
    outcome: str
    detail: str
    secs: float


@dataclass
class Summary:
    results: list = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for r in self.results:
            row = table.setdefault(r.fmt, dict.fromkeys(OUTCOMES, 0))
            row[r.outcome] += 1
        return dict(sorted(table.items()))

    def bad(self) -> list[Result]:
        return [r for r in self.results if r.outcome in BAD]

    def table(self) -> str:
        counts = self.counts()
        head = f"{'format':<14}{'mutants':>8}" + "".join(f"{o:>10}" for o in OUTCOMES)
        lines = [head, "-" * len(head)]
        total = dict.fromkeys(OUTCOMES, 0)
        for fmt, row in counts.items():
            lines.append(f"{fmt:<14}{sum(row.values()):>8}" + "".join(f"{row[o]:>10}" for o in OUTCOMES))
            for o in OUTCOMES:
                total[o] += row[o]
        lines.append("-" * len(head))
        lines.append(f"{'total':<14}{sum(total.values()):>8}" + "".join(f"{total[o]:>10}" for o in OUTCOMES))
        return "\n".join(lines)


def fuzz(count: int, seed: int = 0, *, timeout: float = 30.0, mem_mib: int = 1024, jobs: int = 1,
         save: Path | None = None, cases: list[int] | None = None, only: str | None = None,
         progress: bool = False, time_budget: float | None = None) -> Summary:
    warm_up()
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="graftkit-fuzz-") as tmp:
        tmp = Path(tmp)
        gen = make_generated_seeds(tmp / "seeds")
        tlist = targets(gen)
        if only:
            tlist = [t for t in tlist if re.search(only, t.name())]
        todo = list(cases) if cases is not None else list(range(count))
        started = time.monotonic()
        running: dict[int, tuple] = {}  # (sequential: jobs > 1 forks several children at once)
        from concurrent.futures import ThreadPoolExecutor

        def one(i):
            t, data, desc = make_case(tlist, seed, i)
            outcome, detail, secs = run_in_child(t, data, tmp / f"m{i}", timeout, mem_mib)
            if save is not None and outcome in BAD:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"{seed}-{i}-{t.files[t.mutate].name}").write_bytes(data)
            shutil.rmtree(tmp / f"m{i}", ignore_errors=True)
            return Result(i, t.name(), t.fmt, desc, outcome, detail, secs)

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            for res in pool.map(one, todo):
                summary.results.append(res)
                if progress and (len(summary.results) % 50 == 0 or res.outcome in BAD):
                    n = len(summary.results)
                    print(f"[{n}/{len(todo)}] {time.monotonic() - started:.0f}s"
                          + (f"  {res.outcome}: #{res.i} {res.target} {res.desc}" if res.outcome in BAD else ""),
                          file=sys.stderr, flush=True)
                if time_budget and time.monotonic() - started > time_budget:
                    break
        del running
    return summary


def reproduce(seed: int, i: int, save: Path | None, only: str | None = None) -> None:
    """Write mutant i and read it in this process, showing the full traceback."""
    warm_up()
    with tempfile.TemporaryDirectory(prefix="graftkit-fuzz-") as tmp:
        tmp = Path(tmp)
        tlist = targets(make_generated_seeds(tmp / "seeds"))
        if only:
            tlist = [t for t in tlist if re.search(only, t.name())]
        t, data, desc = make_case(tlist, seed, i)
        print(f"case {i} of seed {seed}: {t.name()} [{t.entry}] {desc}")
        folder = save or tmp / "case"
        files, path = stage(t, data, folder)
        print(f"mutant: {path}")
        ENTRIES[t.entry](files, path)
        print("accepted")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per mutant before it counts as a hang")
    ap.add_argument("--mem-mib", type=int, default=1024, help="address space a child may add to its start")
    ap.add_argument("--jobs", type=int, default=1, help="children at once")
    ap.add_argument("--only", help="regex: fuzz only targets whose name matches (changes the case numbering)")
    ap.add_argument("--case", type=int, action="append", help="run only these case numbers (repeatable)")
    ap.add_argument("--save", type=Path, help="folder to write the failing mutants to")
    ap.add_argument("--here", action="store_true", help="with --case: read it in this process (full traceback)")
    ap.add_argument("--json", type=Path, help="write every result as JSON here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.here:
        for i in args.case or []:
            reproduce(args.seed, i, args.save, args.only)
        return 0
    t0 = time.monotonic()
    s = fuzz(args.count, args.seed, timeout=args.timeout, mem_mib=args.mem_mib, jobs=args.jobs, save=args.save,
             cases=args.case, only=args.only, progress=not args.quiet)
    print(f"python tests/fuzz.py {f'--count {args.count}' if not args.case else ' '.join(f'--case {c}' for c in args.case)} --seed {args.seed}"
          f"{f' --only {args.only!r}' if args.only else ''}: {len(s.results)} mutants in "
          f"{time.monotonic() - t0:.0f} s")
    print(s.table())
    for r in s.bad():
        print(f"\n{r.outcome.upper()} case {r.i} ({r.target}) {r.desc}  [{r.secs:.1f} s]\n"
              f"  reproduce: python tests/fuzz.py --seed {args.seed} --case {r.i}"
              f"{f' --only {args.only!r}' if args.only else ''} --here\n  {r.detail.strip()}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in s.results], indent=1))
    return 1 if s.bad() else 0


if __name__ == "__main__":
    sys.exit(main())
