"""Image data in: lists, checks, splits, RecordIO packs, statistics, loaders and the demo set.

The pieces (one idea per module):
    lists       im2rec `.lst` read/write, class map `NAME.classes.json`
    index       folder / CSV -> list (im2rec-compatible `make_lists`)
    check       what is wrong with a data set (`check`), and a clean list (`--fix`)
    split       stratified train/val/test split, duplicates never straddle splits
    recordio    MXNet RecordIO reader/writer and the image record header
    pack        list -> RecordIO shards, in parallel, bad images skipped with reasons
    stats       per-channel mean/std, Caffe mean .binaryproto
    decode      bytes -> uint8 pixels (JPEG DCT downscaling, EXIF, mode conversions)
    augment     augmentations by name from a YAML-friendly spec
    transforms  train/eval pipelines from a package's preprocessing dict
    dataset     ImageDataset over folders, lists, packs and arrays
    sampling    class-balanced (label shuffling) and weighted samplers
    seeding     per-sample randomness from (seed, epoch, index)
    demo_set    the shipped Fashion-MNIST subset and the full set from Debian's package
"""
from .augment import parse_spec as parse_augment
from .check import CheckReport, check, fix as fix_list
from .dataset import ImageDataset, find_shards
from .decode import DecodeError, decode
from .demo_set import (FASHION_MNIST_CLASSES, demo_arrays, fashion_mnist_subset, load_fashion_mnist,
                       write_demo_set)
from .index import index, make_lists
from .lists import Entry, ImageList, load_classes, open_list, read_lst, save_classes, write_lst
from .pack import PackOptions, PackReport, pack
from .pack_info import inspect_records
from .sampling import ClassBalancedSampler, WeightedSampler
from .split import split_entries, split_list
from .stats import compute_stats, write_mean_binaryproto
from .transforms import Normalize, Pipeline, eval_pipeline, pipelines, train_pipeline


def open_dataset(source, transform=None, **kwargs) -> ImageDataset:
    """ImageDataset.open: a folder, .lst, .csv, RecordIO pack or list of shards."""
    return ImageDataset.open(source, transform, **kwargs)


__all__ = ["ImageDataset", "open_dataset", "find_shards", "DecodeError", "decode", "FASHION_MNIST_CLASSES",
           "demo_arrays", "fashion_mnist_subset", "load_fashion_mnist", "write_demo_set", "index", "make_lists",
           "Entry", "ImageList", "load_classes", "open_list", "read_lst", "save_classes", "write_lst", "Normalize",
           "Pipeline", "eval_pipeline", "pipelines", "train_pipeline", "parse_augment", "CheckReport", "check",
           "fix_list", "PackOptions", "PackReport", "pack", "inspect_records", "ClassBalancedSampler",
           "WeightedSampler", "split_entries", "split_list", "compute_stats", "write_mean_binaryproto"]
