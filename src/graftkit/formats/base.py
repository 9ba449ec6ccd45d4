"""The tensor-record contract every reader yields (DESIGN.md, "Tensor records").

A reader returns a TensorSet: an ordered mapping name -> torch.Tensor in PyTorch
layout (OIHW convolutions, [out, in] linear weights, BatchNorm as weight/bias/
running_mean/running_var), where each tensor also carries a TensorRecord saying
which source layer it came from, what kind of layer that is, the role of the
tensor in it and the layer's position in the source graph. Layout conversion is
done once, in the reader; everything downstream sees PyTorch conventions only.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

# Layer kinds shared by all readers, so that matching can compare across frameworks.
KINDS = ("conv", "conv_transpose", "depthwise_conv", "linear", "batchnorm", "scale",
         "bias", "prelu", "embedding", "norm", "other")
# Tensor roles inside a layer.
ROLES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked", "other")


@dataclass
class TensorRecord:
    name: str                      # the tensor's name in the set (source name, normalised separators kept)
    tensor: torch.Tensor           # PyTorch layout
    layer: str = ""                # source layer (module) name
    kind: str = "other"            # one of KINDS
    role: str = "other"            # one of ROLES
    position: int = -1             # order of the layer in the source graph (-1: unknown)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"eps": 2e-5, "source_layout": "HWIO"}

    def describe(self) -> dict[str, Any]:
        t = self.tensor
        return {"name": self.name, "layer": self.layer, "kind": self.kind, "role": self.role,
                "position": self.position, "shape": list(t.shape),
                "dtype": str(t.dtype).removeprefix("torch."), "count": t.numel(),
                **({"meta": self.meta} if self.meta else {})}


class TensorSet(Mapping):
    """Ordered name -> tensor mapping with a TensorRecord per tensor.

    `format` names the reader ("caffe", "keras", ...), `source` the file read,
    `meta` holds file-level facts (framework version, semantic differences such
    as Chainer's BatchNorm eps), and `graph` the source's own graph when the file
    has one (a parsed prototxt, a Keras config, an MXNet symbol), for converters.
    """

    def __init__(self, records: list[TensorRecord] | None = None, *, format: str = "",
                 source: str = "", meta: dict[str, Any] | None = None, graph: Any = None):
        self.records: dict[str, TensorRecord] = {}
        self.format = format
        self.source = source
        self.meta = dict(meta or {})
        self.graph = graph
        for r in records or []:
            self.add(r)

    def add(self, record: TensorRecord) -> None:
        if record.name in self.records:
            raise ValueError(f"duplicate tensor name {record.name!r}")
        self.records[record.name] = record

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.records[name].tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def record(self, name: str) -> TensorRecord:
        return self.records[name]

    def layers(self) -> dict[str, list[TensorRecord]]:
        """Records grouped by source layer, in source order."""
        groups: dict[str, list[TensorRecord]] = {}
        for r in sorted(self.records.values(), key=lambda r: (r.position < 0, r.position)):
            groups.setdefault(r.layer or r.name, []).append(r)
        return groups

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: r.tensor for k, r in self.records.items()}

    def totals(self) -> dict[str, Any]:
        return {"tensors": len(self), "parameters": sum(r.tensor.numel() for r in self.records.values()),
                "bytes": sum(r.tensor.numel() * r.tensor.element_size() for r in self.records.values()),
                "layers": len(self.layers())}

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "meta": self.meta,
                "tensors": [r.describe() for r in self.records.values()], "totals": self.totals()}

    def __repr__(self) -> str:
        return f"TensorSet({self.format}, {len(self)} tensors from {self.source!r})"
