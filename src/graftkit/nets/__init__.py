"""Runnable torch modules: foreign graphs converted (caffe, keras, mxnet, onnx) and model specs resolved."""
