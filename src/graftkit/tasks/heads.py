"""Dense task models on a FeatureBackbone: segmenters (FPN, DeepLabV3-style ASPP) and torchvision detectors
(FCOS, RetinaNet, Faster R-CNN), chosen by name through `make` (SEG_HEADS / DET_HEADS).

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

from ..errors import GraftError
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


class ASPP(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling: a 1x1 branch, one dilated 3x3 branch per rate and an
    image-pooling branch, concatenated and projected. Not torchvision's ASPP: its pooling branch puts a
    BatchNorm on a 1x1 map, which fails on a training batch of one image."""

    def __init__(self, in_channels: int, width: int, rates: tuple[int, ...]):
        super().__init__()

        def cbr(k: int, d: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, width, k, padding=d * (k // 2), dilation=d, bias=False),
                                 nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList([cbr(1)] + [cbr(3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(width * (len(rates) + 2), width, 1, bias=False),
                                     nn.BatchNorm2d(width), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, 1))


class DeepLabSegHead(nn.Module):
    """DeepLabV3 (ASPP on the coarsest features) with the DeepLabV3+ upsampling decoder: the ASPP output is
    upsampled to the finest level, concatenated with a 1x1 projection of it, refined by two 3x3 convs and
    classified. The atrous rates (1, 2, 3) suit the 4x4 map a 128-px image gives at stride 32; the paper's
    (6, 12, 18) assume a 33x33 map and would read mostly padding here."""

    def __init__(self, in_channels: list[int], num_classes: int, width: int = 64, rates: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        self.aspp = ASPP(in_channels[-1], width, rates)
        low = max(16, width // 4)
        self.low = nn.Sequential(nn.Conv2d(in_channels[0], low, 1, bias=False), nn.BatchNorm2d(low), nn.ReLU(inplace=True))
        self.decode = nn.Sequential(nn.Conv2d(width + low, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        a = F.interpolate(self.aspp(feats[-1]), size=feats[0].shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decode(torch.cat([a, self.low(feats[0])], 1)))


SEG_HEADS = {"fpn": FPNSegHead, "deeplabv3": DeepLabSegHead}
DET_HEADS = ("fcos", "retinanet", "fasterrcnn")
DEFAULT_HEAD = {"segment": "fpn", "detect": "fcos"}


class Segmenter(nn.Module):
    """x in [0,1] -> class logits (N, K, H, W) at the input's size."""
    task = "segment"

    def __init__(self, fb: FeatureBackbone, num_classes: int, width: int = 64, head: str = "fpn"):
        super().__init__()
        self.backbone = fb
        self.head = SEG_HEADS[head](fb.out_channels_list, num_classes, width)
        self.head_name = head
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
    """A torchvision detector (FCOS, RetinaNet or Faster R-CNN) on an FPN over the backbone's features.

    train: forward(images, targets) -> {loss_name: loss}; eval: forward(images) -> [{boxes, scores, labels}].
    Labels are 0..K-1 for every head: FCOS's and RetinaNet's sigmoid classifiers have no background class,
    and Faster R-CNN's softmax one (class 0 = background) sees them shifted by one, in here only.

    Small-CPU defaults: the FPN levels are the backbone's three coarsest plus P6/P7 (strides 8..128 for
    lite0); RetinaNet's and the RPN's anchors are 2x the level's stride (16..256 px, 3 ratios; RetinaNet also
    3 scales per octave), which covers the 10-64 px objects of a 128-px image, where torchvision's COCO
    defaults (32..512 px for 800-px images) would leave the small ones unmatched. Faster R-CNN keeps 300/100
    proposals (train/test) instead of 2000/1000, samples 128 RoIs per image, and has a 256-wide box head."""
    task = "detect"

    def __init__(self, fb: FeatureBackbone, num_classes: int, image_size: int = 128, width: int = 64,
                 score_thresh: float = 0.05, detections: int = 100, head: str = "fcos"):
        super().__init__()
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        mean, std = _norm_stats(fb)
        body = _FPNBody(fb, width)
        top = fb.strides[-3:]
        strides = [*top, top[-1] * 2, top[-1] * 4]
        common = dict(min_size=image_size, max_size=image_size, image_mean=mean, image_std=std)
        self.shift = 0
        if head == "fcos":
            from torchvision.models.detection import FCOS
            sizes = tuple((s,) for s in strides)   # FCOS reads each level's "anchor" size as its stride
            self.model = FCOS(body, num_classes, anchor_generator=AnchorGenerator(sizes, ((1.0,),) * 5),
                              score_thresh=score_thresh, detections_per_img=detections, topk_candidates=200, **common)
        elif head == "retinanet":
            from torchvision.models.detection import RetinaNet
            sizes = tuple(tuple(int(round(2 * s * 2 ** (k / 3))) for k in range(3)) for s in strides)
            self.model = RetinaNet(body, num_classes, anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5),
                                   score_thresh=score_thresh, detections_per_img=detections, topk_candidates=200,
                                   **common)
        elif head == "fasterrcnn":
            from torchvision.models.detection import FasterRCNN
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
            from torchvision.ops import MultiScaleRoIAlign
            sizes = tuple((2 * s,) for s in strides)
            levels = [str(s) for s in top]           # RoIs are pooled from the backbone's levels, not P6/P7
            self.model = FasterRCNN(
                body, None, rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5),
                rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=100,
                rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=128, box_batch_size_per_image=128,
                box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
                box_head=TwoMLPHead(width * 49, 256), box_predictor=FastRCNNPredictor(256, num_classes + 1),
                box_score_thresh=score_thresh, box_detections_per_img=detections, **common)
            self.shift = 1                           # class 0 is Faster R-CNN's background
        else:
            raise GraftError(f"detection head {head!r} is not known", f"use one of {', '.join(DET_HEADS)}")
        self.head_name = head
        self.num_classes = num_classes
        self.image_size = image_size

    @property
    def backbone(self) -> FeatureBackbone:
        return self.model.backbone.fb

    def get_classifier(self) -> nn.Module:
        return self.model.roi_heads if self.shift else self.model.head

    @property
    def new_heads(self) -> list[str]:
        """Module names of the new layers (the plan's `head`)."""
        return ["model.backbone.fpn"] + (["model.rpn", "model.roi_heads"] if self.shift else ["model.head"])

    def forward(self, images, targets=None):
        if self.shift and targets is not None:
            targets = [dict(t, labels=t["labels"] + self.shift) for t in targets]
        out = self.model(images, targets)
        if self.shift and not self.training:
            out = [dict(d, labels=d["labels"] - self.shift) for d in out]
        return out


def make(task: str, fb: FeatureBackbone, num_classes: int, head: str | None = None, *, size: int = 128,
         width: int = 64) -> nn.Module:
    """The task model with the named head ("fpn"/"deeplabv3" for segment, "fcos"/"retinanet"/"fasterrcnn" for
    detect; None: the task's default) on `fb`; its `new_heads` names the new layers for the plan."""
    head = head or DEFAULT_HEAD[task]
    if task == "segment":
        if head not in SEG_HEADS:
            raise GraftError(f"segmentation head {head!r} is not known", f"use --head {' or '.join(SEG_HEADS)}")
        net = Segmenter(fb, num_classes, width, head)
        net.new_heads = ["head"]
        return net
    if head not in DET_HEADS:
        raise GraftError(f"detection head {head!r} is not known", f"use --head {' or '.join(DET_HEADS)}")
    if len(fb.strides) < 3:
        raise GraftError("a detector needs 3 feature levels", "use strides such as 8,16,32")
    return Detector(fb, num_classes, image_size=size, width=width, head=head)


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
