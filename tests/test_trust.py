"""The trust gate: a package is data. Building one whose architecture is a Python file, or whose
spec passes options that could read files or download, needs trust=True / --trust."""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn as nn
from PIL import Image

import graftkit
from conftest import run_graft
from graftkit.errors import GraftError
from graftkit.nets import spec as specs

# Importing this file leaves a marker: if the marker exists, graftkit ran the file's code.
HOSTILE = textwrap.dedent('''
    import pathlib
    import torch.nn as nn
    pathlib.Path(__file__).with_name("RAN").write_text("code from the package ran")


    def net(num_classes=3):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
''')


@pytest.fixture
def package_naming_code(tmp_path):
    """A package whose spec is `nets.py:net` (absolute path), as a downloaded one could be."""
    code = tmp_path / "nets.py"
    code.write_text(HOSTILE)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    pkg = tmp_path / "model.safetensors"
    graftkit.save(module, pkg, spec=f"{code}:net", classes=["a", "b", "c"],
                  preprocessing=graftkit.package.imagenet_preprocessing())
    image = tmp_path / "images" / "a" / "x.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    return pkg, tmp_path / "RAN", image


def test_load_refuses_a_package_naming_code_and_never_runs_it(package_naming_code):
    pkg, marker, _ = package_naming_code
    with pytest.raises(GraftError, match="--trust"):
        graftkit.load(pkg)
    assert not marker.exists()
    module = graftkit.load(pkg, trust=True)
    assert marker.exists()
    assert module(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_cli_refuses_a_package_naming_code_in_one_line(package_naming_code, tmp_path, command):
    pkg, marker, image = package_naming_code
    args = {"predict": [image], "evaluate": [image.parent.parent], "export": ["--onnx", tmp_path / "m.onnx"]}[command]
    r = run_graft(command, pkg, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("graft: error:") and r.stderr.count("\n") == 1, r.stderr
    assert "nets.py" in r.stderr and "--trust" in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists()


def test_cli_predict_with_trust_runs(package_naming_code):
    pkg, marker, image = package_naming_code
    r = run_graft("predict", pkg, image, "--trust", "--json")
    assert r.returncode == 0, r.stderr
    assert marker.exists()


def test_transplant_from_a_package_naming_code_needs_trust(package_naming_code):
    pkg, marker, _ = package_naming_code
    with pytest.raises(GraftError, match="--trust"):
        graftkit.transplant(pkg, nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert not marker.exists()


def test_spec_options_that_read_files_are_refused(tmp_path):
    secret = tmp_path / "secret.pth"
    torch.save({"w": torch.tensor([1.0, 2.0])}, secret)
    module = nn.Linear(2, 2)
    pkg = tmp_path / "m.safetensors"
    graftkit.save(module, pkg, spec=f"timm:resnet18?checkpoint_path={secret}")
    with pytest.raises(GraftError, match="checkpoint_path"):
        graftkit.load(pkg)
    for bad in ("timm:resnet18?pretrained=true", "timm:resnet18?pretrained_cfg_overlay=x",
                "torchvision:resnet18?weights=DEFAULT"):
        with pytest.raises(GraftError, match="not an architecture option"):
            specs.build(bad)


@pytest.mark.parametrize("query", ["num_classes=-1", "num_classes=10000000", "img_size=100000",
                                   "drop_rate=true", "act_layer=os.system", "global_pool=%5B1%5D"])
def test_spec_option_values_are_bounded(query):
    with pytest.raises(GraftError, match="out of bounds or of the wrong type"):
        specs.build(f"timm:resnet18?{query}")


def test_allowed_options_still_build():
    net = specs.build("timm:efficientnet_lite0?num_classes=4&drop_rate=0.2&bn_eps=0.001")
    assert net.get_classifier().out_features == 4
    assert specs.build("timm:mobilenetv1_100?act_layer=relu&num_classes=3") is not None


def test_a_spec_the_user_types_may_name_their_own_code(tmp_path):
    code = tmp_path / "mine.py"
    code.write_text(HOSTILE)
    net = graftkit.resolve(f"{code}:net?num_classes=2")
    assert (tmp_path / "RAN").exists()
    assert net(torch.zeros(1, 3, 8, 8)).shape == (1, 2)
