"""What the report adds to an evaluation: `graft evaluate PKG TEST` against `graft evaluate PKG TEST -o DIR`
(metrics + report.html with errors, Grad-CAM, calibration and the audit of TEST), in fresh processes,
on the Fashion-MNIST test set as 10,000 PNGs (Debian `dataset-fashion-mnist`).

The package is a linear probe of lite0 trained with `graft train --strategy probe` on 100 images/class.
Target: the report adds <= 20 % to the evaluation's own time. Last line: JSON.

    python benchmarks/report_speed.py [--work DIR] [--test-limit 10000] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strategies import write_fmnist  # noqa: E402
from timing import graft_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="graft-report-speed-"))
    env = {**os.environ, "GRAFTKIT_CACHE": str(work / "cache")}
    train, test = write_fmnist(work, 100, a.test_limit)
    run = work / "run"
    if not (run / "best.safetensors").exists():
        graft_seconds("train", "--model", "lite0", "--strategy", "probe", "--train", train, "-o", run, "--no-report", env=env)
    plain, report = [], []
    for i in range(a.repeat):  # alternating, so a change in the machine's load hits both
        plain.append(graft_seconds("evaluate", run / "best.safetensors", test, env=env))
        report.append(graft_seconds("evaluate", run / "best.safetensors", test, "-o", work / f"eval{i}", env=env))
    p, r = min(plain), min(report)
    print(f"evaluate {p:.1f} s; evaluate + report {r:.1f} s: the report adds {r / p - 1:+.1%} "
          f"({a.test_limit} images)")
    doc = json.loads((work / "eval0" / "report.json").read_text())
    print(json.dumps({"images": a.test_limit, "evaluate_s": round(p, 2), "evaluate_with_report_s": round(r, 2),
                      "added": round(r / p - 1, 4), "report_s": doc.get("seconds_report"), "top1": doc["metrics"]["top1"]}))


if __name__ == "__main__":
    main()
