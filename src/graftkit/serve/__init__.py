"""Use a trained model: evaluate it on labelled data, predict images, export it; and the end-to-end demo."""
from .evaluate import evaluate
from .export import export, export_onnx, export_torchscript
from .demo import run_demo
from .predict import predict

__all__ = ["evaluate", "predict", "export", "export_onnx", "export_torchscript", "run_demo"]
