"""`graft convert MODEL_FILES... -o OUT.safetensors`: a foreign network as a graftkit package."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import err, human_count, print_json, print_table


def register(app: typer.Typer) -> None:
    @app.command()
    def convert(
        files: List[Path] = typer.Argument(..., help="the network's files: deploy.prototxt [weights.caffemodel] "
                                                     "[mean.binaryproto], model.keras / .h5, NAME-symbol.json "
                                                     "[NAME-0000.params], or model.onnx"),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="the package to write (.safetensors)"),
        phase: Optional[str] = typer.Option(None, "--phase", help="Caffe: which layers to keep, train or test "
                                                                  "(default test)"),
        input_shape: List[str] = typer.Option([], "--input-shape",
                                              help="Caffe: an input's shape when the prototxt lacks it; ONNX: "
                                                   "the shape to check a dynamic input with against "
                                                   "onnxruntime; NAME=N,C,H,W (repeatable)"),
        json_: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ) -> None:
        """Convert a Caffe, Keras, MXNet or ONNX network into a runnable PyTorch module, saved as a package."""
        from ..errors import GraftError
        from ..nets.convert import convert as do_convert, summarize
        from ..package import save

        if output is None:
            raise GraftError("no output file given", "add -o OUT.safetensors")
        if output.is_dir():
            raise GraftError(f"{output}: is a folder", "name the .safetensors file to write")
        kwargs = {}
        if phase is not None:
            if phase.lower() not in ("train", "test"):
                raise GraftError(f"--phase {phase!r} is not train or test")
            kwargs["phase"] = phase.upper()
        shapes = {}
        for item in input_shape:
            name, _, dims = item.partition("=")
            try:
                shapes[name.strip()] = [int(d) for d in dims.split(",")]
            except ValueError:
                raise GraftError(f"--input-shape {item!r} is not NAME=N,C,H,W", "e.g. --input-shape data=1,3,224,224") \
                    from None
            if not name.strip() or min(shapes[name.strip()], default=0) < 1:
                raise GraftError(f"--input-shape {item!r} is not NAME=N,C,H,W", "e.g. --input-shape data=1,3,224,224")
        if shapes:
            kwargs["input_shapes"] = shapes
        module = do_convert(files, **kwargs)
        save(module, output)
        s = summarize(module)
        s["output"] = str(output)
        left = (s.get("report") or {}).get("initialised") or []
        if left and len(s.get("sources") or []) > 1:
            err.print(f"warning: no weights for {len(left)} layer(s), left at initialisation: {', '.join(left[:8])}"
                      f"{' ...' if len(left) > 8 else ''}")
        prov = (getattr(module, "graftkit_meta", None) or {}).get("provenance") or {}
        if prov.get("onnxruntime_not_checked"):  # say it: a conversion nobody checked must not look checked
            err.print(f"warning: not checked against onnxruntime: {prov['onnxruntime_not_checked']}",
                      soft_wrap=True, highlight=False)
        elif "onnxruntime_max_rel_err" in prov:
            shapes = "; ".join(f"{k} {v}" for k, v in (prov.get("onnxruntime_checked_shapes") or {}).items())
            err.print(f"checked against onnxruntime on {shapes} ({prov.get('onnxruntime_checked_how')}): "
                      f"max relative error {prov['onnxruntime_max_rel_err']:.1e}", soft_wrap=True, highlight=False)
        if prov.get("quantized_activations"):  # a fully integer file: say what the module computes instead
            err.print(f"note: {prov['quantized_activations']}", soft_wrap=True, highlight=False)
        if json_:
            print_json(s)
            return
        print_table(f"{', '.join(f.name for f in files)} -> {output}", ["", ""], [
            ("converter", s["converter"]),
            ("layers", s["layers"]),
            ("parameters", f"{human_count(s['parameters'])} in {s['tensors']} tensors"),
            ("inputs", ", ".join(f"{i['name']} {i['shape'] or ''}".strip() for i in s["inputs"])),
            ("outputs", ", ".join(s["outputs"])),
            *([("train outputs", ", ".join(s["train_outputs"]))] if s["train_outputs"] != s["outputs"] else []),
            ("preprocessing", _describe(s["preprocessing"])),
        ])
        err.print(f"wrote {output}")


def _describe(pre: dict | None) -> str:
    if not pre:
        return "none recorded"
    parts = [f"{k}={v}" for k, v in pre.items() if k != "notes" and v is not None]
    return "; ".join(parts + list(pre.get("notes") or []))

