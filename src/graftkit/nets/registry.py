"""What every converter shares: a registry of op converters, and the one error for ops it cannot run.

Each converter (caffe, keras, mxnet, onnx, tflite) keeps one Registry: op or layer type -> the one
function (or class) that converts it, filled with a decorator next to that function:

    LAYERS = Registry("Keras", "layer")

    @LAYERS.register("Embedding", allow={"mask_zero": lambda v: not v})
    def embedding(layer): ...

What a converter supports is its registry's keys, so support is added in one place. Keyword
arguments of `register` are the op's traits (`allow`: the options it accepts, see refused_option;
`labels_from`, `elementwise`: what a converter's graph needs to know), read back with `traits(op)`.
Ops that a converter cannot run are refused together, before any weights are read, with
`Unsupported`: one line naming the ops, the nodes using them, the file, and what to do. (ONNX's
registry is onnx2torch's, which nets/onnx_ops.py extends; its refusals use `Unsupported` too.)
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import GraftError, some

TRANSPLANT = "or write the network in PyTorch and move its weights with `graft transplant`"


class Registry(dict):
    """Op type -> its converter, for one framework (a dict: lookups cost what a dict lookup costs)."""

    def __init__(self, framework: str, noun: str = "op", entries: Mapping[str, Any] | None = None):
        super().__init__(entries or {})
        self.framework, self.noun = framework, noun
        self._traits: dict[str, dict[str, Any]] = {}

    def register(self, *names: str, **traits: Any) -> Callable:
        """Decorator: the function (or class) converts these op types; `traits` describe them."""
        def add(fn):
            for name in names:
                if name in self:  # two converters for one op: the later would win silently
                    raise ValueError(f"{self.framework} {self.noun} {name} is registered twice")
                self[name] = fn
                self._traits[name] = traits
            return fn
        return add

    def traits(self, name: str) -> dict[str, Any]:
        return self._traits.get(name, {})

    def refused_option(self, name: str, attrs: Mapping[str, Any]) -> str | None:
        """The first option its converter does not accept, as 'key=value', else None. A converter states
        what it accepts with the trait `allow={key: test of the value (None when absent)}`, so options are
        refused with the unknown ops, before any weights are read."""
        for key, accepts in self.traits(name).get("allow", {}).items():
            try:
                ok = accepts(attrs.get(key))
            except (ValueError, TypeError):  # a value not even of the option's kind
                ok = False
            if not ok:
                return f"{key}={attrs.get(key)}"
        return None

    def refuse(self, offenders: Mapping[str, list[str]], hint: str, where: str | None = None) -> "Unsupported":
        return Unsupported(self.framework, offenders, hint, noun=self.noun, where=where)


class Unsupported(GraftError):
    """The one error for ops a converter cannot run: `{file}: unsupported Keras layers: Twice (used by
    twice_a, twice_b); ... (hint, or write the network in PyTorch and move its weights ...)`.

    `offenders`: op (or `op(option=value)`) -> the names of the nodes or layers using it. `where` is the
    file; a converter that learns it later (a net built from a config) adds it with `at`."""

    def __init__(self, framework: str, offenders: Mapping[str, list[str]], hint: str, *, noun: str = "op",
                 where: str | None = None):
        self.framework, self.offenders, self.noun, self.where = framework, dict(offenders), noun, where
        self.fix = hint
        listing = "; ".join(f"{op} (used by {some(names)})" for op, names in self.offenders.items())
        plural = "s" if len(self.offenders) > 1 else ""
        head = f"{where}: " if where else ""
        super().__init__(f"{head}unsupported {framework} {noun}{plural}: {listing}", f"{hint}; {TRANSPLANT}")

    def at(self, where: str) -> "Unsupported":
        """The same error, naming the file (kept as it is when it names one already)."""
        if self.where:
            return self
        return Unsupported(self.framework, self.offenders, self.fix, noun=self.noun, where=where)
