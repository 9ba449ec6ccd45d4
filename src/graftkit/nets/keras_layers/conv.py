"""Keras convolutions: Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LAYERS, Layer, _tuple, same_pad


class Conv(nn.Module):
    """Conv1D/Conv2D/DepthwiseConv2D (groups) with Keras padding and the fused activation."""

    def __init__(self, nd, cin, cout, kernel, strides, padding, dilation, groups, bias, act):
        super().__init__()
        self.nd, self.kernel, self.strides, self.padding, self.dilation, self.groups = \
            nd, kernel, strides, padding, dilation, groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, *kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.act = act

    def forward(self, x):
        if self.padding == "same":
            x = same_pad(x, self.kernel, self.strides, self.dilation)
        elif self.padding == "causal":
            x = F.pad(x, [(self.kernel[0] - 1) * self.dilation[0], 0])
        conv = F.conv1d if self.nd == 1 else F.conv2d
        return self.act(conv(x, self.weight, self.bias, self.strides, 0, self.dilation, self.groups))

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return (f"{i * self.groups}->{o}, kernel={self.kernel}, strides={self.strides}, padding={self.padding}"
                + (f", dilation={self.dilation}" if any(d != 1 for d in self.dilation) else "")
                + (f", groups={self.groups}" if self.groups != 1 else ""))


class Separable(nn.Module):
    """SeparableConv2D: depthwise (no bias) then pointwise 1x1 (with the bias), then the activation."""

    def __init__(self, cin, mult, cout, kernel, strides, padding, dilation, bias, act):
        super().__init__()
        ident = lambda x: x  # noqa: E731
        self.depthwise = Conv(2, cin, cin * mult, kernel, strides, padding, dilation, cin, False, ident)
        self.pointwise = Conv(2, cin * mult, cout, (1, 1), (1, 1), "valid", (1, 1), 1, bias, ident)
        self.act = act

    def forward(self, x):
        return self.act(self.pointwise(self.depthwise(x)))


class ConvTranspose(nn.Module):
    """Conv2DTranspose: the full transposed convolution, then cropped/zero-filled to Keras's output size."""

    def __init__(self, cin, cout, kernel, strides, padding, dilation, bias, act):
        super().__init__()
        self.kernel, self.strides, self.padding, self.dilation = kernel, strides, padding, dilation
        self.weight = nn.Parameter(torch.empty(cin, cout, *kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.act = act

    def forward(self, x):
        y = F.conv_transpose2d(x, self.weight, None, self.strides, 0, 0, 1, self.dilation)
        for i in range(2):
            n, s = x.shape[2 + i], self.strides[i]
            eff = (self.kernel[i] - 1) * self.dilation[i] + 1
            if self.padding == "same":
                want, before = n * s, max(eff - s, 0) // 2
            else:
                want, before = n * s + max(eff - s, 0), 0
            y = y.narrow(2 + i, before, min(want, y.shape[2 + i] - before))
            if y.shape[2 + i] < want:
                pad = [0, 0] * (1 - i) + [0, want - y.shape[2 + i]]
                y = F.pad(y, pad)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return self.act(y)


def _conv_len(n, k, s, d, padding):
    if n is None:
        return None
    eff = (k - 1) * d + 1
    if padding == "same":
        return math.ceil(n / s)
    if padding == "causal":
        return math.ceil(n / s)
    return (n - eff) // s + 1


@LAYERS.register("Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")
def convolution(layer: Layer):
    cls, cfg, shape, act = layer.cls, layer.cfg, layer.shape, layer.act
    nd = 1 if cls == "Conv1D" else 2
    k = _tuple(cfg["kernel_size"], nd)
    s = _tuple(cfg.get("strides", 1), nd)
    d = _tuple(cfg.get("dilation_rate", 1), nd)
    padding = cfg.get("padding", "valid").lower()
    cin = shape[-1]
    bias = cfg.get("use_bias", True)
    if cls == "Conv2DTranspose":
        if cfg.get("output_padding") is not None:
            raise layer.refuse(f"output_padding={cfg['output_padding']}", "re-save the layer without output_padding")
        mod = ConvTranspose(cin, cfg["filters"], k, s, padding, d, bias, act)
        spatial = []
        for i in range(2):
            n, eff = shape[1 + i], (k[i] - 1) * d[i] + 1
            spatial.append(None if n is None else n * s[i] + (max(eff - s[i], 0) if padding == "valid" else 0))
        return mod, (shape[0], *spatial, cfg["filters"])
    if cls == "DepthwiseConv2D":
        mult = cfg.get("depth_multiplier", 1)
        mod, cout = Conv(2, cin, cin * mult, k, s, padding, d, cin, bias, act), cin * mult
    elif cls == "SeparableConv2D":
        mult = cfg.get("depth_multiplier", 1)
        mod, cout = Separable(cin, mult, cfg["filters"], k, s, padding, d, bias, act), cfg["filters"]
    else:
        mod, cout = Conv(nd, cin, cfg["filters"], k, s, padding, d, cfg.get("groups", 1), bias, act), \
            cfg["filters"]
    spatial = [_conv_len(shape[1 + i], k[i], s[i], d[i], padding) for i in range(nd)]
    return mod, (shape[0], *spatial, cout)
