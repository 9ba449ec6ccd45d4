"""Use a trained model: evaluate it on labelled data, predict images, export it."""
from .evaluate import evaluate
from .export import export, export_onnx, export_torchscript
from .predict import predict

__all__ = ["evaluate", "predict", "export", "export_onnx", "export_torchscript"]
