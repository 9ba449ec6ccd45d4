"""`graft evaluate`, `graft predict`, `graft export`: use a trained model."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import out, print_json, print_table


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(model: str = typer.Argument(..., help="a package, a built-in name or a spec"),
                 data: str = typer.Argument(..., help="a class folder, a .lst file or a RecordIO pack"),
                 json_: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
                 out_dir: Optional[Path] = typer.Option(None, "-o", "--out",
                                                        help="write metrics.json, confusion.png and report.html here"),
                 batch_size: int = typer.Option(64, "--batch-size", min=1),
                 trust: bool = typer.Option(False, "--trust", help="build a package whose architecture is a Python file (runs its code)"),
                 device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: best)")) -> None:
        """Top-1, top-5, per-class accuracy and confusion matrix of MODEL on DATA (classes matched by name);
        for a detector trained with `graft train --task detect`, COCO AP, AP50, AP75 and AP per class on a
        COCO/VOC/YOLO set; for a segmenter, mIoU and IoU per class on a mask folder (255 = ignore)."""
        from ..tasks.predict import is_task_model
        if is_task_model(model):
            _evaluate_task(model, data, json_, out_dir, trust)
            return
        from ..serve import evaluate as run
        if out_dir is not None:  # one pass gives the metrics and the report
            from ..report import evaluation_report
            done = evaluation_report(model, data, out_dir, batch_size=batch_size, device=device, trust=trust)
            result = json.loads((out_dir / "metrics.json").read_text())
        else:
            result = run(model, data, batch_size=batch_size, device=device, trust=trust)
        if json_:
            print_json(result)
            return
        print_table("per-class accuracy", ["class", "accuracy", "images"],
                    [(c, "-" if a is None else f"{a:.1%}", sum(row))
                     for (c, a), row in zip(result["per_class"].items(), result["confusion"])],
                    justify={"accuracy": "right", "images": "right"})
        print_table("confusion (rows: true, columns: predicted)", ["true \\ pred", *result["columns"]],
                    [(c, *row) for c, row in zip(result["classes"], result["confusion"])])
        out.print(f"top-1 {result['top1']:.2%}  top-{result['k']} {result['top5']:.2%}  on {result['n']} images", soft_wrap=True)
        if out_dir is not None:
            out.print(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'confusion.png'} and the report "
                      f"{done['files']['html']} (+ report.json, audit.json)", soft_wrap=True)

    def _evaluate_task(model: str, data: str, json_: bool, out_dir: Optional[Path], trust: bool) -> None:
        from ..atomic import atomic_open
        from ..tasks import evaluate_task
        from .common import err
        result = evaluate_task(model, data, trust=trust, log=lambda m: err.print(m, soft_wrap=True))
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_open(out_dir / "metrics.json", "w") as f:
                json.dump(result, f, indent=1)
        if json_:
            print_json(result)
            return
        if result["task"] == "detect":
            print_table("AP per class (COCO AP@[.50:.95])", ["class", "AP"],
                        [(c, "-" if v is None else f"{v:.4f}") for c, v in result["per_class"].items()],
                        justify={"AP": "right"})
            out.print(f"AP {result['ap']:.4f}  AP50 {result['ap50']:.4f}  AP75 {result['ap75']:.4f}  on "
                      f"{result['images']} images ({result.get('reduction', 'pycocotools COCOeval')})", soft_wrap=True)
        else:
            print_table("IoU per class", ["class", "IoU"],
                        [(c, "- (absent)" if v is None else f"{v:.4f}") for c, v in result["iou"].items()],
                        justify={"IoU": "right"})
            out.print(f"mIoU {result['miou']:.4f}  pixel accuracy {result['pixel_accuracy']:.2%}  on {result['images']} "
                      f"images; pixels labelled {result['ignore_index']} are ignored; {result['reduction']}",
                      soft_wrap=True)
        if out_dir is not None:
            out.print(f"wrote {out_dir / 'metrics.json'}", soft_wrap=True)

    @app.command()
    def predict(model: str = typer.Argument(..., help="a package, a built-in name or a spec"),
                inputs: List[str] = typer.Argument(..., help="image files, folders (searched recursively) or URLs"),
                top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="how many classes to show per image"),
                json_: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
                batch_size: int = typer.Option(32, "--batch-size", min=1),
                timeout: float = typer.Option(10.0, "--timeout", help="seconds allowed per URL download"),
                max_mb: float = typer.Option(20.0, "--max-mb", help="largest URL download accepted, in MiB"),
                trust: bool = typer.Option(False, "--trust", help="build a package whose architecture is a Python file (runs its code)"),
                device: Optional[str] = typer.Option(None, "--device"),
                out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="detection/segmentation models: draw "
                                                       "the boxes or masks onto PNG copies of the images here"),
                score: float = typer.Option(0.3, "--score", help="detection: smallest score shown")) -> None:
        """The top-K classes and probabilities of each image; for a detector (or segmenter) trained with
        `graft train --task`, its boxes (or class masks), as JSON/table and drawn into --out."""
        from ..tasks.predict import is_task_model
        if is_task_model(model):
            from ..tasks.predict import predict as run_task
            results = run_task(model, inputs, out_dir=out_dir, score_thresh=score, trust=trust)
            if json_:
                print_json(results)
                return
            for r in results:
                what = (f"{len(r['boxes'])} boxes: " + ", ".join(f"{b['class']} {b['score']:.2f}" for b in r["boxes"][:6])
                        if "boxes" in r else "classes: " + ", ".join(f"{k} {v:.1%}" for k, v in r["classes"].items()))
                print(f"{r['input']}: {what}" + (f" -> {r['drawn']}" if "drawn" in r else ""))
            return
        from ..serve import predict as run
        results = run(model, inputs, top_k=top_k, batch_size=batch_size, device=device, timeout=timeout,
                      max_bytes=int(max_mb * 2**20), strict=False, trust=trust)
        good = [r for r in results if "predictions" in r]
        if json_:
            print_json(results)
        else:
            rows = [(r["input"], rank + 1, p["class"], f"{p['prob']:.4f}")
                    for r in good for rank, p in enumerate(r["predictions"])]
            if rows:
                print_table(f"top-{top_k} predictions", ["input", "#", "class", "probability"], rows,
                            justify={"probability": "right"})
        failed = [r for r in results if "error" in r]
        for r in failed:
            print(f"graft: error: {r['error']}", file=sys.stderr)
        if failed:
            raise typer.Exit(2)

    @app.command()
    def export(model: str = typer.Argument(..., help="a package, a built-in name or a spec"),
               onnx: Optional[Path] = typer.Option(None, "--onnx", help="write an ONNX file here"),
               torchscript: Optional[Path] = typer.Option(None, "--torchscript", help="write a TorchScript file here"),
               opset: int = typer.Option(17, "--opset", help="ONNX opset version"),
               dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch",
                                                  help="ONNX: let the batch size vary (default), or fix it at 1"),
               json_: bool = typer.Option(False, "--json", help="print JSON"),
               trust: bool = typer.Option(False, "--trust", help="build a package whose architecture is a Python file (runs its code)"),
               probe: List[Path] = typer.Option([], "--probe", help="detection/segmentation models: check the export "
                                                "on this image (repeatable; default: random images)"),
    ) -> None:
        """Export MODEL's main output (aux heads dropped) and check it against PyTorch. A detector or
        segmenter from `graft train --task` exports to ONNX whole (FCOS/RetinaNet: post-processing included)."""
        from ..serve import export as run
        from ..tasks.predict import is_task_model
        if is_task_model(model):   # a `graft train --task` folder
            from ..serve.task_export import export_task
            from ..tasks.predict import probe_images
            probes = probe_images(model, [str(p) for p in probe]) if probe else None
            done = export_task(model, onnx=onnx, torchscript=torchscript, opset=opset, dynamic_batch=dynamic_batch,
                               trust=trust, probes=probes)
        else:
            done = run(model, onnx=onnx, torchscript=torchscript, opset=opset, dynamic_batch=dynamic_batch, trust=trust)
        if json_:
            print_json(done)
            return
        for d in done:
            how = f"opset {d['opset']}" if d["format"] == "onnx" else d["method"]
            out.print(f"wrote {d['path']} ({d['format']}, {how}); checked against PyTorch on a random "
                      f"{'x'.join(map(str, d['input_shape']))} input: max abs error {d['max_abs_err']:.2e}, "
                      f"max rel error {d['max_rel_err']:.2e}", soft_wrap=True)
            if "exported" in d:
                out.print(f"exported: {d['exported']}" + (f"; {d['detections']} detections compared"
                                                          if "detections" in d else ""), soft_wrap=True)
