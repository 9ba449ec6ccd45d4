"""Grad-CAM (Selvaraju et al., ICCV 2017): where in the image the evidence for a class lies.

The layer is the network's last convolutional stage, found the same way the feature cache
finds stage ends (timm's feature_info; for torchvision and converted Caffe/Keras/MXNet/ONNX
networks, the last top-level layer at each spatial resolution), so it needs no per-family code.
For a probe package the stage is taken in its base network, at or before the probe's depth.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GraftError


def cam_layer(model: nn.Module, input_size: Sequence[int]) -> str:
    """The module name of the last stage whose output is a feature map with more than one position."""
    from ..advise.features import output_shapes, stage_ends
    from ..nets.probe import ProbeNet
    base, prefix = (model.base, ProbeNet.PREFIX) if isinstance(model, ProbeNet) else (model, "")
    names = [prefix + n for n in stage_ends(base, input_size)]
    seen = output_shapes(model, names, input_size)
    maps = [n for n in names if n in seen and len(seen[n]) == 4 and seen[n][2] * seen[n][3] > 1]
    if not maps:
        raise GraftError("the network has no feature map to explain (no layer with a spatial output)",
                         "Grad-CAM needs a convolutional network")
    return maps[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Heat maps [N, H, W] in [0, 1] for output `targets[n]` of each preprocessed image x[n]."""
    from ..serve.inference import MainOutput
    layer = layer or cam_layer(model, tuple(x.shape[1:]))
    taken: list[torch.Tensor] = []
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: taken.append(out))
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # a graph exists even when every weight is frozen
            out = MainOutput(model, calibrated=False).eval()(x)
            act = taken[-1]
            grads, = torch.autograd.grad(out.gather(1, targets[:, None].long()).sum(), act)
    finally:
        hook.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).max(1).values.clamp_min(1e-12)
    return cam / top[:, None, None]
