"""Reading a real-size .caffemodel: graftkit vs OpenCV's C++ importer vs protobuf-then-numpy.

An AlexNet-size caffemodel (61 M float32 values, ~244 MB) is generated for
tests/fixtures/caffe/alexnet.deploy.prototxt with graftkit's own writer into a
temporary folder, then read (best of N, file in the page cache) by:

  graftkit          graftkit.formats.read(path): every blob as a PyTorch-layout tensor
                    (a zero-copy view of the privately mapped file)
  graftkit+touch    the same, then every value read once (sum of each tensor), so that
                    no lazily mapped page escapes the timing
  opencv            cv2.dnn.readNetFromCaffe(prototxt, caffemodel) (C++ protobuf + blob copies)
  protobuf          Google protobuf classes built from graftkit's caffe.proto schema:
                    NetParameter.FromString(file bytes), then np.array(blob.data) per blob

Run: .venv/bin/python benchmarks/caffe_read.py [--repeat 5]
The last line is JSON with the seconds and the ratios (targets: opencv/graftkit >= 1,
protobuf/graftkit >= 5).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from graftkit import formats  # noqa: E402
from graftkit.formats import caffe, caffe_proto, caffe_prototxt  # noqa: E402

from timing import best  # benchmarks/timing.py (the script folder is on sys.path)

PROTOTXT = ROOT / "tests" / "fixtures" / "caffe" / "alexnet.deploy.prototxt"


def blob_shapes(net: dict) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """(layer, type, [blob shapes]) of a plain chain net (AlexNet/CaffeNet), by shape inference."""
    shapes: dict[str, tuple[int, ...]] = {}
    out = []
    for lp in caffe.v2_layers(net):
        t, bottoms, tops = lp["type"], lp.get("bottom", []), lp.get("top", [])
        if t == "Input":
            shapes[tops[0]] = tuple(lp["input_param"]["shape"][0]["dim"])
            continue
        n, c, h, w = shapes[bottoms[0]] if len(shapes[bottoms[0]]) == 4 else (*shapes[bottoms[0]], 1, 1)
        if t == "Convolution":
            p = lp["convolution_param"]
            k, s = p["kernel_size"][0], (p.get("stride") or [1])[0]
            pad, g, o = (p.get("pad") or [0])[0], p.get("group", 1), p["num_output"]
            out.append((lp["name"], t, [(o, c // g, k, k), (o,)]))
            shapes[tops[0]] = (n, o, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1)
        elif t == "Pooling":
            p = lp["pooling_param"]
            k, s, pad = p["kernel_size"], p.get("stride", 1), p.get("pad", 0)
            shapes[tops[0]] = (n, c, math.ceil((h + 2 * pad - k) / s) + 1, math.ceil((w + 2 * pad - k) / s) + 1)
        elif t == "InnerProduct":
            o = lp["inner_product_param"]["num_output"]
            out.append((lp["name"], t, [(o, c * h * w), (o,)]))
            shapes[tops[0]] = (n, o)
        else:   # ReLU, LRN, Dropout, Softmax keep the shape
            shapes[tops[0]] = shapes[bottoms[0]]
    return out


def read_graftkit(path: Path):
    return formats.read(path)


def read_graftkit_touch(path: Path):
    ts = formats.read(path)
    return sum(float(t.sum()) for t in ts.values())


def read_opencv(prototxt: Path, path: Path):
    import cv2
    return cv2.dnn.readNetFromCaffe(str(prototxt), str(path))


def make_protobuf_reader():
    net_class = caffe_proto.protobuf_classes()["NetParameter"]

    def read_protobuf(path: Path):
        net = net_class.FromString(path.read_bytes())
        out = {}
        for layer in net.layer:
            arrays = []
            for b in layer.blobs:
                shape = tuple(b.shape.dim) if b.HasField("shape") else (b.num, b.channels, b.height, b.width)
                arrays.append(np.array(b.data, dtype=np.float32).reshape(shape))
            if arrays:
                out[layer.name] = arrays
        return out
    return read_protobuf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per reader (best is kept)")
    ap.add_argument("--repeat-slow", type=int, default=2, help="timed runs of the protobuf reader")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    layers = [(name, t, [(rng.standard_normal(s, dtype=np.float32) * 0.01) for s in shapes])
              for name, t, shapes in blob_shapes(caffe_prototxt.parse(PROTOTXT))]
    values = sum(a.size for _, _, arrays in layers for a in arrays)
    with tempfile.TemporaryDirectory() as tmp:
        path = caffe.write_caffemodel(Path(tmp) / "alexnet.caffemodel", layers, name="AlexNet")
        del layers
        size_mb = path.stat().st_size / 1e6
        print(f"AlexNet-size caffemodel: {values / 1e6:.1f} M values, {size_mb:.0f} MB", file=sys.stderr)

        ts = read_graftkit(path)   # warm-up and a sanity check of what is timed
        assert sum(t.numel() for t in ts.values()) == values
        del ts
        read_protobuf = make_protobuf_reader()
        rows = {
            "graftkit": best(lambda: read_graftkit(path), args.repeat),
            "graftkit+touch": best(lambda: read_graftkit_touch(path), args.repeat),
            "opencv": best(lambda: read_opencv(PROTOTXT, path), args.repeat),
            "protobuf": best(lambda: read_protobuf(path), args.repeat_slow),
        }
    base = rows["graftkit"]
    print(f"{'reader':<16}{'seconds':>10}{'x graftkit':>12}")
    for name, sec in rows.items():
        print(f"{name:<16}{sec:>10.4f}{sec / base:>12.1f}")
    result = {"file_mb": round(size_mb, 1), "values": values, "seconds": {k: round(v, 5) for k, v in rows.items()},
              "opencv_over_graftkit": round(rows["opencv"] / base, 2),
              "protobuf_over_graftkit": round(rows["protobuf"] / base, 2),
              "opencv_over_graftkit_touch": round(rows["opencv"] / rows["graftkit+touch"], 2),
              "protobuf_over_graftkit_touch": round(rows["protobuf"] / rows["graftkit+touch"], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
