"""The fuzzer (tests/fuzz.py) in the suite: a short fixed-seed run by default, >= 2000 mutants with -m slow.

Every mutant of every format must end as a clean GraftError or be read fine: no traceback, no hang,
no growth past the child's 1 GiB address-space allowance, no signal."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz.py"
FORMATS = {"caffemodel", "caffe_net", "prototxt", "keras_h5", "keras_zip", "mxnet_params", "mxnet_symbol",
           "recordio", "recordio_idx", "lst", "chainer_npz", "image", "onnx", "safetensors", "package", "tflite"}


def run_fuzz(tmp_path: Path, count: int, seed: int, timeout: float) -> list[dict]:
    out = tmp_path / "fuzz.json"
    res = subprocess.run([sys.executable, str(FUZZ), "--count", str(count), "--seed", str(seed), "--quiet",
                          "--json", str(out), "--save", str(tmp_path / "failing")],
                         capture_output=True, text=True, timeout=timeout)
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads(out.read_text())
    bad = [f"{r['outcome']} #{r['i']} {r['target']} {r['desc']}: {r['detail'][:300]}" for r in results
           if r["outcome"] not in ("clean", "accepted")]
    assert not bad, "\n".join(bad) + "\n" + res.stdout[-2000:]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(results) == count
    return results


def test_fuzz_short_fixed_seed(tmp_path):
    results = run_fuzz(tmp_path, 150, seed=0, timeout=300)
    assert {r["fmt"] for r in results} == FORMATS  # (round robin: every format, several seeds each)


@pytest.mark.slow
def test_fuzz_2000_mutants_over_every_format(tmp_path):
    results = run_fuzz(tmp_path, 2000, seed=0, timeout=3600)
    per_format = {f: sum(r["fmt"] == f for r in results) for f in FORMATS}
    assert min(per_format.values()) >= 2000 // len(FORMATS), per_format
