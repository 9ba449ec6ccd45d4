"""Export a model's main output to ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes the preprocessed NCHW float tensor and returns the class
scores (logits); auxiliary heads are dropped (model in eval mode, main output only).
Class names and preprocessing travel inside the file (ONNX metadata_props /
TorchScript extra file "graftkit.json"). A file that fails its check is never written.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_path
from ..errors import GraftError
from ..meta import meta_of
from .inference import MainOutput, input_shape_of

DEFAULT_OPSET = 17
RTOL = 1e-3   # of max|reference|: float32 kernels of two runtimes differ by ~1e-6 relative
ATOL = 1e-5


def _serving_meta(model: nn.Module) -> str:
    meta = meta_of(model)
    return json.dumps({"classes": meta.get("classes"), "preprocessing": meta.get("preprocessing"),
                       "spec": meta.get("spec"), "provenance": meta.get("provenance"),
                       "input": "NCHW float32, preprocessed as 'preprocessing' says", "output": "logits"})


def _sample(shape: tuple[int, int, int], batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def compare(ours: torch.Tensor, reference: torch.Tensor, what: str) -> dict[str, float]:
    """Max abs and rel error of `ours` against PyTorch's `reference`; GraftError when they disagree."""
    ours, reference = torch.as_tensor(ours).double(), reference.detach().double()
    if ours.shape != reference.shape:
        raise GraftError(f"the {what} returns shape {tuple(ours.shape)} where PyTorch gives {tuple(reference.shape)}")
    scale = float(reference.abs().max()) or 1.0
    max_abs = float((ours - reference).abs().max())
    check = {"max_abs_err": max_abs, "max_rel_err": max_abs / scale}
    if not max_abs <= ATOL + RTOL * scale:
        raise GraftError(f"the {what} disagrees with PyTorch (max abs error {max_abs:.3g}, "
                         f"relative {max_abs / scale:.3g}); nothing was written",
                         "try another --opset, or --torchscript")
    return check


def _resolve(model: nn.Module | str | os.PathLike, trust: bool = False) -> nn.Module:
    from ..models import resolve
    return resolve(model, trust=trust).cpu().eval()


def export_onnx(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, input_shape: tuple[int, int, int] | None = None,
                trust: bool = False) -> dict[str, Any]:
    """Write `model` as ONNX at `path` once onnxruntime reproduces PyTorch on random inputs (batches of 1 and 3
    when the batch is dynamic, the default: a served model rarely sees one fixed batch size)."""
    import onnx
    import onnxruntime as ort
    model = _resolve(model, trust)
    net = MainOutput(model).eval()
    shape = tuple(input_shape or input_shape_of(model))
    example = _sample(shape, 2 if dynamic_batch else 1, seed=0)
    # batch sizes other than the example's prove the batch is dynamic; 1 is what a single request sends
    probes = [_sample(shape, n, seed=1 + n) for n in ((1, 3) if dynamic_batch else (1,))]
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                # The TorchScript-based exporter: it needs no onnxscript and handles every timm classifier.
                torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["logits"], dynamic_axes=axes,
                                  do_constant_folding=True)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GraftError(f"ONNX export at opset {opset} failed: {first}",
                             "try another --opset, or --torchscript") from None
        proto = onnx.load(str(tmp))
        proto.doc_string = "exported by graftkit"
        entry = proto.metadata_props.add()
        entry.key, entry.value = "graftkit", _serving_meta(model)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        checks = []
        for probe in probes:
            (got,) = session.run(["logits"], {"input": probe.numpy()})
            with torch.inference_mode():
                checks.append(compare(torch.from_numpy(got), net(probe), "ONNX model (onnxruntime)"))
    check = {k: max(c[k] for c in checks) for k in checks[0]}
    return {"path": str(path), "format": "onnx", "opset": opset, "input_shape": [probes[-1].shape[0], *shape],
            "dynamic_batch": dynamic_batch, "checked_batches": [p.shape[0] for p in probes], **check}


def export_torchscript(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                       input_shape: tuple[int, int, int] | None = None, trust: bool = False) -> dict[str, Any]:
    """Write `model` as TorchScript (traced; scripted when tracing fails) once it reproduces PyTorch."""
    model = _resolve(model, trust)
    net = MainOutput(model).eval()
    shape = tuple(input_shape or input_shape_of(model))
    example, probe = _sample(shape, 2, seed=0), _sample(shape, 3, seed=1)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                compiled, method = torch.jit.trace(net, example, check_trace=False), "trace"
        except Exception as trace_error:  # noqa: BLE001 - some models only script; report both failures
            try:
                compiled, method = torch.jit.script(net), "script"
            except Exception as e:  # noqa: BLE001
                raise GraftError(f"TorchScript export failed: tracing said {str(trace_error).splitlines()[0]!r}, "
                                 f"scripting said {str(e).splitlines()[0]!r}", "try --onnx") from None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet still what C++ serving loads
        torch.jit.save(compiled, str(tmp), _extra_files={"graftkit.json": _serving_meta(model)})
        reloaded = torch.jit.load(str(tmp))
        with torch.no_grad():
            check = compare(reloaded(probe), net(probe), "TorchScript model")
    return {"path": str(path), "format": "torchscript", "method": method, "input_shape": [probe.shape[0], *shape],
            **check}


def export(model: nn.Module | str | os.PathLike, *, onnx: str | os.PathLike | None = None,
           torchscript: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET,
           dynamic_batch: bool = True, trust: bool = False) -> list[dict[str, Any]]:
    """Export to every target given; each result holds the path and the measured error against PyTorch."""
    if onnx is None and torchscript is None:
        raise GraftError("nothing to export", "give --onnx OUT.onnx and/or --torchscript OUT.pt")
    model = _resolve(model, trust)
    done = []
    if onnx is not None:
        done.append(export_onnx(model, onnx, opset=opset, dynamic_batch=dynamic_batch))
    if torchscript is not None:
        done.append(export_torchscript(model, torchscript))
    return done
