"""The loader: decoding, pipelines from preprocessing dicts, augmentations, determinism, samplers, split, stats."""
from __future__ import annotations

import io
import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from conftest import fixture, run_graft
from graftkit.data import ImageDataset, demo_arrays, eval_pipeline, make_lists, train_pipeline, write_demo_set
from graftkit.data import augment as aug
from graftkit.data.decode import decode, decode_tensor
from graftkit.data.lists import Entry, ImageList, read_lst
from graftkit.data.sampling import ClassBalancedSampler, WeightedSampler
from graftkit.data.split import split_entries, split_list
from graftkit.data.stats import compute_stats, write_mean_binaryproto
from graftkit.data.transforms import Normalize, complete
from graftkit.errors import GraftError
from graftkit.meta import imagenet_preprocessing


def _jpeg(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _photo(h=480, w=640, seed=0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1) + rng.integers(0, 20, (h, w, 3))
    return a.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- decoding
def test_jpeg_dct_downscaling_and_exif_rotation():
    big = _jpeg(_photo())
    assert decode(big).shape == (480, 640, 3)
    small = decode(big, min_side=100)  # 1/4 scale keeps the shorter side >= 100
    assert small.shape == (120, 160, 3)
    ref = np.asarray(Image.fromarray(decode(big)).resize((160, 120), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(small - ref).mean() < 6  # the same picture, just decoded smaller
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = _jpeg(_photo(40, 64), exif=exif.tobytes())
    assert decode(rotated).shape == (64, 40, 3)
    for orientation in range(1, 9):  # torchvision's decoder (fast path) and Pillow rotate the same way
        exif[0x0112] = orientation
        b = _jpeg(_photo(20, 32), exif=exif.tobytes())
        assert torch.equal(decode_tensor(b), torch.from_numpy(decode(b).copy()).permute(2, 0, 1)), orientation
    # the torchvision fast path and Pillow agree on a plain JPEG
    plain = _jpeg(_photo(50, 70))
    assert torch.equal(decode_tensor(plain), torch.from_numpy(decode(plain).copy()).permute(2, 0, 1))


def test_mode_conversions():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    a = decode(buf.getvalue())
    assert a[0, 0].tolist() == [255, 0, 0] and a[7, 7].tolist() == [255, 255, 255]  # composited on white
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(buf, "PNG")  # 16-bit gray
    assert decode(buf.getvalue()).shape == (4, 4, 3) and decode(buf.getvalue(), mode="L")[0, 0, 0] == 40000 >> 8
    cmyk = io.BytesIO()
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(cmyk, "JPEG")
    r, g, b = decode(cmyk.getvalue())[3, 3].tolist()
    assert r > 200 and g < 60 and b < 60


# ---------------------------------------------------------------- pipelines
def test_eval_pipeline_matches_torchvision_reference():
    pre = imagenet_preprocessing(224)
    img = torch.from_numpy(_photo(300, 400)).permute(2, 0, 1)
    ours = eval_pipeline(pre)(img)
    ref = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize(pre["mean"], pre["std"])])(img.contiguous())
    assert ours.dtype == torch.float32 and ours.shape == (3, 224, 224)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_normalize_caffe_style_bgr_and_gray():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 4, 4)
    caffe = {"input_size": [3, 4, 4], "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0], "pixel_range": 255,
             "channel_order": "BGR"}
    out = Normalize(caffe)(x)
    expect = x.flip(1).float() - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    assert torch.allclose(out, expect)
    gray = complete({"input_size": [1, 28, 28], "mean": 0.5, "std": 0.5})
    assert gray["mean"] == [0.5] and gray["resize"] == 32
    p = eval_pipeline(gray)
    assert p.channels == 1
    with pytest.raises(GraftError, match="std contains 0"):
        complete({"std": [0, 1, 1]})


def test_every_augmentation_runs_on_uint8_and_is_seeded():
    img = torch.from_numpy(_photo(64, 80)).permute(2, 0, 1)
    spec = [{"random_resized_crop": {"scale": [0.3, 1.0]}}, "hflip", "vflip", {"rotation": {"degrees": 10}},
            {"affine": {"degrees": 5, "translate": [0.1, 0.1]}}, {"color_jitter": {"brightness": 0.3, "contrast": 0.3,
                                                                                   "saturation": 0.3}},
            "pca_lighting", {"gaussian_noise": {"std": 0.02}}, {"blur": {"kernel_size": 3}}, "grayscale",
            {"random_resize": {"min_size": 40, "max_size": 60}}, {"random_crop": {"size": 32}}, "random_erasing"]
    p = train_pipeline({"input_size": [3, 32, 32]}, augment=spec, normalize=False)
    assert p.uses_torch_rng  # the v2 colour/geometry ops draw from torch's RNG
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(p(img, random.Random(7)))
    assert outs[0].dtype == torch.uint8 and outs[0].shape == (3, 32, 32) and torch.equal(*outs)
    with pytest.raises(GraftError, match="unknown augmentation 'sharpen'"):
        train_pipeline(augment=["sharpen"])
    with pytest.raises(GraftError, match="bad parameters"):
        train_pipeline(augment=[{"hflip": {"prob": 1}}])


def test_random_erasing_fills_one_rectangle_of_the_asked_area():
    img = torch.full((3, 40, 50), 7, dtype=torch.uint8)
    erase = aug.RandomErasing(p=1.0, scale=(0.1, 0.2), ratio=(0.5, 2.0))
    rng = random.Random(3)
    for _ in range(200):
        out = erase(img, rng)
        changed = (out != img).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert changed.sum() > 0.9 * box  # one solid rectangle (a few random pixels may equal 7)
        assert 0.09 * 2000 <= box <= 0.21 * 2000 + 50  # its area, up to rounding of the sides
    assert torch.equal(aug.RandomErasing(p=0.0)(img, rng), img)
    with pytest.raises(GraftError, match="bad parameters"):
        train_pipeline(augment=[{"random_erasing": {"scale": [0.5, 0.1]}}])


def test_random_resized_crop_follows_torchvision_rule():
    rrc = aug.RandomResizedCrop(224, scale=(0.08, 1.0))
    rng = random.Random(0)
    fracs = []
    for _ in range(2000):
        i, j, h, w = rrc.params(375, 500, rng)
        assert 0 <= i <= 375 - h and 0 <= j <= 500 - w
        fracs.append(h * w / (375 * 500))
        assert 3 / 4 * 0.9 < w / h < 4 / 3 * 1.1 or (h, w) == (375, 500)
    torch.manual_seed(0)
    theirs = []
    for _ in range(1000):
        i, j, h, w = v2.RandomResizedCrop.get_params(torch.zeros(3, 375, 500), [0.08, 1.0], [3 / 4, 4 / 3])
        theirs.append(h * w / (375 * 500))
    # the same rule gives the same distribution of crop areas as torchvision's (rejections included)
    assert 0.07 < min(fracs) and max(fracs) <= 1.0
    assert abs(np.mean(fracs) - np.mean(theirs)) < 0.04 and abs(np.median(fracs) - np.median(theirs)) < 0.05
    lighting = aug.PCALighting(alphastd=0.0)
    x = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    assert torch.equal(lighting(x, rng), x)
    shifted = aug.PCALighting(alphastd=1.0)(x, random.Random(1))
    assert (shifted[:, 0, 0] != 100).any() and torch.equal(shifted[:, 0, 0], shifted[:, 1, 1])


# ---------------------------------------------------------------- data sets
@pytest.fixture(scope="module")
def demo_train(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "train"
    write_demo_set(out, "train")
    return out


def test_folder_dataset_gray_to_rgb_and_determinism_across_workers(demo_train):
    pre = {"input_size": [3, 32, 32], "resize": 36}
    ds = ImageDataset.open(demo_train, train_pipeline(pre, augment=["random_resized_crop", "hflip", "color_jitter"]),
                           seed=11)
    assert len(ds) == 1000 and ds.num_classes == 10 and np.bincount(ds.targets).tolist() == [100] * 10
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    raw = ds.decode(0)
    assert raw.shape == (3, 28, 28) and torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])
    state = torch.get_rng_state()
    ds[1], ds[2]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    subset = torch.utils.data.Subset(ds, list(range(0, 1000, 25)))
    batches = {}
    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(subset, batch_size=8, num_workers=workers)
        batches[workers] = torch.cat([b for b, _ in dl])
    assert torch.equal(batches[0], batches[2])  # same draws whatever the number of workers
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x)
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], x)
    gray = ImageDataset.open(demo_train, eval_pipeline({"input_size": [1, 28, 28], "resize": 28}))
    assert gray[0][0].shape == (1, 28, 28)


def test_set_epoch_reaches_persistent_workers():
    x, y = demo_arrays("val")
    ds = ImageDataset.from_arrays(x[:16], y[:16], train_pipeline({"input_size": [3, 24, 24]}, normalize=False), seed=2)
    dl = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True)
    per_epoch = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        per_epoch.append(next(iter(dl))[0])
        assert torch.equal(per_epoch[-1], torch.stack([ds[i][0] for i in range(16)]))  # as in this process
    assert not torch.equal(per_epoch[0], per_epoch[1])


def test_arrays_dataset_and_labels_are_checked():
    x, y = demo_arrays("test")
    ds = ImageDataset.from_arrays(x, y, eval_pipeline({"input_size": [3, 28, 28], "resize": 28}, normalize=False))
    img, label = ds[7]
    assert torch.equal(img[0], torch.from_numpy(x[7])) and label == y[7]
    with pytest.raises(GraftError, match="outside 0..2"):
        ImageDataset.from_arrays(x[:4], [0, 1, 2, 3], classes=["a", "b", "c"])


# ---------------------------------------------------------------- samplers
def test_class_balanced_sampler_label_shuffling():
    labels = [0] * 10 + [1] * 3 + [2] * 1
    s = ClassBalancedSampler(labels, seed=4)
    idx = list(s)
    assert len(idx) == len(s) == 30
    by = Counter(labels[i] for i in idx)
    assert by == {0: 10, 1: 10, 2: 10}
    assert sorted(i for i in idx if labels[i] == 0) == list(range(10))  # each big-class image exactly once
    assert Counter(i for i in idx if labels[i] == 1).most_common()[-1][1] >= 3  # small class cycled evenly
    assert idx == list(ClassBalancedSampler(labels, seed=4))
    s.set_epoch(1)
    assert list(s) != idx


def test_weighted_sampler():
    labels = [0] * 90 + [1] * 10
    s = WeightedSampler(labels, num_samples=4000, seed=1)
    draws = list(s)
    share = np.mean([labels[i] for i in draws])
    assert 0.45 < share < 0.55 and draws == list(WeightedSampler(labels, num_samples=4000, seed=1))
    w = WeightedSampler(weights=[0, 0, 1], num_samples=5)
    assert list(w) == [2] * 5
    with pytest.raises(GraftError):
        WeightedSampler(weights=[0, 0])


# ---------------------------------------------------------------- split and stats
def test_split_is_stratified_and_keeps_duplicates_together(tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(fixture("mxnet/im2rec/imgs"), root)
    # two exact copies of one image, under different names
    shutil.copy(root / "tshirt/00.jpg", root / "tshirt/copy_of_00.jpg")
    lst = make_lists(root, tmp_path / "all")["all"]
    written = split_list(lst, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    parts = {k: read_lst(p) for k, p in written.items()}
    assert sum(len(v) for v in parts.values()) == 25
    for name, entries in parts.items():
        counts = Counter(e.label for e in entries)
        assert all(c >= 1 for c in counts.values()) and len(counts) == 3, (name, counts)
    where = {e.path: k for k, v in parts.items() for e in v}
    assert where["tshirt/00.jpg"] == where["tshirt/copy_of_00.jpg"]
    again = split_list(lst, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3, out=tmp_path / "again")
    assert all(read_lst(again[k]) == parts[k] for k in parts)
    lst8 = ImageList([Entry(i, (float(i % 2),), f"missing{i}.jpg") for i in range(20)], tmp_path)
    sizes = {k: Counter(e.label for e in v) for k, v in split_entries(lst8, {"a": 0.8, "b": 0.2}).items()}
    assert sizes == {"a": {0: 8, 1: 8}, "b": {0: 2, 1: 2}}
    with pytest.raises(GraftError, match="add up to 1"):
        split_entries(lst8, {"a": 0.8, "b": 0.3})


def test_stats_and_caffe_mean(tmp_path):
    from graftkit.formats.caffe import read_binaryproto_mean
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8) for i in range(3)]
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(root / "a" / f"{i}.png")
    st = compute_stats(root, mean_size=(6, 6), workers=0, progress=False)
    allpix = np.concatenate([a.reshape(-1, 3) for a in imgs]).astype(np.float64)
    assert np.allclose(st["mean"], allpix.mean(0)) and np.allclose(st["std"], allpix.std(0))
    assert st["images"] == 3 and st["mean_image"].shape == (3, 6, 6)
    path = write_mean_binaryproto(tmp_path / "mean.binaryproto", st["mean_image"])
    back = read_binaryproto_mean(path)  # graftkit's Caffe reader: BGR, as compute_image_mean writes
    assert np.allclose(back, st["mean_image"][::-1])


def test_cli_split_and_stats(tmp_path):
    lst = make_lists(fixture("mxnet/im2rec/imgs"), tmp_path / "all")["all"]
    r = run_graft("data", "split", lst, "--train", "0.5", "--val", "0.5", "--test", "0", "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["train"]["images"] == doc["val"]["images"] == 12 and "test" not in doc
    r = run_graft("data", "split", lst, "--train", "0.9", "--val", "0.5")
    assert r.returncode == 2 and "add up to 1" in r.stderr and r.stderr.count("\n") == 1


def test_a_tiny_jpeg_declaring_40000_squared_is_refused_before_decoding():
    """torchvision's decoder has no pixel limit: the header is checked against Pillow's first."""
    import io as _io
    from PIL import Image as _Image
    from graftkit.data.decode import DecodeError, decode_tensor, jpeg_header
    buf = _io.BytesIO()
    _Image.new("RGB", (8, 8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    h, w, _, _ = jpeg_header(data)
    sof = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5:sof + 9] = (40000).to_bytes(2, "big") * 2
    assert jpeg_header(data)[:2] == (40000, 40000) and len(data) < 1000
    with pytest.raises(DecodeError, match="40000x40000 pixels is over the 200,000,000-pixel limit"):
        decode_tensor(bytes(data))


def test_auto_augmentation_zooms_small_images_gently_and_photos_as_before(demo_train):
    """`augment: auto`: 28 px images get the `small` preset (a crop of >= 80 % of the area, near-square), so that a
    crop keeps the sleeves and collar that tell the garments apart; photos keep `light` (down to 60 %)."""
    from pathlib import Path
    from graftkit.train.data import open_run_data
    from graftkit.tune import Plan
    photos = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ants_bees"
    meta = {"preprocessing": {"input_size": [3, 224, 224], "resize": 256}}
    crops = {}
    for name, folder in (("fmnist", demo_train), ("photos", photos)):
        run = open_run_data(str(folder), None, Plan.load(), meta)
        rrc = next(op for op in run.train.transform.ops if isinstance(op, aug.RandomResizedCrop))
        crops[name] = (rrc.scale, rrc.ratio, run.preprocessing["input_size"])
    assert crops["fmnist"] == ((0.8, 1.0), (0.9, 1.11), [3, 112, 112])
    assert crops["photos"] == ((0.6, 1.0), (3 / 4, 4 / 3), [3, 224, 224])
    explicit = open_run_data(str(demo_train), None, Plan.load(augment="light"), meta)
    assert next(op for op in explicit.train.transform.ops if isinstance(op, aug.RandomResizedCrop)).scale == (0.6, 1.0)
