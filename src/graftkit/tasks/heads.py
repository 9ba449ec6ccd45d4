"""Dense task models on a FeatureBackbone: an FPN segmenter and a torchvision FCOS detector.

Both take images as floats in [0, 1] (N,3,H,W) and normalise them with the backbone's own
preprocessing (mean/std from its package metadata), so the data pipeline is the same for any
backbone. Both keep the backbone under `backbone.` and the new layers under `head.`, which is
what the plan's patterns (`body`/`backbone`, `head`, `backbone.body.blocks.0`, ...) name.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import FeatureBackbone


def _norm_stats(fb: FeatureBackbone) -> tuple[list[float], list[float]]:
    """Mean and std for RGB images in [0, 1] that reproduce the source's preprocessing: its mean/std are in
    units of its pixel range (255 for Caffe) and in its channel order (the backbone flips BGR itself)."""
    pre = fb.source.get("preprocessing") or {}
    mean, std = pre.get("mean"), pre.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    scale = float(pre.get("pixel_range") or 1.0)
    mean, std = [float(m) / scale for m in mean], [float(s) / scale for s in std]
    if fb.bgr:
        mean, std = mean[::-1], std[::-1]
    return mean, std


class FPNSegHead(nn.Module):
    """Semantic FPN (Kirillov et al. 2019, simplified): lateral 1x1 convs, a top-down pathway, a 3x3
    conv per level, every level upsampled to the finest and summed, a 1x1 classifier."""

    def __init__(self, in_channels: list[int], num_classes: int, width: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
                                    for _ in in_channels)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        p = self.lateral[-1](feats[-1])
        outs = [self.smooth[-1](p)]
        for i in range(len(feats) - 2, -1, -1):
            p = self.lateral[i](feats[i]) + F.interpolate(p, size=feats[i].shape[-2:], mode="nearest")
            outs.insert(0, self.smooth[i](p))
        size = outs[0].shape[-2:]
        fused = outs[0]
        for o in outs[1:]:
            fused = fused + F.interpolate(o, size=size, mode="bilinear", align_corners=False)
        return self.classifier(fused)


class Segmenter(nn.Module):
    """x in [0,1] -> class logits (N, K, H, W) at the input's size."""
    task = "segment"

    def __init__(self, fb: FeatureBackbone, num_classes: int, width: int = 64):
        super().__init__()
        self.backbone = fb
        self.head = FPNSegHead(fb.out_channels_list, num_classes, width)
        mean, std = _norm_stats(fb)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:   # what tune.find_head names: the new layers
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone((x - self.mean) / self.std).values())
        logits = self.head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _FPNBody(nn.Module):
    """FeatureBackbone (its coarsest three levels) + torchvision's FeaturePyramidNetwork with P6/P7."""

    def __init__(self, fb: FeatureBackbone, width: int, levels: int = 3):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
        self.fb = fb
        self.keep = [str(s) for s in fb.strides[-levels:]]
        chans = fb.out_channels_list[-levels:]
        self.fpn = FeaturePyramidNetwork(chans, width, extra_blocks=LastLevelP6P7(width, width))
        self.out_channels = width

    def forward(self, x):
        feats = self.fb(x)
        return self.fpn(OrderedDict((k, feats[k]) for k in self.keep))


class Detector(nn.Module):
    """torchvision FCOS on an FPN over the backbone's features.

    train: forward(images, targets) -> {loss_name: loss}; eval: forward(images) -> [{boxes, scores, labels}].
    Labels are 0..K-1 (FCOS's sigmoid classifier has no background class, so class 0 is a real class)."""
    task = "detect"

    def __init__(self, fb: FeatureBackbone, num_classes: int, image_size: int = 128, width: int = 64,
                 score_thresh: float = 0.05, detections: int = 100):
        super().__init__()
        from torchvision.models.detection import FCOS
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        mean, std = _norm_stats(fb)
        body = _FPNBody(fb, width)
        top = fb.strides[-3:]
        sizes = tuple((s,) for s in [*top, top[-1] * 2, top[-1] * 4])  # FCOS reads each level's "anchor" size as its stride
        self.model = FCOS(body, num_classes, min_size=image_size, max_size=image_size, image_mean=mean,
                          image_std=std, anchor_generator=AnchorGenerator(sizes, ((1.0,),) * 5),
                          score_thresh=score_thresh, detections_per_img=detections, topk_candidates=200)
        self.num_classes = num_classes
        self.image_size = image_size

    @property
    def backbone(self) -> FeatureBackbone:
        return self.model.backbone.fb

    def get_classifier(self) -> nn.Module:
        return self.model.head

    def forward(self, images, targets=None):
        return self.model(images, targets)


def transfer_report(model: nn.Module) -> dict[str, Any]:
    """What of a task model came from where: every backbone tensor's origin, and the new layers."""
    fb: FeatureBackbone = model.backbone
    prefix = next(n for n, m in model.named_modules() if m is fb) + ".body."
    rows = []
    new = []
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            inner = name[len(prefix):]
            rows.append({"tensor": name, "from": inner, "origin": fb.source_origins.get(inner, "?"),
                         "shape": list(p.shape)})
        else:
            new.append({"tensor": name, "shape": list(p.shape), "origin": "new (random init)"})
    src = dict(fb.source)
    return {"task": getattr(model, "task", None), "backbone": src, "strides": fb.strides,
            "channels": fb.out_channels_list,
            "summary": {"backbone_tensors": len(rows), "new_tensors": len(new),
                        "backbone_parameters": sum(int(torch.Size(r["shape"]).numel()) for r in rows),
                        "new_parameters": sum(int(torch.Size(r["shape"]).numel()) for r in new),
                        "source_tensors_dropped": len(src.get("dropped_tensors") or [])},
            "tensors": rows, "new": new}
