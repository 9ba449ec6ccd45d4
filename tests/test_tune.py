"""graftkit.tune: plans (YAML, Caffe names, validation), Caffe lr_mult/decay_mult defaults, heads, unfreezing,
lr policies, and `graft plan show`."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from graftkit.errors import GraftError
from graftkit.meta import attach, make_meta
from graftkit.train.solver import LRPolicy
from graftkit.tune import Plan, apply

from test_train import HERE, make_model


def write(tmp_path, text, name="plan.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_plan_with_caffe_solver_names(tmp_path):
    p = write(tmp_path, """
freeze: [stem]
lr_mult: {block: 0.5}
solver:
  type: SGD
  base_lr: 0.01
  lr_policy: step
  stepsize: 100
  gamma: 0.5
  momentum: 0.95
  weight_decay: 0.0005
  max_iter: 300
""")
    plan = Plan.load(p, batch_size=4)
    s = plan.solver
    assert (s.optimizer, s.lr, s.policy, s.step_iters, s.gamma, s.momentum, s.max_iter, s.batch_size) == \
        ("sgd", 0.01, "step", 100, 0.5, 0.95, 300, 4)
    assert plan.freeze == ["stem"] and plan.lr_mult == {"block": 0.5}
    # what the file and flags set, under our names (a strategy's own defaults leave these alone)
    assert {"freeze", "lr_mult", "solver.lr", "solver.optimizer", "solver.batch_size"} <= plan.given
    assert "solver.epochs" not in plan.given and not Plan.load().given


@pytest.mark.parametrize("text, message", [
    ("solver: {lr_policy: sawtooth}", "unknown lr policy 'sawtooth'"),
    ("solver: {optimizer: lbfgsx}", "unknown optimizer"),
    ("frezee: [stem]", "unknown key 'frezee'"),
    ("solver: {lr: fast}", "solver: lr: value 'fast' has the wrong type"),
    ("solver: {lr_policy: multistep}", "needs milestones"),
    ("head: replace", "head must be one of"),
    ("- a\n- b", "must be a YAML mapping"),
    ("freeze: [stem", "not valid YAML at line"),
])
def test_bad_plans_get_one_clear_error(tmp_path, text, message):
    with pytest.raises(GraftError, match=message):
        Plan.load(write(tmp_path, text))


def test_caffe_defaults_new_head_10x_biases_2x_without_decay():
    model, tuning = apply(make_model(), Plan(), ["a", "b", "c"])
    assert model.fc.out_features == 3
    rows = {r["name"]: r for r in tuning.table(lr=0.1, weight_decay=0.01)}
    assert rows["fc.weight"]["lr"] == pytest.approx(1.0) and rows["fc.weight"]["weight_decay"] == pytest.approx(0.01)
    assert rows["fc.bias"]["lr"] == pytest.approx(2.0) and rows["fc.bias"]["weight_decay"] == 0
    assert rows["stem.0.weight"]["lr"] == pytest.approx(0.1) and rows["stem.0.weight"]["weight_decay"] == 0.01
    assert rows["stem.0.bias"]["lr"] == pytest.approx(0.2) and rows["stem.0.bias"]["weight_decay"] == 0
    assert rows["stem.1.weight"]["weight_decay"] == 0  # BatchNorm scale: no decay
    groups = tuning.param_groups(model, 0.1, 0.01)
    by_mult = {(g["lr_mult"], g["decay_mult"]): len(g["params"]) for g in groups}
    assert by_mult[(10.0, 1.0)] == 1 and by_mult[(20.0, 0.0)] == 1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_user_multipliers_layer_decay_and_keeping_the_head():
    plan = Plan.from_dict({"lr_mult": {"stem": 0.0}, "decay_mult": {"block.0.weight": 3}, "layer_decay": 0.5})
    classes = [f"c{i}" for i in range(5)]
    model, tuning = apply(make_model(classes=classes), plan, classes)
    assert tuning.head_report["mode"] == "keep"             # same classes: the head is kept, at 1x
    rows = {r["name"]: r for r in tuning.table(lr=1.0, weight_decay=1.0)}
    assert rows["stem.0.weight"]["lr"] == 0.0
    assert rows["block.0.weight"]["weight_decay"] == 3.0
    assert rows["block.1.weight"]["lr"] == pytest.approx(0.5)    # one unit below the head
    assert rows["block.0.weight"]["lr"] == pytest.approx(0.25)   # two units below
    assert rows["fc.weight"]["lr"] == pytest.approx(1.0)


def test_keep_matching_copies_rows_of_classes_with_the_same_name():
    old = [f"c{i}" for i in range(5)]
    model = make_model(classes=old)
    w = model.fc.weight.detach().clone()
    model, tuning = apply(model, Plan(head="keep_matching"), ["zebra", "C3", "c1"])
    assert torch.equal(model.fc.weight[1], w[3]) and torch.equal(model.fc.weight[2], w[1])
    assert not torch.equal(model.fc.weight[0], w[0])
    assert [k["class"] for k in tuning.head_report["kept_rows"]] == ["C3", "c1"]
    assert "num_classes=3" in model.graftkit_meta["spec"]


def test_gradual_unfreeze_and_freeze_bn():
    plan = Plan.from_dict({"freeze": ["body"], "unfreeze": {2: ["block"]}})
    model, tuning = apply(make_model(), plan, ["a", "b"])
    trainable = lambda: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable() == {"fc.weight", "fc.bias"}
    tuning.train_mode(model, 0)
    assert not model.block[1].training and not model.stem[1].training and model.training
    assert tuning.set_epoch(model, 2) == ["block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"]
    assert trainable() == {"fc.weight", "fc.bias", "block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"}
    tuning.train_mode(model, 2)
    assert model.block[1].training and not model.stem[1].training
    # unfreezing later parameters are in the optimizer from the start (they have no grad until then)
    assert sum(len(g["params"]) for g in tuning.param_groups(model, 1, 0)) == 6


@pytest.mark.parametrize("key, pattern", [("freeze", "blocks.9"), ("stop_gradient", "stemm"),
                                          ("lr_mult", "nothing.*")])
def test_a_plan_naming_a_missing_layer_is_an_error(key, pattern):
    value = {"lr_mult": {pattern: 2}}.get(key, [pattern] if key == "freeze" else pattern)
    with pytest.raises(GraftError, match=f"{pattern!r} names no layer"):
        apply(make_model(), Plan.from_dict({key: value}), ["a", "b"])


@pytest.mark.parametrize("policy", ["cosine", "poly", "onecycle"])
def test_budget_schedule_follows_the_spent_fraction(policy):
    s = Plan.load(None, policy=policy, warmup_epochs=1).solver
    p = LRPolicy(s, iters_per_epoch=10, total_iters=10_000)
    after_warmup = [p.factor(it, done) for it, done in zip(range(10, 60), [i / 49 for i in range(50)])]
    peak = max(range(len(after_warmup)), key=after_warmup.__getitem__)
    assert all(b <= a + 1e-12 for a, b in zip(after_warmup[peak:], after_warmup[peak + 1:]))
    assert after_warmup[-1] == pytest.approx(s.min_lr_factor, abs=1e-6)        # ends at the floor at the budget
    assert p.factor(5000, 0.1) == p.factor(5000, 0.5)                            # the iteration cap, when it comes first
    warmup = [p.factor(it, 0.0) for it in range(10)]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(s.warmup_factor)   # warm-up stays on iterations


def test_lr_policies_follow_caffe_formulas():
    def f(**kw):
        s = Plan.from_dict({"solver": {"warmup_epochs": 0, **kw}}).solver
        return LRPolicy(s, iters_per_epoch=10, total_iters=100).factor
    assert f(policy="fixed")(57) == 1
    assert f(policy="step", stepsize=30, gamma=0.1)(65) == pytest.approx(0.01)
    assert f(policy="multistep", stepvalue=[20, 50], gamma=0.5)(49) == pytest.approx(0.5)
    assert f(policy="exp", gamma=0.99)(10) == pytest.approx(0.99 ** 10)
    assert f(policy="inv", gamma=0.001, power=0.75)(40) == pytest.approx((1 + 0.04) ** -0.75)
    assert f(policy="poly", power=2, min_lr_factor=0)(25) == pytest.approx(0.75 ** 2)
    assert f(policy="cosine", min_lr_factor=0)(50) == pytest.approx(0.5)
    one = f(policy="onecycle", pct_start=0.3, warmup_factor=0.1, min_lr_factor=0)
    assert one(0) == pytest.approx(0.1) and one(30) == pytest.approx(1) and one(100) == pytest.approx(0)
    warm = LRPolicy(Plan.from_dict({"solver": {"warmup_epochs": 1, "warmup_factor": 0.1}}).solver, 10, 100).factor
    assert warm(0) == pytest.approx(0.1) and warm(5) == pytest.approx(0.55 * (0.01 + 0.99 * 0.5 * (1 + math.cos(0)))) 


def test_plan_show_cli_table_json_and_bad_layer(graft, tmp_path):
    spec = f"{HERE}:tiny_net"
    r = graft("plan", "show", "--model", spec, "--classes", "3", "--freeze", "stem", "--json")
    assert r.returncode == 0, r.stderr
    import json
    doc = json.loads(r.stdout)
    rows = {p["name"]: p for p in doc["parameters"]}
    assert rows["stem.0.weight"]["status"] == "frozen" and rows["stem.0.weight"]["lr"] == 0
    assert rows["fc.weight"]["shape"] == [3, 16] and rows["fc.weight"]["lr_mult"] == 10
    r = graft("plan", "show", "--model", spec, "--freeze", "conv9")
    assert r.returncode == 2 and r.stderr.count("graft: error") == 1 and "'conv9' names no layer" in r.stderr
    assert "Traceback" not in r.stderr


def test_layer_units_look_through_a_wrapper_shared_by_the_whole_body():
    """A detector keeps its backbone under `model.backbone.fb.body.`: layer decay and the plan table must see
    the backbone's stages there (not one unit `model`), and each new head as a unit of its own."""
    inner = make_model()
    wrapper = nn.Module()
    wrapper.model = nn.Module()
    wrapper.model.backbone = nn.Module()
    wrapper.model.backbone.body = nn.Sequential()
    for name, child in inner.named_children():
        if name != "fc":
            wrapper.model.backbone.body.add_module(name, child)
    wrapper.model.backbone.fpn = nn.Conv2d(4, 4, 1)
    wrapper.model.head = nn.Linear(4, 3)
    wrapper.forward = lambda x: x
    _, tuning = apply(wrapper, Plan(layer_decay=0.5), new_heads=["model.backbone.fpn", "model.head"])
    groups = [g["group"] for g in tuning.groups(lr=1.0, weight_decay=0.0)]
    body = [g for g in groups if g.startswith("model.backbone.body.")]
    assert len(body) >= 3, groups
    assert "model.head" in groups and "model.backbone.fpn" in groups
    rows = {r["name"]: r for r in tuning.table(lr=1.0, weight_decay=0.0)}
    lrs = [rows[n]["lr"] for n in rows if n.startswith("model.backbone.body.") and n.endswith("weight")]
    assert lrs == sorted(lrs) and lrs[0] < lrs[-1] < 1.0      # deeper stages learn faster, all below the head
    assert rows["model.head.weight"]["lr"] == Plan().head_lr_mult   # a new head: no layer decay
