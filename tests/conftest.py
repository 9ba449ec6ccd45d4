"""Shared test helpers: the reference fixtures copied from ../shared/fixtures (see tests/fixtures/README.md)."""
from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def fixture(rel: str) -> Path:
    """Path of a copied fixture file; fails loudly if it was not copied into the repo."""
    p = FIXTURES / rel
    assert p.exists(), f"fixture {rel} missing from tests/fixtures"
    return p


def require(module: str):
    """Import a module that pyproject's `[test]` extra installs. A missing one fails the test, never skips it:
    a broken install must not pass as a run of skips."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is missing ({e}); the tests need the test extra: pip install -e '.[test]'",
                    pytrace=False)


def require_litert():
    """LiteRT ships wheels for Linux x86_64 only (the `[test]` extra's marker): required there, skipped elsewhere."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("ai-edge-litert has no wheels for this platform")
    return require("ai_edge_litert.interpreter")


def cases(fmt: str) -> list[dict]:
    return [c for c in MANIFEST["cases"] if c["format"] == fmt]


def rel_err(ours, expected) -> float:
    """The manifest's error measure: max|ours - expected| / max|expected|."""
    ours = np.asarray(ours, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def run_graft(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the real `graft` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "graftkit.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env)


@pytest.fixture
def graft():
    return run_graft


def random_bn(net, seed: int, affine: bool = True):
    """Informative BatchNorm statistics (and affine parameters): fresh ones (mean 0, var 1, weight 1,
    bias 0) would hide layout and copying mistakes. Returns the net, its mode unchanged."""
    import torch
    import torch.nn as nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net
