"""TensorFlow Lite models -> torch modules that reproduce the TFLite runtime.

The graph is run op by op by `TFLiteNet` over a table of tensors, like the TFLite interpreter itself.
NHWC is handled once, here: 4-D activations are held NCHW (the module takes and returns NCHW, as
every graftkit converter), constants that meet them are moved to NCHW, and an op whose meaning
depends on the memory order (RESHAPE, a FULLY_CONNECTED reading a 4-D tensor, a reduction that
leaves 4-D) sees the tensor NHWC. TensorFlow's SAME padding (the odd pixel after, not before) is
computed per call. Weights live in ordinary modules (nn.Conv2d, nn.Linear, nn.PReLU,
nn.ConvTranspose2d; other float constants in `consts`), so a package's state_dict carries them and the
spec holds the graph only. Quantised weights are dequantised (formats/tflite_file.py).

Fully integer models (uint8/int8 activations, QUANTIZE ops, int32 biases: what the TFLite converter's
full-integer quantisation writes) become the float network their weights describe: every activation is
held as the real value it stands for (QUANTIZE and DEQUANTIZE of an activation are identities), the
module takes the real-valued input (`scale * (q - zero_point)`, which the package's preprocessing gives
from 0..255 pixels) and returns real-valued outputs (`spec["quantized_io"]` keeps each integer input's
and output's scale, zero point and range). That is the network to fine-tune. It does not round its
activations as the integer kernels do, and those kernels do not agree among themselves either: on
tests/fixtures/tflite/efficientnet_lite0.tflite LiteRT's XNNPACK, built-in and reference kernels differ
by up to 7/256 in a softmax output; the float module stays within that spread (tests/test_tflite.py).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError
from ..formats import tflite_file as tfl
from ..meta import attach, make_meta
from .registry import Unsupported

# op -> [(options field index, name, struct format, default)] from schema.fbs
OPTIONS = {
    "CONV_2D": [(0, "padding", "b", 0), (1, "stride_w", "i", 1), (2, "stride_h", "i", 1), (3, "act", "b", 0),
                (4, "dilation_w", "i", 1), (5, "dilation_h", "i", 1)],
    "DEPTHWISE_CONV_2D": [(0, "padding", "b", 0), (1, "stride_w", "i", 1), (2, "stride_h", "i", 1),
                          (3, "depth_multiplier", "i", 1), (4, "act", "b", 0), (5, "dilation_w", "i", 1),
                          (6, "dilation_h", "i", 1)],
    "TRANSPOSE_CONV": [(0, "padding", "b", 0), (1, "stride_w", "i", 1), (2, "stride_h", "i", 1), (3, "act", "b", 0)],
    "AVERAGE_POOL_2D": [(0, "padding", "b", 0), (1, "stride_w", "i", 1), (2, "stride_h", "i", 1),
                        (3, "filter_w", "i", 1), (4, "filter_h", "i", 1), (5, "act", "b", 0)],
    "FULLY_CONNECTED": [(0, "act", "b", 0), (1, "weights_format", "b", 0), (2, "keep_num_dims", "b", 0)],
    "ADD": [(0, "act", "b", 0)], "SUB": [(0, "act", "b", 0)], "MUL": [(0, "act", "b", 0)],
    "CONCATENATION": [(0, "axis", "i", 0), (1, "act", "b", 0)],
    "SOFTMAX": [(0, "beta", "f", 1.0)], "MEAN": [(0, "keep_dims", "b", 0)],
    "LEAKY_RELU": [(0, "alpha", "f", 0.0)],
    "RESIZE_BILINEAR": [(2, "align_corners", "b", 0), (3, "half_pixel_centers", "b", 0)],
    "RESIZE_NEAREST_NEIGHBOR": [(0, "align_corners", "b", 0), (1, "half_pixel_centers", "b", 0)],
}
OPTIONS["MAX_POOL_2D"] = OPTIONS["AVERAGE_POOL_2D"]
SUPPORTED = {"ADD", "SUB", "MUL", "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "CONV_2D",
             "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "DEQUANTIZE", "QUANTIZE", "FULLY_CONNECTED", "LOGISTIC",
             "RELU", "RELU6", "LEAKY_RELU", "HARD_SWISH", "PRELU", "RESHAPE", "PAD", "PADV2", "MEAN", "SOFTMAX",
             "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}
NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
INT_RANGES = {3: (0, 255), 9: (-128, 127), 7: (-32768, 32767)}  # integer activation types (uint8, int8, int16)
STRIP_ABOVE = 64  # constants with more elements than this live in the state_dict only


def claims(paths: list[Path]) -> bool:
    return any(Path(p).suffix.lower() == ".tflite" for p in paths)


def _act(x: torch.Tensor, code: int) -> torch.Tensor:
    if code == 1:
        return F.relu(x)
    if code == 2:
        return x.clamp(-1, 1)
    if code == 3:
        return x.clamp(0, 6)
    if code == 4:
        return torch.tanh(x)
    return x


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one spatial dim: the odd pixel goes after."""
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int, dh: int = 1, dw: int = 1,
              value: float = 0.0) -> torch.Tensor:
    t, b = _same_pad(x.shape[2], kh, sh, dh)
    left, right = _same_pad(x.shape[3], kw, sw, dw)
    return F.pad(x, (left, right, t, b), value=value) if t or b or left or right else x


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


def _key(name: str, taken: set[str]) -> str:
    """A module name for an op: its output tensor's name, made a valid attribute and unique."""
    key = re.sub(r"\W", "_", name).strip("_") or "op"
    if key[0].isdigit():
        key = "t_" + key
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


class TFLiteNet(nn.Module):
    """Runs a TFLite graph's ops in order; see the module docstring. `spec` is the package spec."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict()
        self.consts = nn.Module()
        self.inputs = [spec["tensors"][str(i)]["name"] for i in spec["inputs"]]
        self.outputs = [spec["tensors"][str(i)]["name"] for i in spec["outputs"]]
        self._const_names: dict[int, str] = {}
        taken: set[str] = set()
        for idx, shape in spec["const_shapes"].items():  # float constants that are not a layer's weights
            name = _key("c_" + spec["tensors"][idx]["name"], taken)
            value = spec["small"].get(idx)
            t = torch.tensor(value, dtype=torch.float32).reshape(shape) if value is not None else torch.zeros(shape)
            self.consts.register_buffer(name, t)
            self._const_names[int(idx)] = name
        for op in spec["ops"]:
            if "module" in op:
                self.layers[op["module"]] = self._layer(op)

    _WEIGHT_RANK = {"CONV_2D": 4, "DEPTHWISE_CONV_2D": 4, "TRANSPOSE_CONV": 4, "FULLY_CONNECTED": 2, "PRELU": 1}

    def _layer(self, op: dict) -> nn.Module:
        shapes = op["weight_shapes"]
        kind = op["op"]
        rank = self._WEIGHT_RANK.get(kind)
        if rank is not None and (not shapes or len(shapes[0]) != rank if rank > 1 else not shapes or not shapes[0]) \
                or any(not isinstance(d, int) or d < 0 for s in shapes for d in s):
            raise GraftError(f"TFLite op {kind} ({op['module']}): its weight {shapes[0] if shapes else 'is missing'} "
                             f"is not a constant of rank {rank}", "the .tflite file is corrupt")
        if kind == "CONV_2D":
            o, i, kh, kw = shapes[0]
            return nn.Conv2d(i, o, (kh, kw), stride=(op["stride_h"], op["stride_w"]),
                             dilation=(op["dilation_h"], op["dilation_w"]), bias=len(shapes) > 1)
        if kind == "DEPTHWISE_CONV_2D":
            cm, _, kh, kw = shapes[0]
            c = cm // op["depth_multiplier"]
            return nn.Conv2d(c, cm, (kh, kw), stride=(op["stride_h"], op["stride_w"]), groups=c,
                             dilation=(op["dilation_h"], op["dilation_w"]), bias=len(shapes) > 1)
        if kind == "TRANSPOSE_CONV":
            i, o, kh, kw = shapes[0]
            return nn.ConvTranspose2d(i, o, (kh, kw), stride=(op["stride_h"], op["stride_w"]), bias=len(shapes) > 1)
        if kind == "FULLY_CONNECTED":
            o, i = shapes[0]
            return nn.Linear(i, o, bias=len(shapes) > 1)
        if kind == "PRELU":
            return nn.PReLU(shapes[0][0])
        raise AssertionError(kind)

    def const(self, idx: int) -> torch.Tensor | None:
        name = self._const_names.get(idx)
        return getattr(self.consts, name) if name is not None else None

    def forward(self, *xs: torch.Tensor):
        spec = self.spec
        if len(xs) != len(spec["inputs"]):
            raise GraftError(f"the network takes {len(spec['inputs'])} inputs ({', '.join(self.inputs)}), "
                             f"got {len(xs)}")
        env: dict[int, torch.Tensor] = {}
        for idx, x in zip(spec["inputs"], xs):
            want = spec["tensors"][str(idx)]["shape"]
            if x.ndim == 4 and len(want) == 4 and x.shape[1] != want[3] and x.shape[3] == want[3]:
                raise GraftError(f"input {spec['tensors'][str(idx)]['name']} looks channels last "
                                 f"{list(x.shape)}: graftkit modules take NCHW", "permute it to (N, C, H, W)")
            env[idx] = x
        for op in spec["ops"]:
            self._run(op, env)
        outs = [env[i] for i in spec["outputs"]]
        return outs[0] if len(outs) == 1 else dict(zip(self.outputs, outs))

    def _get(self, env: dict, idx: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """An op's input: an activation, or a constant moved to NCHW to meet a 4-D activation."""
        if idx in env:
            return env[idx]
        c = self.const(idx)
        if c is None:
            small = self.spec["small"].get(str(idx))
            if small is None:
                raise GraftError(f"the TFLite graph uses tensor {idx} before it is computed")
            c = torch.tensor(small)
        if like is not None and like.ndim == 4 and c.ndim >= 1 and c.numel() > 1:
            c = _nchw(c.reshape(*([1] * (4 - c.ndim)), *c.shape))
        return c

    def _run(self, op: dict, env: dict) -> None:  # noqa: C901 - one branch per op, as the interpreter
        kind, ins, out = op["op"], op["inputs"], op["outputs"][0]
        layer = self.layers[op["module"]] if "module" in op else None
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x = env[ins[0]]
            if op["padding"] == 0:
                kh, kw = layer.kernel_size
                x = _pad_same(x, kh, kw, op["stride_h"], op["stride_w"], op["dilation_h"], op["dilation_w"])
            y = _act(layer(x), op["act"])
        elif kind == "TRANSPOSE_CONV":
            x = env[ins[2]]
            full = layer(x)
            shape = [int(v) for v in self._get(env, ins[0]).tolist()]  # NHWC output shape
            crop_h, crop_w = full.shape[2] - shape[1], full.shape[3] - shape[2]
            t, left = (crop_h // 2, crop_w // 2) if op["padding"] == 0 else (0, 0)
            y = _act(full[:, :, t:t + shape[1], left:left + shape[2]], op["act"])
        elif kind == "FULLY_CONNECTED":
            x = env[ins[0]]
            lead = x.shape[:-1] if x.ndim != 4 else None
            x = _nhwc(x).reshape(-1, layer.in_features)
            y = _act(layer(x), op["act"])
            if op["keep_num_dims"] and lead is not None:
                y = y.reshape(*lead, -1)
        elif kind in ("ADD", "SUB", "MUL"):
            a = env.get(ins[0])
            b = env.get(ins[1])
            like = a if a is not None else b
            a = self._get(env, ins[0], like)
            b = self._get(env, ins[1], like)
            y = _act(a + b if kind == "ADD" else a - b if kind == "SUB" else a * b, op["act"])
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            x = env[ins[0]]
            k, s = (op["filter_h"], op["filter_w"]), (op["stride_h"], op["stride_w"])
            if kind == "MAX_POOL_2D":
                if op["padding"] == 0:
                    x = _pad_same(x, *k, *s, value=float("-inf"))
                y = F.max_pool2d(x, k, s)
            elif op["padding"] == 0:  # TensorFlow's SAME average leaves the padding out of the count
                ones = torch.ones_like(x[:, :1])
                y = F.avg_pool2d(_pad_same(x, *k, *s), k, s) / F.avg_pool2d(_pad_same(ones, *k, *s), k, s)
            else:
                y = F.avg_pool2d(x, k, s)
            y = _act(y, op["act"])
        elif kind == "CONCATENATION":
            xs = [self._get(env, i) for i in ins]
            axis = op["axis"] % xs[0].ndim
            y = _act(torch.cat(xs, dim=NHWC_TO_NCHW[axis] if xs[0].ndim == 4 else axis), op["act"])
        elif kind == "RESHAPE":
            x = _nhwc(env[ins[0]])
            shape = op["new_shape"]
            if len(ins) > 1 and ins[1] >= 0 and ins[1] not in env:
                shape = [int(v) for v in self._get(env, ins[1]).tolist()]
            shape = [x.shape[0] if k == 0 and d == op.get("batch_dim_value") else d for k, d in enumerate(shape)]
            y = _nchw(x.reshape(shape))
        elif kind in ("PAD", "PADV2"):
            x = env[ins[0]]
            pads = [[int(a), int(b)] for a, b in self._get(env, ins[1]).tolist()]
            if x.ndim == 4:
                pads = [pads[i] for i in (0, 3, 1, 2)]
            flat = [v for p in reversed(pads) for v in p]
            value = float(self._get(env, ins[2]).reshape(-1)[0]) if kind == "PADV2" and len(ins) > 2 else 0.0
            y = F.pad(x, flat, value=value)
        elif kind == "MEAN":
            x = env[ins[0]]
            axes = [int(a) % x.ndim for a in self._get(env, ins[1]).reshape(-1).tolist()]
            keep = bool(op["keep_dims"])
            if x.ndim == 4 and keep:
                y = x.mean(dim=[NHWC_TO_NCHW[a] for a in axes], keepdim=True)
            else:
                y = _nchw(_nhwc(x).mean(dim=axes, keepdim=keep)) if keep else _nhwc(x).mean(dim=axes)
        elif kind == "SOFTMAX":
            x = env[ins[0]]
            y = torch.softmax(x * op["beta"], dim=1 if x.ndim == 4 else -1)
        elif kind in ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "LEAKY_RELU"):
            x = env[ins[0]]
            y = {"RELU": F.relu, "RELU6": lambda v: v.clamp(0, 6), "LOGISTIC": torch.sigmoid,
                 "HARD_SWISH": F.hardswish, "LEAKY_RELU": lambda v: F.leaky_relu(v, op["alpha"])}[kind](x)
        elif kind == "PRELU":
            y = layer(env[ins[0]])
        elif kind in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
            x = env[ins[0]]
            size = [int(v) for v in self._get(env, ins[1]).tolist()]
            if kind == "RESIZE_NEAREST_NEIGHBOR":
                y = F.interpolate(x, size=size, mode="nearest-exact" if op["half_pixel_centers"] else "nearest")
            else:
                y = F.interpolate(x, size=size, mode="bilinear", align_corners=bool(op["align_corners"]))
        elif kind == "DEQUANTIZE":
            y = self._get(env, ins[0]).float()
        elif kind == "QUANTIZE":  # activations are held as the real values they stand for
            y = env[ins[0]]
        else:  # refused at convert time
            raise GraftError(f"TFLite op {kind} is not supported")
        env[out] = y


def _options(fb, op: dict) -> dict[str, Any]:
    out = {}
    for field, name, fmt, default in OPTIONS.get(op["op"], []):
        out[name] = fb.scalar(op["options"], field, fmt, default) if op["options"] is not None else default
    return out


def graph_spec(graph: dict, where: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The package spec of a parsed TFLite graph and the weights by state_dict name."""
    tensors, fb = graph["tensors"], graph["flat"]
    consts = tfl.constants(graph)
    unknown: dict[str, list[str]] = {}
    for op in graph["ops"]:
        if op["op"] not in SUPPORTED:
            unknown.setdefault(op["op"], []).append(tensors[op["outputs"][0]]["name"] if op["outputs"] else "?")
    if unknown:  # (TFLite ops have no names: each is named by the tensor it produces)
        raise Unsupported("TFLite", unknown, "custom ops and ops outside graftkit's TFLite set cannot be converted",
                          where=where)
    act_quant = {}
    for i, t in enumerate(tensors):
        if t["value"] is None and t["type"] in INT_RANGES:
            q = t["quant"]
            if q is None or q["scale"].size != 1:
                raise GraftError(f"{where}: tensor {t['name']!r} is an integer activation without one scale and "
                                 "zero point", "graftkit converts float and fully integer (per-tensor) models")
            zero = int(q["zero_point"][0]) if q["zero_point"].size else 0
            act_quant[str(i)] = [float(q["scale"][0]), zero, *INT_RANGES[t["type"]]]
    for i in graph["inputs"]:
        if tensors[i]["type"] != 0 and str(i) not in act_quant:
            raise GraftError(f"{where}: input {tensors[i]['name']} is neither float32 nor a quantised "
                             f"uint8/int8/int16 tensor (type {tensors[i]['type']})",
                             "use the float version of the model")
    ops, weights, taken = [], {}, set()
    used_as_weight: set[int] = set()
    for op in graph["ops"]:
        if op["op"] == "DEQUANTIZE" and op["inputs"][0] in consts:
            continue  # the constant is dequantised once, at conversion
        entry = {"op": op["op"], "inputs": op["inputs"], "outputs": op["outputs"], **_options(fb, op)}
        if op["op"] in tfl.OP_ROLES:
            key = _key(tensors[op["outputs"][0]]["name"], taken)
            slots = (1, 3) if op["op"] == "TRANSPOSE_CONV" else (1, 2)
            entry["module"], entry["weight_shapes"] = key, []
            for role, slot in zip(("weight", "bias"), slots):
                if slot < len(op["inputs"]) and op["inputs"][slot] in consts:
                    _, value, _ = consts[op["inputs"][slot]]
                    value, _ = tfl.torch_layout(op["op"], role, value)
                    weights[f"layers.{key}.{role}"] = value
                    entry["weight_shapes"].append(list(value.shape))
                    used_as_weight.add(op["inputs"][slot])
            if op["op"] == "DEPTHWISE_CONV_2D" and entry["depth_multiplier"] < 1:
                entry["depth_multiplier"] = 1
        if op["op"] == "RESHAPE":
            new_shape = []
            if op["options"] is not None:
                new_shape = [int(v) for v in fb.array(op["options"], 0, np.int32)]
            if len(op["inputs"]) > 1 and op["inputs"][1] >= 0 and tensors[op["inputs"][1]]["value"] is not None:
                new_shape = [int(v) for v in tensors[op["inputs"][1]]["value"].reshape(-1)]
            entry["new_shape"] = new_shape or tensors[op["outputs"][0]]["shape"]
            entry["batch_dim_value"] = tensors[op["inputs"][0]]["shape"][0] if tensors[op["inputs"][0]]["shape"] else 1
        ops.append(entry)
    needed = {i for op in ops for i in op["inputs"] + op["outputs"] if i >= 0} | set(graph["inputs"])
    spec_tensors = {str(i): {"name": tensors[i]["name"], "shape": tensors[i]["shape"]} for i in sorted(needed)}
    small, const_shapes = {}, {}
    for i in sorted(needed):
        if i in used_as_weight or i in {o for op in ops for o in op["outputs"]}:
            continue
        if i in consts:
            _, value, _ = consts[i]
            const_shapes[str(i)] = list(value.shape)
            if value.size <= STRIP_ABOVE:
                small[str(i)] = value.astype(np.float32).tolist()
        elif tensors[i]["value"] is not None:  # integer constants: shapes, paddings, axes
            small[str(i)] = tensors[i]["value"].tolist()
    spec = {"converter": "tflite", "ops": ops, "tensors": spec_tensors, "inputs": graph["inputs"],
            "outputs": graph["outputs"], "small": small, "const_shapes": const_shapes}
    io = [i for i in graph["inputs"] + graph["outputs"] if str(i) in act_quant]
    if io:
        spec["quantized_io"] = {tensors[i]["name"]: act_quant[str(i)] for i in io}
    return spec, weights


def build_from_spec(spec: dict[str, Any], *, trust: bool = False) -> nn.Module:
    return TFLiteNet(spec)


def convert(paths: list[Path], **kwargs) -> nn.Module:
    path = next(Path(p) for p in paths if Path(p).suffix.lower() == ".tflite")
    graph = tfl.parse(path)
    spec, weights = graph_spec(graph, str(path))
    net = TFLiteNet(spec)
    state = net.state_dict()
    for name, t in state.items():
        if name in weights:
            value = torch.from_numpy(np.ascontiguousarray(weights[name]))
        else:  # a float constant held in `consts`
            idx = next(k for k, v in net._const_names.items() if f"consts.{v}" == name)
            value = torch.from_numpy(np.ascontiguousarray(tfl.constants(graph)[idx][1])).float()
        state[name] = value.reshape(t.shape)
    net.load_state_dict(state)
    net.eval()
    shapes = {spec["tensors"][str(i)]["name"]: spec["tensors"][str(i)]["shape"] for i in spec["inputs"]}
    pre = None
    (only,) = shapes.values() if len(shapes) == 1 else (None,)
    if only and len(only) == 4:
        pre = {"input_size": [only[3], only[1], only[2]]}
        q = spec.get("quantized_io", {}).get(spec["tensors"][str(spec["inputs"][0])]["name"])
        if q and only[3] in (1, 3) and (q[2], q[3]) == (0, 255):
            # a uint8 image input: pixel p stands for scale * (p - zero_point)
            pre.update(mean=[float(q[1])] * only[3], std=[1.0 / q[0]] * only[3], pixel_range=255.0,
                       channel_order="RGB" if only[3] == 3 else "GRAY")
    quantized = sorted({q[2]["dtype"] for q in tfl.constants(graph).values() if q[2]})
    prov = {"sources": [str(path)], "converter": "tflite", **({"dequantized_weights": quantized} if quantized else {})}
    if "QUANTIZE" in {op["op"] for op in spec["ops"]} or spec.get("quantized_io"):
        prov["quantized_activations"] = ("the file computes in integers; this module computes in float on the "
                                         "real values they stand for")
    classes = None
    outs = [spec["tensors"][str(i)]["shape"] for i in spec["outputs"]]
    if len(outs) == 1 and len(outs[0]) == 2:
        classes = tfl.labels(path, outs[0][1])
    net.input_shapes = {k: ([v[0], v[3], v[1], v[2]] if len(v) == 4 else v) for k, v in shapes.items()}
    return attach(net, make_meta(spec, classes=classes, preprocessing=pre, provenance=prov,
                                 extra={"inputs": net.inputs, "outputs": net.outputs}))
