"""A network cut at a depth, pooled, with a linear head: what a linear probe becomes as a package.

The spec wraps the base network's own spec:
    {"converter": "probe", "base": "timm:efficientnet_lite0" | {...converter spec...},
     "depth": "blocks.4" | "pre_logits", "tap": "blocks.4", "side": "output" | "input",
     "in_features": 112, "num_classes": 10}
`tap` is the module whose output (or, for pre_logits, whose input: the classifier's) is taken.
A forward hook takes the value, global-average-pools a feature map, and stops the forward
there (an exception caught in `forward`), so nothing past the depth runs, any nn.Module can be
cut, and tracing (ONNX, TorchScript) records only the ops up to the depth.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn as nn

from ..errors import GraftError

PRE_LOGITS = "pre_logits"
_NAME = re.compile(r"[A-Za-z0-9_.\-/:]{1,200}")


class _Stop(Exception):
    """Raised by a tap hook once every value asked for has been taken: the rest of the forward is skipped."""


def pool(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C] by global average; a feature vector is only flattened."""
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


class Taps:
    """Hooks taking pooled values at (name, module, side) points of `model`; the forward stops after the last."""

    def __init__(self, model: nn.Module, points: list[tuple[str, str, str]]):
        self.model, self.names = model, [p[0] for p in points]
        self.out: dict[str, torch.Tensor] = {}
        self.active = False
        self._hooks = []
        for name, module_name, side in points:
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise GraftError(f"the network has no layer named {module_name!r} to take features at",
                                 "choose a depth that `graft advise` lists") from None
            if side == "input":
                hook = module.register_forward_pre_hook(lambda _m, args, n=name: self._take(n, args))
            else:
                hook = module.register_forward_hook(lambda _m, _i, out, n=name: self._take(n, out))
            self._hooks.append(hook)

    def _take(self, name: str, value) -> None:
        if not self.active:  # another caller's forward (other taps on the same network): not ours to stop
            return
        if isinstance(value, (tuple, list)):
            value = value[0]
        if not isinstance(value, torch.Tensor):
            raise GraftError(f"depth {name!r} is not a tensor in this network", "choose another depth")
        self.out[name] = pool(value)
        if len(self.out) == len(self.names):
            raise _Stop(self)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.out, self.active = {}, True
        try:
            self.model(x)
        except _Stop as stop:
            if stop.args[0] is not self:  # an outer caller's taps stopped the forward: theirs to catch
                raise
        finally:
            self.active = False
        missing = [n for n in self.names if n not in self.out]
        if missing:
            raise GraftError(f"the forward pass never reached {', '.join(missing)}", "choose another depth")
        out, self.out = self.out, {}
        return out

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


class ProbeNet(nn.Module):
    """`base` up to `tap`, pooled, then `head` (a Linear layer on the pooled features)."""
    PREFIX = "base."  # the original network's layer names, as seen in this one

    @classmethod
    def inner(cls, name: str) -> str:
        """The name in ProbeNet of the original network's layer `name`."""
        return name if name.startswith(cls.PREFIX) else cls.PREFIX + name

    def __init__(self, base: nn.Module, tap: str, side: str, in_features: int, num_classes: int, depth: str = ""):
        super().__init__()
        self.base = base
        self.head = nn.Linear(in_features, num_classes)
        self.depth = depth or tap
        self._taps = Taps(base, [(self.depth, tap, side)])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._taps(x)[self.depth]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def make_spec(base_spec: str | dict, depth: str, tap: str, side: str, in_features: int, num_classes: int) -> dict:
    return {"converter": "probe", "base": base_spec, "depth": depth, "tap": tap, "side": side,
            "in_features": int(in_features), "num_classes": int(num_classes)}


def build_from_spec(spec: dict[str, Any], *, trust: bool = False) -> ProbeNet:
    from .spec import build
    base = spec.get("base")
    fields = [spec.get(k) for k in ("depth", "tap", "side", "in_features", "num_classes")]
    depth, tap, side, cin, k = fields
    ok = (isinstance(base, (str, dict)) and not (isinstance(base, dict) and base.get("converter") == "probe")
          and all(isinstance(v, str) and _NAME.fullmatch(v) for v in (depth, tap))
          and side in ("input", "output")
          and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000 for v in (cin, k)))
    if not ok:
        raise GraftError("the package's probe spec is malformed", "the package is corrupt or was not written by graftkit")
    return ProbeNet(build(base, trust=trust), tap, side, cin, k, depth)
