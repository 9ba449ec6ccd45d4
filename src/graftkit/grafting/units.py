"""Units: the groups of tensors that move together (a convolution with its BatchNorm,
a dense layer with its bias), built alike from a source TensorSet and a target module.

Alignment works on units rather than single tensors, so a BatchNorm always follows
its convolution and BatchNorm statistics stored far from their weights (MXNet's
`aux:` block, Caffe's separate BatchNorm and Scale layers) are still one unit.
Inside a unit each tensor has a slot: ("main", role) for the convolution/dense
layer, ("norm", role) for its normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn

from ..formats.base import TensorRecord, TensorSet

MAIN_KINDS = {"conv": "conv", "depthwise_conv": "conv", "conv_transpose": "conv_transpose",
              "linear": "linear", "embedding": "embedding"}
NORM_KINDS = {"batchnorm", "scale", "norm"}


@dataclass
class Unit:
    family: str                                    # conv, linear, norm, prelu, ...
    slots: dict[tuple[str, str], str] = field(default_factory=dict)  # slot -> tensor name
    shapes: dict[tuple[str, str], tuple] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)

    def key(self) -> tuple:
        """What must agree for two units to be the same layer: family, main weight shape, norm width
        (a bias present on one side only does not matter); for other layers every shape."""
        if self.family not in ("conv", "linear", "conv_transpose", "embedding", "norm"):
            return (self.family, tuple(sorted(self.shapes.values())))
        main = self.shapes.get(("main", "weight"))
        if self.match_family == "dense":
            main = main[:2]
        norm = next((s for (part, role), s in self.shapes.items()
                     if part == "norm" and role in ("weight", "running_mean", "running_var", "bias")), None)
        return (self.match_family, main, norm)

    @property
    def match_family(self) -> str:
        """The family compared in alignment: a 1x1 convolution is a dense layer (Caffe's and
        MXNet's classifiers are often 1x1 convolutions where PyTorch has nn.Linear)."""
        w = self.shapes.get(("main", "weight"))
        if self.family in ("conv", "linear") and w and len(w) >= 2 and all(d == 1 for d in w[2:]):
            return "dense"
        return self.family

    @property
    def label(self) -> str:
        return "+".join(self.layers)

    def out_width(self) -> int | None:
        w = self.shapes.get(("main", "weight"))
        if not w:
            return None
        return w[1] if self.family == "conv_transpose" else w[0]


def _family(kind: str) -> str:
    if kind in MAIN_KINDS:
        return MAIN_KINDS[kind]
    if kind in NORM_KINDS:
        return "norm"
    return kind


def records_from_module(module: nn.Module) -> TensorSet:
    """The module's state_dict as TensorRecords whose kinds come from the module types (exact, not guessed).

    In a torch.fx graph (a converted ONNX model) a tensor held apart from the module that uses it
    (onnx2torch keeps a PRelu slope among `initializers` and passes it to an OnnxPReLU) takes the
    kind and the layer of that consumer, and layers come in the graph's execution order."""
    records, position = [], 0
    persistent = module.state_dict(keep_vars=True)
    fed = _fed_tensors(module)  # consumer module -> [(tensor name, role)]
    fed_names = {full for pairs in fed.values() for full, _ in pairs}
    modules = dict(module.named_modules())
    for mname in _module_order(module, modules):
        sub = modules[mname]
        own = list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False))
        own = [(n, t) for n, t in own if f"{mname}.{n}".lstrip(".") in persistent and t is not None]
        own = [(n, t) for n, t in own if f"{mname}.{n}".lstrip(".") not in fed_names]
        kind = module_kind(sub)
        for n, t in own:
            full = f"{mname}.{n}" if mname else n
            role = n if n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") else "other"
            records.append(TensorRecord(full, t.detach(), layer=mname or full, kind=kind, role=role,
                                        position=position))
        for full, role in fed.get(mname, []):
            t, meta = persistent[full].detach(), {}
            if type(sub).__name__ == "OnnxMatMul" and role == "weight" and t.ndim == 2:
                t, meta = t.t(), {"stored_transposed": True}  # matmul(x, W) keeps W [in, out]: show [out, in]
            records.append(TensorRecord(full, t, layer=mname, kind=kind, role=role, position=position, meta=meta))
        if own or mname in fed:
            position += 1
    return TensorSet(records, format="torch module")


def _module_order(module: nn.Module, modules: dict[str, nn.Module]) -> list[str]:
    """Module names in execution order for a torch.fx GraphModule, else in definition order."""
    if not isinstance(module, torch.fx.GraphModule):
        return list(modules)
    order = [n.target for n in module.graph.nodes if n.op == "call_module" and n.target in modules]
    seen = set(order)
    return list(dict.fromkeys(order)) + [m for m in modules if m not in seen]


def _fed_tensors(module: nn.Module) -> dict[str, list[tuple[str, str]]]:
    """For a torch.fx graph: consumer module name -> [(tensor name, role)], for persistent tensors
    read by `get_attr` and passed to one module of a known kind (role from the argument slot)."""
    if not isinstance(module, torch.fx.GraphModule):
        return {}
    persistent = module.state_dict(keep_vars=True)
    modules = dict(module.named_modules())
    fed: dict[str, list[tuple[str, str]]] = {}
    for node in module.graph.nodes:
        if node.op != "get_attr" or node.target not in persistent:
            continue
        users = [u for u in node.users if u.op == "call_module" and u.target in modules]
        if len(users) != 1:
            continue
        user = users[0]
        layer = _bias_of(user, node, modules)
        if layer is not None:
            fed.setdefault(layer, []).append((node.target, "bias"))
            continue
        if module_kind(modules[user.target]) == "other":
            continue
        slot = list(user.args).index(node) if node in user.args else -1
        role = {1: "weight", 2: "bias"}.get(slot, "other")
        fed.setdefault(user.target, []).append((node.target, role))
    return fed


def _bias_of(add, const, modules: dict[str, nn.Module]) -> str | None:
    """The linear layer whose output `add` (an ONNX Add) offsets by the tensor `const`: MatMul + Add is
    a dense layer with a bias, as the ONNX reader tags it. None otherwise."""
    mod = modules[add.target]
    if getattr(mod, "math_op_function", None) is not torch.add or len(add.args) != 2:
        return None
    other = add.args[0] if add.args[1] is const else add.args[1]
    if getattr(other, "op", None) != "call_module" or other.target not in modules:
        return None
    lin = modules[other.target]
    if type(lin).__name__ == "OnnxMatMul" or (isinstance(lin, nn.Linear) and lin.bias is None):
        return other.target
    return None


def module_kind(sub: nn.Module) -> str:
    if isinstance(sub, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv_transpose"
    if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "depthwise_conv" if sub.groups > 1 and sub.groups == sub.in_channels else "conv"
    if isinstance(sub, nn.Linear) or type(sub).__name__ == "OnnxMatMul":  # (onnx2torch: MatMul by a constant)
        return "linear"
    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(sub, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
        return "norm"
    if isinstance(sub, nn.PReLU) or type(sub).__name__ == "OnnxPReLU":  # onnx2torch's PRelu (slope passed in)
        return "prelu"
    if isinstance(sub, nn.Embedding):
        return "embedding"
    return "other"


def _guess_kind(recs: list[TensorRecord]) -> str:
    """A layer's kind; for 'other' layers decide from the tensors (a lone 1-D weight is a norm)."""
    kinds = {r.kind for r in recs} - {"other"}
    if kinds:
        for k in ("batchnorm", "scale", "norm", "conv_transpose", "conv", "depthwise_conv", "linear",
                  "prelu", "embedding", "bias"):
            if k in kinds:
                return k
    w = next((r.tensor for r in recs if r.role == "weight"), None)
    if w is not None and w.ndim == 4:
        return "conv"
    if w is not None and w.ndim == 2:
        return "linear"
    if w is not None and w.ndim == 1 and any(r.role == "bias" for r in recs):
        return "norm"
    return "other"


def build_units(ts: TensorSet, only: set[str] | None = None) -> list[Unit]:
    """Units in source order; `only` restricts them to those tensor names (unmatched ones)."""
    units: list[Unit] = []
    current: Unit | None = None
    for layer, recs in _sublayers(ts):
        kind = _guess_kind(recs)
        fam = _family(kind)
        recs = [r for r in recs if only is None or r.name in only]
        if not recs:
            current = None if fam in MAIN_KINDS.values() else current
            continue
        width = len(recs[0].tensor) if recs[0].tensor.ndim else None
        if fam == "norm" and current is not None and current.family in ("conv", "linear", "conv_transpose") \
                and _norm_fits(current, recs):
            _add(current, "norm", recs, layer)
            continue
        if kind == "bias" and current is not None and ("main", "bias") not in current.slots \
                and current.out_width() == width:
            _add(current, "main", recs, layer, role="bias")
            continue
        part = "main" if fam in ("conv", "linear", "conv_transpose", "embedding") else (
            "norm" if fam == "norm" else fam)
        unit = Unit(family=fam)
        _add(unit, part, recs, layer)
        units.append(unit)
        current = unit if part == "main" else None
    return units


def _sublayers(ts: TensorSet):
    """(layer, records) in source order; a layer holding several weights (Keras SeparableConv2D:
    depthwise + pointwise) is split by tensor-name prefix into one entry per weight."""
    for layer, recs in ts.layers().items():
        if sum(r.role == "weight" for r in recs) <= 1:
            yield layer, recs
            continue
        parts: dict[str, list[TensorRecord]] = {}
        for r in recs:
            parts.setdefault(r.name.rpartition(".")[0] or r.name, []).append(r)
        yield from parts.items()


def _norm_fits(unit: Unit, recs: list[TensorRecord]) -> bool:
    has_norm = [s for s in unit.slots if s[0] == "norm"]
    roles = {r.role for r in recs}
    # A Caffe Scale may follow its BatchNorm (mean/var then weight/bias); never two full norms.
    if has_norm and ({s[1] for s in has_norm} & roles):
        return False
    widths = {r.tensor.shape[0] for r in recs if r.tensor.ndim == 1}
    return widths == {unit.out_width()}


def _add(unit: Unit, part: str, recs: list[TensorRecord], layer: str, role: str | None = None) -> None:
    unit.layers.append(layer)
    for r in recs:
        if role is None:
            role_here = r.role if r.role != "other" else r.name.rpartition(".")[2]
        else:
            role_here = role
        slot = (part, role_here)
        if slot in unit.slots:
            slot = (part, r.name)
        unit.slots[slot] = r.name
        unit.shapes[slot] = tuple(r.tensor.shape)


def shape_str(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"
