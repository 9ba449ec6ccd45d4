"""MXNet: the .params reader (no MXNet involved) and the symbol converter against MXNet's own outputs."""
from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch

import graftkit
from graftkit.errors import GraftError
from graftkit.formats import mxnet as mxfile
from graftkit.nets import mxnet_ops

from conftest import cases, fixture, rel_err, run_graft

MXNET = cases("mxnet")
IDS = [c["id"] for c in MXNET]


def _files(case):
    sym = next(fixture(p) for p in case["model"] if p.endswith(".json"))
    params = next(fixture(p) for p in case["model"] if p.endswith(".params"))
    return sym, params


@pytest.mark.parametrize("case", MXNET, ids=IDS)
def test_converted_net_reproduces_mxnet(case):
    net = graftkit.convert([fixture(p) for p in case["model"]])
    (name, inp), = case["input"].items()
    x = torch.from_numpy(np.load(fixture(inp)))
    with torch.no_grad():
        y = net(x)
        assert torch.equal(net(**{name: x}), y)
    (_, out), = case["expected"].items()
    err = rel_err(y.numpy(), np.load(fixture(out)))
    assert err < min(case["rtol"], 1e-5), err


@pytest.mark.parametrize("case", MXNET, ids=IDS)
def test_package_roundtrip_rebuilds_from_spec(case, tmp_path):
    net = graftkit.convert([fixture(p) for p in case["model"]])
    path = graftkit.save(net, tmp_path / "net.safetensors")
    back = graftkit.load(path)
    assert back.graftkit_meta["spec"]["converter"] == "mxnet"
    assert back.graftkit_meta["preprocessing"] is None  # MXNet files carry none; nothing is invented
    given = graftkit.convert([fixture(p) for p in case["model"]], mean=[0.485, 0.456, 0.406],
                             std=[0.229, 0.224, 0.225], input_size=[3, 224, 224])
    assert given.graftkit_meta["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    (_, inp), = case["input"].items()
    x = torch.from_numpy(np.load(fixture(inp)))
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_submodules_named_after_nodes_and_run_any_node():
    case = next(c for c in MXNET if "vgg" in c["id"])
    net = graftkit.convert([fixture(p) for p in case["model"]])
    assert net.conv1_1.weight.shape == (16, 3, 3, 3) and net.fc8.weight.shape == (10, 64)
    x = torch.from_numpy(np.load(fixture(case["input"]["data"])))
    with torch.no_grad():
        out = net.run({"data": x}, outputs=["fc8", "softmax"])
    assert torch.allclose(torch.softmax(out["fc8"], 1), out["softmax"])


# --- the .params reader ----------------------------------------------------------------------------

def _brute_force_arrays(data: bytes, names: list[str], tensors: dict[str, torch.Tensor]):
    """Independent check: each tensor's bytes occur in the file right after a V2 header carrying its
    shape (int64 dims), a CPU context and the float32 type flag; each name follows its uint64 length."""
    for full in names:
        t = tensors[full]
        header = (struct.pack("<IiI", 0xF993FAC9, 0, t.ndim) + struct.pack(f"<{t.ndim}q", *t.shape)
                  + struct.pack("<iii", 1, 0, 0))
        assert data.find(header + t.numpy().astype("<f4").tobytes()) > 0, full
        enc = full.encode()
        assert struct.pack("<Q", len(enc)) + enc in data[-(len(names) * 80 + 400):]


def _infer_shapes(graph, input_shape):
    """Independent shape inference over the fixtures' ops -> the parameter shapes MXNet would need."""
    nodes = graph["nodes"]
    out, need = {}, {}

    def tup(v, d):
        return tuple(int(x) for x in v.strip("()").split(",") if x.strip()) if v else d

    for i, n in enumerate(nodes):
        a = n.get("attrs", {})
        ins = [out.get(src) for src, *_ in n["inputs"]]
        pnames = [nodes[src]["name"] for src, *_ in n["inputs"][1:]]
        if n["op"] == "null":
            if n["name"] == "data":
                out[i] = input_shape
            continue
        s = ins[0]
        if n["op"] == "Convolution":
            k = tup(a.get("kernel"), ())
            st, p, d = tup(a.get("stride"), (1, 1)), tup(a.get("pad"), (0, 0)), tup(a.get("dilate"), (1, 1))
            g, f = int(a.get("num_group", 1)), int(a["num_filter"])
            need[pnames[0]] = (f, s[1] // g, *k)
            if len(pnames) > 1:
                need[pnames[1]] = (f,)
            hw = [(s[2 + j] + 2 * p[j] - d[j] * (k[j] - 1) - 1) // st[j] + 1 for j in range(2)]
            out[i] = (s[0], f, *hw)
        elif n["op"] == "BatchNorm":
            for pn in pnames:
                need[pn] = (s[1],)
            out[i] = s
        elif n["op"] == "Pooling":
            if a.get("global_pool") == "True":
                out[i] = (s[0], s[1], 1, 1)
            else:
                k, st = tup(a.get("kernel"), ()), tup(a.get("stride"), (1, 1))
                p = tup(a.get("pad"), (0, 0))
                rnd = math.ceil if a.get("pooling_convention") == "full" else math.floor
                out[i] = (s[0], s[1], *[1 + rnd((s[2 + j] + 2 * p[j] - k[j]) / st[j]) for j in range(2)])
        elif n["op"] == "Flatten":
            out[i] = (s[0], math.prod(s[1:]))
        elif n["op"] == "FullyConnected":
            h = int(a["num_hidden"])
            need[pnames[0]] = (h, math.prod(s[1:]))
            if len(pnames) > 1 and a.get("no_bias") != "True":
                need[pnames[1]] = (h,)
            out[i] = (s[0], h)
        else:
            out[i] = s
    return need


@pytest.mark.parametrize("case", MXNET, ids=IDS)
def test_params_reader_matches_brute_force_and_symbol_shapes(case):
    sym, params = _files(case)
    raw = mxfile.load_params(params)
    data = params.read_bytes()
    _brute_force_arrays(data, list(raw), raw)
    graph = json.loads(sym.read_text())
    x = np.load(fixture(case["input"]["data"]))
    need = _infer_shapes(graph, x.shape)
    stripped = {mxfile.strip_prefix(k)[1]: tuple(v.shape) for k, v in raw.items()}
    assert stripped == need
    # The TensorSet: prefixes stripped and recorded, PyTorch roles, kinds and order from the symbol.
    ts = graftkit.read(params)
    assert ts.format == "mxnet" and ts.meta["symbol"] == sym.name and len(ts) == len(raw)
    for r in ts.records.values():
        assert r.meta["mxnet_prefix"] in ("arg", "aux")
        assert torch.equal(r.tensor, raw[r.meta["source_name"]]) or r.meta.get("fix_gamma")
        assert r.role in ("weight", "bias", "running_mean", "running_var")
        if r.meta["mxnet_prefix"] == "aux":
            assert r.role in ("running_mean", "running_var") and r.kind == "batchnorm"
    positions = [r.position for r in ts.records.values()]
    assert positions == sorted(positions)


def test_gluon_batchnorm_records():
    case = next(c for c in MXNET if "mobilenet" in c["id"])
    ts = graftkit.read(_files(case)[1])
    bn = ts.record("mobilenet0_batchnorm0.running_var")
    assert (bn.kind, bn.role, bn.meta["eps"], bn.meta["fix_gamma"]) == ("batchnorm", "running_var", 1e-5, False)
    assert bn.meta["source_name"] == "aux:mobilenet0_batchnorm0_running_var"
    assert ts.record("mobilenet0_conv1.weight").kind == "depthwise_conv"
    assert ts.record("mobilenet0_dense0.weight").kind == "linear"
    layers = list(ts.layers())
    assert layers[:3] == ["mobilenet0_conv0", "mobilenet0_batchnorm0", "mobilenet0_conv1"]
    assert layers[-1] == "mobilenet0_dense0"


def test_params_without_symbol_still_read(tmp_path):
    case = next(c for c in MXNET if "vgg" in c["id"])
    lone = tmp_path / "weights.params"
    shutil.copy(_files(case)[1], lone)
    ts = graftkit.read(lone)
    assert "symbol" not in ts.meta and ts.graph is None
    assert ts.record("conv1_1.weight").kind == "conv" and ts.record("fc7.weight").kind == "linear"


def _write_params(path, arrays: dict[str, np.ndarray], magic=0xF993FAC9):
    """A .params file in the layout MXNet documents in NDArray::Save (for formats our fixtures lack)."""
    codes = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2, np.dtype("uint8"): 3,
             np.dtype("int32"): 4, np.dtype("int64"): 6}
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]
    for a in arrays.values():
        if magic == 0xF993FAC9:
            out.append(struct.pack("<Ii", magic, 0) + struct.pack(f"<i{a.ndim}q", a.ndim, *a.shape))
        else:  # legacy: rank then uint32 dims
            out.append(struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape))
        out.append(struct.pack("<iii", 1, 0, codes[a.dtype]) + a.tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for n in arrays:
        out.append(struct.pack("<Q", len(n.encode())) + n.encode())
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("magic", [0xF993FAC9, None])
def test_dtypes_and_legacy_layout(tmp_path, magic):
    arrays = {"arg:fc_weight": np.arange(6, dtype=np.float64).reshape(2, 3),
              "arg:fc_bias": np.array([1, 2], dtype=np.float16), "aux:bn_moving_mean": np.arange(3, dtype=np.int64)}
    path = tmp_path / "m.params"
    _write_params(path, arrays, magic=magic or 0)
    ts = graftkit.read(path)
    assert ts["fc.weight"].dtype == torch.float64 and ts["fc.weight"].tolist() == arrays["arg:fc_weight"].tolist()
    assert ts["fc.bias"].dtype == torch.float16 and ts["bn.running_mean"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("cut", [10, 30, 100, -7, 0.5])
def test_truncated_params_error_names_offset(tmp_path, cut):
    data = _files(MXNET[0])[1].read_bytes()
    bad = tmp_path / "bad.params"
    bad.write_bytes(data[:cut] if isinstance(cut, int) else data[: int(len(data) * cut)])
    with pytest.raises(GraftError, match=r"bad\.params: corrupt MXNet \.params file: .* at byte \d+"):
        graftkit.read(bad)


def test_corrupt_params(tmp_path):
    data = bytearray(_files(MXNET[0])[1].read_bytes())
    bad = tmp_path / "bad.params"
    data[24:28] = b"\xff\xff\xff\x7f"  # first array's magic -> nonsense
    bad.write_bytes(bytes(data))
    with pytest.raises(GraftError, match="at byte 24"):
        graftkit.read(bad)
    r = run_graft("inspect", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "byte 24" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_op_refused_before_any_work(tmp_path):
    case = next(c for c in MXNET if "vgg" in c["id"])
    sym, params = _files(case)
    graph = json.loads(sym.read_text())
    for n in graph["nodes"]:
        if n["name"] in ("relu1_1", "relu2_1"):
            n["op"] = "FancyNorm"
        if n["name"] == "pool2":
            n["attrs"]["pool_type"] = "lp"
    (tmp_path / "net-symbol.json").write_text(json.dumps(graph))
    (tmp_path / "net-0001.params").write_bytes(b"not even params")  # never read: the op check comes first
    with pytest.raises(GraftError, match=r"FancyNorm \(used by relu1_1, relu2_1\); "
                                         r"Pooling\(pool_type=lp\) \(used by pool2\)"):
        graftkit.convert([tmp_path / "net-symbol.json", tmp_path / "net-0001.params"])
    r = run_graft("convert", tmp_path / "net-symbol.json", tmp_path / "net-0001.params",
                  "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "FancyNorm" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_params_not_matching_symbol(tmp_path):
    vgg = next(c for c in MXNET if "vgg" in c["id"])
    mob = next(c for c in MXNET if "mobilenet" in c["id"])
    shutil.copy(_files(vgg)[0], tmp_path / "x-symbol.json")
    shutil.copy(_files(mob)[1], tmp_path / "x-0001.params")
    with pytest.raises(GraftError, match="does not belong to this symbol"):
        graftkit.convert([tmp_path / "x-symbol.json", tmp_path / "x-0001.params"])


def _mxnet_pool_reference(x, k, s, p, pool_type, full, include_pad):
    """Straight from MXNet's pooling kernel: windows over [-p, H+p), overhang beyond it not counted."""
    n, c, h, w = x.shape
    oh = 1 + (math.ceil if full else math.floor)((h + 2 * p - k) / s)
    ow = 1 + (math.ceil if full else math.floor)((w + 2 * p - k) / s)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            if pool_type == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                y[:, :, i, j] = win.sum(axis=(2, 3)) / (size if include_pad else (he - hs) * (we - ws))
    return y


@pytest.mark.parametrize("pool_type", ["max", "avg"])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("include_pad", [True, False])
def test_pooling_conventions(pool_type, full, include_pad):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    for k, s, p in ((3, 2, 1), (2, 2, 0), (3, 3, 1)):
        attrs = {"kernel": f"({k}, {k})", "stride": f"({s}, {s})", "pad": f"({p}, {p})", "pool_type": pool_type,
                 "pooling_convention": "full" if full else "valid", "count_include_pad": str(include_pad)}
        ours = mxnet_ops.Pool(attrs)(torch.from_numpy(x)).numpy()
        ref = _mxnet_pool_reference(x, k, s, p, pool_type, full, include_pad)
        assert ours.shape == ref.shape and np.allclose(ours, ref, atol=1e-6), (k, s, p)


def test_wrong_input_size_is_a_clear_error():
    case = next(c for c in MXNET if "vgg" in c["id"])
    net = graftkit.convert([fixture(p) for p in case["model"]])
    with pytest.raises(GraftError, match="node 'fc7' \\(FullyConnected\\) cannot take input of shape"):
        net(torch.zeros(1, 3, 40, 40))


def test_sparse_arrays_are_densified(tmp_path):
    """row_sparse (stype 1): storage shape, then shape, context, type, aux index type/shape, data, indices."""
    rows = np.array([1, 3], dtype=np.int64)
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = (struct.pack("<Ii", 0xF993FAC9, 1) + struct.pack("<i2q", 2, 2, 3) + struct.pack("<i2q", 2, 4, 3)
            + struct.pack("<iii", 1, 0, 0) + struct.pack("<i", 6) + struct.pack("<iq", 1, 2)
            + data.tobytes() + rows.tobytes())
    name = b"arg:emb_weight"
    path = tmp_path / "sparse.params"
    path.write_bytes(struct.pack("<QQQ", 0x112, 0, 1) + body + struct.pack("<QQ", 1, len(name)) + name)
    dense = graftkit.read(path)["emb.weight"]
    expected = np.zeros((4, 3), dtype=np.float32)
    expected[rows] = data
    assert np.array_equal(dense.numpy(), expected)


def _node(op, name, inputs=(), **attrs):
    return {"op": op, "name": name, "attrs": {k: str(v) for k, v in attrs.items()},
            "inputs": [[i, 0, 0] for i in inputs]}


def test_op_semantics_and_mxnet_defaults(tmp_path):
    """Ops the fixtures do not use, against PyTorch written from MXNet's documented semantics:
    grouped dilated convolution without bias, BatchNorm defaults (eps 1e-3, fix_gamma: gamma read as 1),
    PReLU/leaky/ELU, elemwise_add, Concat, avg pooling `full` without padding counted, softrelu,
    Reshape codes 0/-3/-2, FullyConnected on the flattened blob, softmax."""
    rng = np.random.default_rng(0)
    nodes = [_node("null", "data"), _node("null", "c1_weight"),
             _node("Convolution", "c1", [0, 1], kernel="(3, 3)", num_filter=8, num_group=2, dilate="(2, 2)",
                   pad="(2, 2)", no_bias=True),
             _node("null", "bn_gamma"), _node("null", "bn_beta"), _node("null", "bn_moving_mean"),
             _node("null", "bn_moving_var"), _node("BatchNorm", "bn", [2, 3, 4, 5, 6]),
             _node("null", "pr_gamma"), _node("LeakyReLU", "pr", [7, 8], act_type="prelu"),
             _node("LeakyReLU", "lk", [9], act_type="leaky", slope=0.1),
             _node("LeakyReLU", "el", [9], act_type="elu", slope=0.5),
             _node("elemwise_add", "add", [10, 11]),
             _node("Concat", "cat", [12, 9], dim=1, num_args=2),
             _node("Pooling", "pool", [13], kernel="(3, 3)", stride="(2, 2)", pool_type="avg",
                   pooling_convention="full", count_include_pad=False),
             _node("Activation", "act", [14], act_type="softrelu"),
             _node("Reshape", "rs", [15], shape="(0, -3, -2)"),
             _node("null", "fc_weight"), _node("null", "fc_bias"),
             _node("FullyConnected", "fc", [16, 17, 18], num_hidden=5),
             _node("softmax", "sm", [19], axis=-1)]
    graph = {"nodes": nodes, "arg_nodes": [i for i, n in enumerate(nodes) if n["op"] == "null"],
             "heads": [[20, 0, 0]], "attrs": {"mxnet_version": ["int", 10901]}}
    p = {"arg:c1_weight": rng.standard_normal((8, 2, 3, 3)), "arg:bn_gamma": rng.random(8) + 2,
         "arg:bn_beta": rng.standard_normal(8), "aux:bn_moving_mean": rng.standard_normal(8) * 0.1,
         "aux:bn_moving_var": rng.random(8) * 1e-3 + 1e-4,  # small: eps 1e-3 vs 1e-5 shows
         "arg:pr_gamma": rng.random(8), "arg:fc_weight": rng.standard_normal((5, 16 * 5 * 5)) * 0.1,
         "arg:fc_bias": rng.standard_normal(5)}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    (tmp_path / "t-symbol.json").write_text(json.dumps(graph))
    _write_params(tmp_path / "t-0000.params", p)
    net = graftkit.convert([tmp_path / "t-symbol.json", tmp_path / "t-0000.params"])
    x = torch.from_numpy(rng.standard_normal((2, 4, 10, 10)).astype(np.float32))
    t = {k.split(":")[1]: torch.from_numpy(v) for k, v in p.items()}
    F = torch.nn.functional
    y = F.conv2d(x, t["c1_weight"], None, padding=2, dilation=2, groups=2)
    y = F.batch_norm(y, t["bn_moving_mean"], t["bn_moving_var"], torch.ones(8), t["bn_beta"], eps=1e-3)
    pr = F.prelu(y, t["pr_gamma"])
    y = torch.cat([F.leaky_relu(pr, 0.1) + F.elu(pr, 0.5), pr], 1)
    y = F.softplus(F.avg_pool2d(y, 3, 2, ceil_mode=True, count_include_pad=False))
    y = torch.softmax(F.linear(y.flatten(1), t["fc_weight"], t["fc_bias"]), -1)
    with torch.no_grad():
        ours = net(x)
        assert net.run({"data": x}, outputs=["rs"])["rs"].shape == (2, 16 * 5, 5)
    assert ours.shape == (2, 5) and rel_err(ours.numpy(), y.numpy()) < 1e-6
    # The reader agrees: fix_gamma's gamma is 1, eps the MXNet default.
    rec = graftkit.read(tmp_path / "t-0000.params").record("bn.weight")
    assert rec.meta["fix_gamma"] and rec.meta["eps"] == 1e-3 and torch.equal(rec.tensor, torch.ones(8))
