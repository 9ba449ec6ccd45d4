"""Apply a plan to a model: head, freezing, stop_gradient, lr/decay multipliers, unfreezing, aux losses.

The result, a Tuning, is all the training loop needs to know about the plan:
optimizer parameter groups with Caffe's lr_mult/decay_mult meaning, which
modules stay in eval mode (frozen BatchNorm), which parameters thaw at which
epoch, and how a multi-output model's outputs become one loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import GraftError
from ..meta import meta_of
from . import head as heads
from .patterns import select
from .plan import Plan

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_MAIN_KEYS = ("logits", "out", "output", "main", "loss3", "classifier")


@dataclass
class ParamInfo:
    name: str
    shape: tuple
    role: str                 # head | body
    frozen: bool              # never trained
    unfreeze_at: int | None   # epoch at which it starts training (gradual unfreeze)
    lr_mult: float
    decay_mult: float
    why: str = ""


@dataclass
class Tuning:
    plan: Plan
    head: str | None
    head_report: dict
    params: list[ParamInfo]
    stop_gradient: str | None = None
    main_output: str | None = None  # the dict output trained as the main one (saved for serving)
    _hooks: list = field(default_factory=list, repr=False)

    # -- optimizer -----------------------------------------------------------------------------
    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Parameters bucketed by (lr_mult, decay_mult); frozen-for-good parameters are left out."""
        named = dict(model.named_parameters())
        buckets: dict[tuple[float, float], list] = {}
        for p in self.params:
            if p.frozen:
                continue
            buckets.setdefault((p.lr_mult, p.decay_mult), []).append(named[p.name])
        groups = [{"params": ps, "lr": lr * lm, "lr_mult": lm, "weight_decay": weight_decay * dm, "decay_mult": dm}
                  for (lm, dm), ps in sorted(buckets.items(), key=lambda kv: kv[0])]
        if not groups:
            raise GraftError("the plan freezes every parameter: nothing would train",
                             "freeze fewer layers (see `graft plan show`)")
        return groups

    # -- epochs ----------------------------------------------------------------------------------
    def set_epoch(self, model: nn.Module, epoch: int) -> list[str]:
        """Set requires_grad for this epoch (gradual unfreeze); returns the names that train now."""
        named = dict(model.named_parameters())
        thawed = []
        for p in self.params:
            trains = not p.frozen and (p.unfreeze_at is None or epoch >= p.unfreeze_at)
            if p.unfreeze_at is not None and epoch == p.unfreeze_at and trains:
                thawed.append(p.name)
            named[p.name].requires_grad_(trains)
        return thawed

    def frozen_norms(self, model: nn.Module, epoch: int) -> list[nn.Module]:
        """BatchNorm layers whose statistics stay fixed: all their parameters frozen at this epoch
        (every one with the plan's bn_stats: frozen)."""
        if self.plan.bn_stats == "frozen":
            return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.plan.freeze_bn:
            return []
        status = {p.name: p.frozen or (p.unfreeze_at is not None and epoch < p.unfreeze_at) for p in self.params}
        out = []
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                own = [f"{name}.{k}" for k, _ in m.named_parameters(recurse=False)]
                if own and all(status.get(n, False) for n in own):
                    out.append(m)
                elif not own and self.stop_gradient and self._below_stop(model, name):
                    out.append(m)
        return out

    def train_mode(self, model: nn.Module, epoch: int) -> None:
        """model.train(), with frozen BatchNorm statistics kept fixed (eval mode)."""
        model.train()
        for m in self.frozen_norms(model, epoch):
            m.eval()

    def _below_stop(self, model: nn.Module, name: str) -> bool:
        order = [n for n, _ in model.named_modules()]
        return order.index(name) <= order.index(self.stop_gradient)

    # -- loss --------------------------------------------------------------------------------------
    def outputs(self, out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(main logits, {aux name: logits}) of a model's output: a tensor, a dict or a (named) tuple."""
        if isinstance(out, torch.Tensor):
            return out, {}
        if hasattr(out, "_asdict"):
            out = out._asdict()
        if isinstance(out, (list, tuple)):
            out = {("main" if i == 0 else f"aux{i}"): t for i, t in enumerate(out)}
        if not isinstance(out, dict):
            raise GraftError(f"the model returned a {type(out).__name__}; graftkit expects logits, a dict or a tuple")
        out = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        main = self.plan.main_output
        if main is None:
            rest = [k for k in out if k not in self.plan.aux_weights]
            main = next((k for k in _MAIN_KEYS if k in out), rest[0] if len(rest) == 1 else None)
        if main not in out:
            raise GraftError(f"the model's outputs are {sorted(out)}; the plan must say which is the main one",
                             "set main_output in the plan")
        self.main_output = main
        return out[main], {k: v for k, v in out.items() if k != main}

    def loss(self, out: Any, target: torch.Tensor, criterion) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Weighted loss: main + sum(w_k * aux_k) (GoogLeNet: 0.3 each unless the plan says otherwise)."""
        main, aux = self.outputs(out)
        total = criterion(main, target)
        parts = {"main": total.detach()}
        for k, logits in aux.items():
            w = self.plan.aux_weights.get(k, 0.3)
            if w:
                part = criterion(logits, target)
                parts[k] = part.detach()
                total = total + w * part
        return total, main, parts

    # -- report ----------------------------------------------------------------------------------
    def table(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        rows = []
        for p in self.params:
            state = "frozen" if p.frozen else (f"frozen until epoch {p.unfreeze_at}" if p.unfreeze_at else "trainable")
            rows.append({"name": p.name, "shape": list(p.shape), "role": p.role, "status": state,
                         "lr": 0.0 if p.frozen else lr * p.lr_mult, "lr_mult": p.lr_mult,
                         "weight_decay": 0.0 if p.frozen else weight_decay * p.decay_mult,
                         "decay_mult": p.decay_mult, "why": p.why})
        return rows

    def groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The table by layer unit (`conv_stem`, `blocks.3`, `classifier`...), in the model's order."""
        keys = _layer_keys([p.name for p in self.params], self.head_report.get("heads") or ([self.head] if self.head else []))
        out: dict[str, dict[str, Any]] = {}
        for row, p in zip(self.table(lr, weight_decay), self.params):
            g = out.setdefault(keys[p.name], {"group": keys[p.name], "parameters": 0, "status": [], "lr": [],
                                              "weight_decay": []})
            g["parameters"] += int(torch.Size(p.shape).numel())
            for k in ("status", "lr", "weight_decay"):
                if row[k] not in g[k]:
                    g[k].append(row[k])
        return list(out.values())

    def summary(self) -> dict[str, Any]:
        n = lambda ps: int(sum(torch.Size(p.shape).numel() for p in ps))  # noqa: E731
        return {"head": self.head_report, "stop_gradient": self.stop_gradient,
                "trainable": n([p for p in self.params if not p.frozen and p.unfreeze_at is None]),
                "frozen": n([p for p in self.params if p.frozen]),
                "unfreeze_later": n([p for p in self.params if not p.frozen and p.unfreeze_at is not None])}


def _layer_keys(names: list[str], heads: list[str] = ()) -> dict[str, str]:
    """Depth unit of each parameter for layer-wise decay and the plan table: `blocks.3`, `conv_stem`,
    `layer2`... A wrapper's path shared by the whole body (a detector's `model.backbone.fb.body.`) is
    kept in the name but skipped when finding the unit; a head's parameters are keyed by the head."""
    body = [n.split(".")[:-1] for n in names if not _in_head(n, list(heads))]
    common = 0
    if body:
        shortest = min(len(p) for p in body)
        while common < shortest - 1 and len({tuple(p[:common + 1]) for p in body}) == 1:
            common += 1
    out = {}
    for n in names:
        head = next((h for h in heads if _in_head(n, [h])), None)
        if head is not None:
            out[n] = head
            continue
        parts = n.split(".")[:-1] or [n]
        rest = parts[common:]   # (common < every body name's length)
        key = ".".join(parts[:common] + rest[:1])
        if len(rest) > 1 and rest[1].isdigit():
            key += "." + rest[1]
        out[n] = key
    return out


def apply(model: nn.Module, plan: Plan, classes: list[str] | None = None, *,
          new_heads: list[str] | None = None) -> tuple[nn.Module, Tuning]:
    """Make `model` ready to fine-tune under `plan` (in place); returns it with its Tuning.

    new_heads: module names of layers the caller built new (a detection or segmentation head and its
    FPN, from graftkit.tasks): they are the plan's `head`, trained at plan.head_lr_mult."""
    head_report = {"mode": "none"}
    if new_heads:
        head_report = {"mode": "new", "head": new_heads[0], "heads": list(new_heads), "new": True, "kept_rows": 0}
    elif classes is not None:
        model, head_report = heads.prepare(model, list(classes), plan.head)
    head = heads.find_head(model)
    all_heads = head_report.get("heads") or ([head] if head else [])
    spec = meta_of(model).get("spec")
    model_name = spec if isinstance(spec, str) else type(model).__name__
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    frozen: dict[str, str] = {}
    for pat in plan.freeze:
        for n in select(pat, names, head, "freeze", model_name):
            frozen[n] = f"freeze {pat}"
    stop = plan.stop_gradient
    if stop:
        modules = [n for n, _ in model.named_modules()]
        if stop not in modules:
            import difflib
            close = difflib.get_close_matches(stop, modules, n=3, cutoff=0.5)
            raise GraftError(f"plan stop_gradient: {stop!r} names no layer of {model_name}",
                             (f"did you mean {', '.join(close)}?" if close else "see `graft plan show`"))
        # everything that runs before it, and its own layers (they come after it in named_modules' pre-order)
        upto = modules[:modules.index(stop) + 1] + [m for m in modules if m.startswith(stop + ".")]
        below = {m for m in upto if m}
        for n in names:
            owner = n.rsplit(".", 1)[0] if "." in n else ""
            if owner in below:
                frozen.setdefault(n, f"below stop_gradient {stop}")
    thaw: dict[str, int] = {}
    for epoch in sorted(plan.unfreeze):
        for pat in plan.unfreeze[epoch]:
            for n in select(pat, names, head, f"unfreeze at epoch {epoch}", model_name):
                thaw.setdefault(n, epoch)
    lr_user: dict[str, float] = {}
    for pat, mult in plan.lr_mult.items():
        for n in select(pat, names, head, "lr_mult", model_name):
            lr_user[n] = float(mult)
    decay_user: dict[str, float] = {}
    for pat, mult in plan.decay_mult.items():
        for n in select(pat, names, head, "decay_mult", model_name):
            decay_user[n] = float(mult)
    norm_params = {f"{mn}.{pn}" if mn else pn for mn, m in model.named_modules() if isinstance(m, _NORMS)
                   for pn, _ in m.named_parameters(recurse=False)}
    keys = _layer_keys(names, all_heads)
    order = list(dict.fromkeys(keys[n] for n in names if not _in_head(n, all_heads)))
    depth = {k: i for i, k in enumerate(order)}
    infos = []
    for n, p in named:
        role = "head" if _in_head(n, all_heads) else "body"
        is_bias = n.endswith("bias") or (p.ndim == 1 and n not in norm_params)
        lm = lr_user.get(n, plan.head_lr_mult if role == "head" and head_report.get("new") else 1.0)
        dm = decay_user.get(n, 1.0)
        why = []
        if is_bias:
            lm *= plan.bias_lr_mult
            dm *= plan.bias_decay_mult
            why.append("bias")
        elif n in norm_params:
            dm *= plan.norm_decay_mult
            why.append("norm")
        if plan.layer_decay is not None and role == "body":
            lm *= plan.layer_decay ** (len(order) - depth[keys[n]])
        if role == "head" and head_report.get("new"):
            why.append("new head")
        is_frozen = n in frozen and n not in thaw
        unfreeze_at = thaw.get(n)
        if n in thaw and n not in frozen:
            why.append(f"unfreeze at {thaw[n]}")
        if is_frozen:
            why.append(frozen[n])
        infos.append(ParamInfo(n, tuple(p.shape), role, is_frozen, unfreeze_at if unfreeze_at else None,
                               round(lm, 10), round(dm, 10), ", ".join(why)))
    tuning = Tuning(plan, head, head_report, infos, stop_gradient=stop)
    tuning.set_epoch(model, 0)
    if stop:
        tuning._hooks += install_stop_gradient(model, stop)
    return model, tuning


def _in_head(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def install_stop_gradient(model: nn.Module, stop: str) -> list:
    """Run everything up to `stop` without autograd (GoogLeNet's 'volatile' trick) and cut the graph there.
    Returns the hook handles (remove them to undo)."""
    state = {}

    def enter(_m, _args):
        state["prev"] = torch.is_grad_enabled()
        torch.set_grad_enabled(False)

    def cut(_m, _args, out):
        torch.set_grad_enabled(state.get("prev", True))
        return out.detach() if isinstance(out, torch.Tensor) else out

    def leave(_m, _args, _out):
        torch.set_grad_enabled(state.pop("prev", torch.is_grad_enabled()))

    return [model.register_forward_pre_hook(enter), model.get_submodule(stop).register_forward_hook(cut),
            model.register_forward_hook(leave)]
