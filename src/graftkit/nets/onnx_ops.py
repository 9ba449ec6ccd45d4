"""ONNX ops that real exported networks use and onnx2torch (1.5) does not convert, as graftkit's own
converters, registered in onnx2torch's registry when nets/onnx.py imports this module:

  GlobalMaxPool       max over every spatial axis, any rank
  BatchNormalization  also when shape inference cannot give the input's rank (after a Reshape computed
                      at run time): a BatchNorm module that accepts any rank; known ranks keep
                      onnx2torch's nn.BatchNorm1d/2d/3d (same state_dict names as before)
  LSTM, GRU           torch.nn.LSTM / nn.GRU holding the weights, ONNX's gate order (LSTM i,o,f,c;
                      GRU z,r,h) moved to torch's (i,f,g,o; r,z,n), both directions, `layout`,
                      initial states and sequence_lens (packed sequences); time-major layout

`If` is not an op converter: nets/onnx.py inlines the branch an If takes when its condition does not
depend on the inputs (`inline_constant_ifs`). Each converter is checked against onnxruntime in
tests/test_onnx_ops.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from onnx2torch.node_converters import registry
from onnx2torch.node_converters.registry import OperationDescription
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult

from ..errors import GraftError


def _register(op: str, versions, converter, *, replace: bool = False) -> None:
    """Add a converter; `replace` overrides onnx2torch's own for those versions (keeping it as fallback)."""
    for v in versions:
        key = OperationDescription(domain="", operation_type=op, version=v)
        if key in registry._CONVERTER_REGISTRY and not replace:
            continue  # a newer onnx2torch converts it itself
        previous = registry._CONVERTER_REGISTRY.get(key)
        registry._CONVERTER_REGISTRY[key] = (lambda node, graph, _p=previous: converter(node, graph, _p))


# ---------------------------------------------------------------- GlobalMaxPool

class GlobalMaxPool(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


def _global_max_pool(node, graph, previous):
    return OperationConverterResult(torch_module=GlobalMaxPool(),
                                    onnx_mapping=OnnxMapping(inputs=node.input_values[:1],
                                                             outputs=node.output_values))


# ---------------------------------------------------------------- BatchNormalization of unknown rank

class AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """nn.BatchNorm for inputs of any rank >= 2 (N, C, ...): the rank is known only at run time."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"BatchNormalization expects (N, C, ...) input, got {x.dim()}-D")


def _batch_norm(node, graph, previous):
    try:
        return previous(node, graph)
    except (NotImplementedError, KeyError, ValueError, IndexError, TypeError):
        pass  # the input's rank is unknown to shape inference
    names = node.input_values[1:5]
    if len(node.output_values) != 1 or not all(n in graph.initializers for n in names):
        raise NotImplementedError("BatchNormalization with computed parameters or training outputs")
    scale, bias, mean, var = (graph.initializers[n].to_torch() for n in names)
    attrs = node.attributes
    m = AnyRankBatchNorm(scale.shape[0], eps=attrs.get("epsilon", 1e-5), momentum=1 - attrs.get("momentum", 0.9))
    with torch.no_grad():
        m.weight.copy_(scale)
        m.bias.copy_(bias)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return OperationConverterResult(torch_module=m, onnx_mapping=OnnxMapping(inputs=node.input_values[:1],
                                                                             outputs=node.output_values))


# ---------------------------------------------------------------- LSTM / GRU

def _flip_within(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse [T, B, ...] along time inside each sequence's length (padding stays where it is)."""
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.shape[0], device=x.device)[:, None]
    lens = lengths.to(x.device)[None, :]
    idx = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(0, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))).expand_as(x))


class RNN(nn.Module, OnnxToTorchModule):
    """An ONNX LSTM/GRU node around torch's nn.LSTM/nn.GRU (one layer). Takes X and the optional inputs
    present in the node (sequence_lens, initial_h, initial_c, in that order, as `present` says) and
    returns ONNX's (Y, Y_h[, Y_c]) with Y [T, D, B, H] (layout 0, time-major)."""

    def __init__(self, rnn: nn.Module, direction: str, present: tuple[bool, bool, bool], n_outputs: int):
        super().__init__()
        self.rnn = rnn
        self.reverse = direction == "reverse"
        self.present = present
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor, *optional: torch.Tensor):
        it = iter(optional)
        lens, h0, c0 = (next(it) if p else None for p in self.present)
        lstm = isinstance(self.rnn, nn.LSTM)
        steps, batch = x.shape[0], x.shape[1]
        dirs, hidden = (2 if self.rnn.bidirectional else 1), self.rnn.hidden_size
        zeros = x.new_zeros(dirs, batch, hidden)
        state = (h0 if h0 is not None else zeros, c0 if c0 is not None else zeros) if lstm else \
            (h0 if h0 is not None else zeros)
        if lens is not None:
            lens = lens.to(torch.int64)
        if self.reverse:
            x = _flip_within(x, lens)
        if lens is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lens.cpu(), enforce_sorted=False)
            y, state = self.rnn(packed, state)
            y, _ = nn.utils.rnn.pad_packed_sequence(y, total_length=steps)
        else:
            y, state = self.rnn(x, state)
        if self.reverse:
            y = _flip_within(y, lens)
        y = y.reshape(steps, batch, dirs, hidden).permute(0, 2, 1, 3)  # [T, D, B, H]
        if self.n_outputs == 1:
            return y
        return (y, *state) if lstm else (y, state)


# ONNX gate blocks -> torch's order: LSTM i,o,f,c -> i,f,g(c),o ; GRU z,r,h -> r,z,n
_GATES = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2]}


def _rnn(node, graph, previous):
    op = node.operation_type
    a = node.attributes
    where = f"{op} node {node.name!r}"
    ins = list(node.input_values) + [""] * (8 - len(node.input_values))
    w_name, r_name, b_name, lens_name, h_name = ins[1], ins[2], ins[3], ins[4], ins[5]
    c_name = ins[6] if op == "LSTM" else ""
    if op == "LSTM" and ins[7]:
        raise GraftError(f"{where}: peephole weights (input P) have no torch.nn.LSTM equivalent",
                         "re-export the LSTM without peepholes")
    for unsupported in ("clip", "activations", "activation_alpha", "activation_beta"):
        if unsupported in a and not (unsupported == "activations" and _default_activations(op, a[unsupported])):
            raise GraftError(f"{where}: attribute {unsupported} has no torch.nn.{op} equivalent",
                             "re-export with the default activations and no clip")
    if a.get("layout", 0):  # (onnxruntime cannot run it either, so nothing could check a conversion)
        raise GraftError(f"{where}: layout=1 (batch-major) is not supported", "re-export with layout=0")
    if a.get("input_forget", 0):
        raise GraftError(f"{where}: input_forget=1 has no torch.nn.LSTM equivalent")
    if op == "GRU" and not a.get("linear_before_reset", 0):
        raise GraftError(f"{where}: linear_before_reset=0 (the ONNX default) differs from torch.nn.GRU, which "
                         "applies the reset gate after the recurrent linear layer",
                         "re-export with linear_before_reset=1 (PyTorch, and Keras's reset_after=True, do)")
    if not all(n in graph.initializers for n in (w_name, r_name) + ((b_name,) if b_name else ())):
        raise NotImplementedError(f"{op} with weights computed at run time")
    W = graph.initializers[w_name].to_torch()
    R = graph.initializers[r_name].to_torch()
    dirs, gh, inp = W.shape
    gates = len(_GATES[op])
    hidden = int(a.get("hidden_size", gh // gates))
    direction = a.get("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    B = graph.initializers[b_name].to_torch() if b_name else W.new_zeros(dirs, 2 * gates * hidden)
    rnn = (nn.LSTM if op == "LSTM" else nn.GRU)(inp, hidden, bidirectional=direction == "bidirectional")
    order = _GATES[op]

    def reorder(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[k * hidden:(k + 1) * hidden] for k in order])

    with torch.no_grad():
        for d in range(dirs):
            sfx = "_reverse" if d == 1 else ""
            getattr(rnn, f"weight_ih_l0{sfx}").copy_(reorder(W[d]))
            getattr(rnn, f"weight_hh_l0{sfx}").copy_(reorder(R[d]))
            getattr(rnn, f"bias_ih_l0{sfx}").copy_(reorder(B[d, :gates * hidden]))
            getattr(rnn, f"bias_hh_l0{sfx}").copy_(reorder(B[d, gates * hidden:]))
    present = (bool(lens_name), bool(h_name), bool(c_name))
    inputs = tuple(n for n in (ins[0], lens_name, h_name, c_name) if n)
    module = RNN(rnn, direction, present, len(node.output_values))
    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=inputs,
                                                                                  outputs=node.output_values))


def _default_activations(op: str, names) -> bool:
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    default = ["Sigmoid", "Tanh", "Tanh"] if op == "LSTM" else ["Sigmoid", "Tanh"]
    return all(n.lower() == default[i % len(default)].lower() for i, n in enumerate(names))


_register("GlobalMaxPool", (1, 22), _global_max_pool)
_register("BatchNormalization", (9, 14, 15), _batch_norm, replace=True)
_register("LSTM", (7, 14, 22), _rnn)
_register("GRU", (7, 14, 22), _rnn)
