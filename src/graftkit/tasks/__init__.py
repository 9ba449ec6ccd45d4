"""Task heads beyond classification: segmentation and detection on multi-scale features of any backbone.

    from graftkit import tasks
    tasks.write_scenes("scenes", train=200, val=100)            # synthetic layouts of real Fashion-MNIST items
    s = tasks.fit_task("segment", "lite0", "scenes/train", "scenes/val", out_dir="seg", time_budget=120)
    s = tasks.fit_task("detect", "lite0", "scenes/train", "scenes/val", out_dir="det", time_budget=120)
    fb = tasks.backbone("timm:resnet18", strides=(8, 16, 32))   # OrderedDict of feature maps
"""
from .backbone import FeatureBackbone, backbone
from .data import Boxes, BoxSet, Issue, MaskFolder, check_boxes, clean_boxes, read_coco, read_voc, read_yolo, write_coco
from .heads import Detector, Segmenter, transfer_report
from .metrics import ConfusionMeter, coco_map, miou_numpy
from .scenes import write_nuclei_tiles, write_scenes
from .train import build, evaluate_detector, evaluate_segmenter, evaluate_task, fit_task, load, open_boxes, task_plan

__all__ = ["FeatureBackbone", "backbone", "Boxes", "BoxSet", "Issue", "MaskFolder", "check_boxes", "clean_boxes",
           "read_coco", "read_voc", "read_yolo", "write_coco", "Detector", "Segmenter", "transfer_report",
           "ConfusionMeter", "coco_map", "miou_numpy", "write_scenes", "write_nuclei_tiles", "build",
           "evaluate_detector", "evaluate_segmenter", "evaluate_task", "fit_task", "load", "open_boxes", "task_plan"]
