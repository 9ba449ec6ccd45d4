"""Transplant by structure into a hand-written network whose names differ: PReLU slopes from a state dict
(kind unknown from the names alone) pair with the target's PReLU modules, checked against OpenCV's run of
the real MTCNN PNet; a partial transplant always says so (one warning line; exit 2 with --strict)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graftkit
from graftkit.errors import GraftError

from conftest import fixture, rel_err, run_graft

PNET = '''
import torch
import torch.nn as nn


class PNet(nn.Module):
    """MTCNN's PNet written by hand, with names of its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(10, 16, 3), nn.PReLU(16),
            nn.Conv2d(16, 32, 3), nn.PReLU(32))
        self.face = nn.Conv2d(32, 2, 1)
        self.box = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        h = self.body(x)
        return torch.softmax(self.face(h), 1), self.box(h)
'''

# The names facenet-pytorch's MTCNN uses for the same weights.
FACENET = {"conv1": "conv1", "PReLU1": "prelu1", "conv2": "conv2", "PReLU2": "prelu2", "conv3": "conv3",
           "PReLU3": "prelu3", "conv4-1": "conv4_1", "conv4-2": "conv4_2"}


def _state_dict_file(tmp_path):
    ts = graftkit.read(fixture("caffe/mtcnn_det1.caffemodel"))
    state = {}
    for name, t in ts.items():
        layer, _, leaf = name.rpartition(".")
        state[f"{FACENET[layer]}.{leaf}"] = t.contiguous()
    path = tmp_path / "pnet.pt"
    torch.save(state, path)  # a plain state dict in module order, as facenet-pytorch ships: no graph
    return path


def _check_outputs(package, where):
    net = graftkit.load(package, trust=True)
    x = torch.from_numpy(np.load(fixture("caffe/mtcnn_det1.input.npy")))
    with torch.no_grad():
        prob, box = net(x)
    errs = (rel_err(prob.numpy(), np.load(fixture("caffe/mtcnn_det1.prob1.opencv.npy"))),
            rel_err(box.numpy(), np.load(fixture("caffe/mtcnn_det1.conv4-2.opencv.npy"))))
    print(f"{where}: max relative error vs OpenCV prob1 {errs[0]:.2e}, conv4-2 {errs[1]:.2e}")
    assert max(errs) < 1e-5, errs


def test_prelu_slopes_pair_by_structure_from_a_state_dict(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(PNET)
    monkeypatch.chdir(tmp_path)  # the package names its architecture nets.py:PNet
    src = _state_dict_file(tmp_path)
    for source in (src, fixture("caffe/mtcnn_det1.caffemodel")):
        out = tmp_path / f"pnet_{source.suffix[1:]}.safetensors"
        r = run_graft("transplant", source, "--into", "nets.py:PNet", "--trust", "--json", "-o", out,
                      "--strict", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["summary"]["copied"] == rep["summary"]["target_tensors"] == 13, rep["summary"]
        assert rep["warnings"] == [] and "warning" not in r.stderr
        slopes = {e["target"]: e["source"] for e in rep["parameters"] if e["target"] in ("body.1.weight",
                                                                                         "body.4.weight")}
        assert slopes == ({"body.1.weight": "prelu1.weight", "body.4.weight": "prelu2.weight"} if source == src
                          else {"body.1.weight": "PReLU1.weight", "body.4.weight": "PReLU2.weight"})
        _check_outputs(out, source.name)


def test_a_partial_transplant_warns_and_strict_fails(tmp_path):
    (tmp_path / "nets.py").write_text(PNET.replace("nn.Conv2d(32, 4, 1)", "nn.Conv2d(32, 5, 1)"))
    src = _state_dict_file(tmp_path)
    r = run_graft("transplant", src, "--into", "nets.py:PNet", "--trust", "-o", tmp_path / "p.safetensors",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and "2 of 13 target tensors left" in lines[0] and "box.weight" in lines[0], lines
    r = run_graft("transplant", src, "--into", "nets.py:PNet", "--trust", "--json", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (warning,) = json.loads(r.stdout)["warnings"]
    assert warning.startswith("2 of 13 target tensors left") and "box.bias" in warning
    r = run_graft("transplant", src, "--into", "nets.py:PNet", "--trust", "--strict", "-o",
                  tmp_path / "q.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "q.safetensors").exists()


def test_a_package_made_with_a_relative_factory_path_loads_from_anywhere(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "nets.py").write_text(PNET)
    src = _state_dict_file(work)
    r = run_graft("transplant", src, "--into", "nets.py:PNet", "--trust", "-o", "pnet.safetensors", cwd=work)
    assert r.returncode == 0, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _check_outputs(work / "pnet.safetensors", "loaded from another folder")
    r = run_graft("inspect", work / "pnet.safetensors", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    # Moved together with its file: found beside the package.
    moved = tmp_path / "moved"
    work.rename(moved)
    _check_outputs(moved / "pnet.safetensors", "moved with its file")
    # The file changed: it still loads, and says so.
    (moved / "nets.py").write_text(PNET + "\n# edited\n")
    with pytest.warns(UserWarning, match="changed since the package was made"):
        graftkit.load(moved / "pnet.safetensors", trust=True)
    # The file is gone: one clear error naming where it was looked for.
    (moved / "nets.py").unlink()
    with pytest.raises(GraftError, match=r"architecture file nets\.py is not at .*work/nets\.py"):
        graftkit.load(moved / "pnet.safetensors", trust=True)
