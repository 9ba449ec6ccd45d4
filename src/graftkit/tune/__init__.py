"""Fine-tuning plans: what trains, how fast, with which solver (see plan.py), applied by apply.py.

    plan = graftkit.tune.Plan.load("plan.yaml", epochs=5)
    model, tuning = graftkit.tune.apply(model, plan, classes=["cat", "dog"])
"""
from .apply import ParamInfo, Tuning, apply
from .head import find_head
from .plan import Data, Plan, Solver

__all__ = ["Plan", "Solver", "Data", "apply", "Tuning", "ParamInfo", "find_head"]
