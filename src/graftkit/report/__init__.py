"""The HTML report of a run or an evaluation: curves, errors you can see (top losses with
Grad-CAM), calibration, and a data audit (label errors, duplicates and leakage, imbalance).

    graftkit.report.run_report("runs/ants")                 # -> runs/ants/report.html (+ report.json, audit.json)
    graftkit.report.evaluation_report(package, "test/", "eval/")
"""
from .build import evaluation_report, run_report

__all__ = ["run_report", "evaluation_report"]
