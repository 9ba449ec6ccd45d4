"""A fine-tuning plan: what to train, how fast, and with which solver, read from YAML and/or flags.

Every key is validated here, so a typo in a plan is one clear error before any
training starts. Caffe's solver names are accepted as aliases (`base_lr`,
`lr_policy`, `stepsize`, `stepvalue`, `max_iter`, ...). Patterns name parameters
or modules (`blocks.0`, `blocks.[0-3]*`, `re:^conv_stem`), plus two keywords:
`head` (the classifier) and `body` (everything else).

    strategy: auto          # auto | probe | probe-at:DEPTH | lp-ft | lp-ft-at:DEPTH | partial | finetune | scratch
    head: auto              # auto | new | keep | keep_matching (old rows kept for matching class names)
    freeze: [conv_stem, blocks.0, blocks.1]
    freeze_bn: true         # BatchNorm statistics of frozen layers stay fixed
    bn_stats: update        # update | frozen (every BatchNorm keeps its running statistics)
    stop_gradient: blocks.2 # nothing at or below it is back-propagated (it runs without autograd)
    lr_mult: {blocks.6: 2}  # Caffe meaning; defaults: new head 10x, biases 2x (and decay_mult 0)
    decay_mult: {head: 1}
    layer_decay: 0.8        # each unit below the head gets 0.8x the lr of the one above
    unfreeze: {3: [blocks.5, blocks.6]}     # epoch -> patterns that start training then
    aux_weights: {aux1: 0.3, aux2: 0.3}     # multi-output models (GoogLeNet); main output weight 1
    early_stopping: 5       # epochs without a better validation top-1
    time_budget: 300        # seconds; the schedule is fitted to it
    solver: {optimizer: adamw, lr: 0.001, weight_decay: 0.05, policy: cosine, warmup_epochs: 1,
             label_smoothing: 0.1, epochs: 30, batch_size: 32}
    # or Caffe's: {type: SGD, base_lr: 0.001, lr_policy: step, stepsize: 1000, gamma: 0.1, max_iter: 5000}
    data: {size: auto, augment: auto, balanced: false, num_workers: auto, cache_ram: 25%}
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import GraftError

OPTIMIZERS = ("sgd", "adamw", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam")
POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "cosine", "onecycle")
HEAD_MODES = ("auto", "new", "keep", "keep_matching")
AUGMENT_NAMES = ("auto", "none", "light", "small", "standard")  # the presets of train.data.AUGMENT_PRESETS
# How to use the pretrained network (graftkit.advise): `auto` measures and chooses.
STRATEGIES = ("auto", "probe", "probe-at:DEPTH", "lp-ft", "lp-ft-at:DEPTH", "partial", "partial-at:DEPTH", "finetune",
              "scratch")
_STRATEGY = re.compile(r"^(auto|probe|lp-ft|partial|finetune|scratch|(probe|lp-ft|partial)-at:[A-Za-z0-9_.]+)$")
# Caffe's solver.prototxt names -> ours.
_CAFFE_ALIASES = {"base_lr": "lr", "lr_policy": "policy", "type": "optimizer", "max_iter": "max_iter",
                  "stepsize": "step_iters", "stepvalue": "milestone_iters", "clip_gradients": "clip_grad_norm",
                  "one_cycle": "onecycle", "one-cycle": "onecycle", "cos": "cosine"}
_POLICY_ALIASES = {"one_cycle": "onecycle", "one-cycle": "onecycle", "cos": "cosine", "multi_step": "multistep",
                   "constant": "fixed", "exponential": "exp"}


@dataclass
class Solver:
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9            # SGD/RMSprop momentum
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    nesterov: bool = False
    policy: str = "cosine"
    warmup_epochs: float = 1.0       # linear warm-up from warmup_factor * lr
    warmup_iters: int | None = None  # overrides warmup_epochs when given
    warmup_factor: float = 0.1
    min_lr_factor: float = 0.01      # cosine/poly floor, as a fraction of lr
    gamma: float = 0.1               # step/multistep/exp/inv
    power: float = 1.0               # inv/poly
    step_epochs: float | None = None
    step_iters: int | None = None
    milestones: list[float] = field(default_factory=list)       # in epochs
    milestone_iters: list[int] = field(default_factory=list)    # Caffe's stepvalue, in iterations
    pct_start: float = 0.3           # one-cycle: fraction of the run spent rising
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = None
    epochs: int = 30
    max_iter: int | None = None      # iterations instead of epochs (Caffe style)
    batch_size: int = 32
    amp: bool = True                 # mixed precision (GPU only)
    channels_last: bool = True       # NHWC memory format: ~2x faster convolutions on CPU and GPU


@dataclass
class Data:
    size: int | str = "auto"         # input side; auto: the model's, or 4x small images (>= 96)
    augment: Any = "auto"            # auto | none | light | small | standard, or an augmentation list
                                     # (graftkit.data.augment); auto: small for images under 64 px, else light
    balanced: bool = False           # class-balanced sampling
    num_workers: int | str = "auto"  # auto: measured in the first epochs (train.callbacks.choose_workers); 0 = in-process
    cache_ram: str = "25%"           # decode small training/validation data once into RAM up to this: 25% (of
                                     # available RAM), 2G, 512M, or 0 to always stream (graftkit.data.memory)
    val_fraction: float = 0.0        # split off a validation set when none is given


@dataclass
class Plan:
    strategy: str = "auto"           # see STRATEGIES; fit() itself always fine-tunes
    head: str = "auto"
    freeze: list[str] = field(default_factory=list)
    freeze_bn: bool = True           # BatchNorm statistics of frozen layers stay fixed
    bn_stats: str = "update"         # update | frozen: every BatchNorm keeps its running statistics (lp-ft)
    stop_gradient: str | None = None
    lr_mult: dict[str, float] = field(default_factory=dict)
    decay_mult: dict[str, float] = field(default_factory=dict)
    head_lr_mult: float = 10.0
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 0.0
    norm_decay_mult: float = 0.0
    layer_decay: float | None = None
    unfreeze: dict[int, list[str]] = field(default_factory=dict)   # epoch -> patterns
    aux_weights: dict[str, float] = field(default_factory=dict)    # output name -> loss weight
    main_output: str | None = None
    solver: Solver = field(default_factory=Solver)
    data: Data = field(default_factory=Data)
    early_stopping: int | None = None        # patience in epochs (on validation top-1)
    checkpoint_every: int | None = None      # also checkpoint every N iterations
    time_budget: float | None = None         # seconds of training
    budget_clock: str = "wall"               # wall | cpu (process CPU seconds / threads: fair on a shared machine)
    # The keys the plan file and flags set ("solver.lr", "bn_stats", ...; from_dict records them): a strategy's
    # own defaults (lp-ft's, graftkit.advise.run) apply to the others only.
    given: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None, where: str = "plan") -> "Plan":
        doc = dict(doc or {})
        solver_doc = _caffe_names(doc.pop("solver", None) or {})
        data_doc = doc.pop("data", None) or {}
        solver = _build(Solver, solver_doc, f"{where}: solver")
        data = _build(Data, data_doc, f"{where}: data")
        doc.pop("model", None)  # the model is chosen by the caller (--model wins)
        plan = _build(cls, doc, where, solver=solver, data=data)
        plan.given = frozenset([*doc, *(f"solver.{k}" for k in solver_doc), *(f"data.{k}" for k in data_doc)])
        plan.validate(where)
        return plan

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides: Any) -> "Plan":
        """Read a YAML plan (or the default plan when path is None) and apply flag overrides.

        Overrides use dotted names for nested fields: {"solver.lr": 0.01, "epochs": 3}; plain
        solver/data field names are accepted too."""
        doc: dict[str, Any] = {}
        where = "default plan"
        if path is not None:
            doc, where = read_yaml(path), str(path)
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.rpartition(".")
            if not section:
                if name in {f.name for f in dataclasses.fields(Solver)}:
                    section = "solver"
                elif name in {f.name for f in dataclasses.fields(Data)}:
                    section = "data"
            target = doc.setdefault(section, {}) if section else doc
            if not isinstance(target, dict):
                raise GraftError(f"{where}: '{section}' must be a mapping")
            target[name] = value
        return cls.from_dict(doc, where)

    def validate(self, where: str = "plan") -> None:
        s = self.solver
        if self.budget_clock not in ("wall", "cpu"):
            raise GraftError(f"{where}: budget_clock must be wall or cpu, not {self.budget_clock!r}")
        if self.bn_stats not in ("update", "frozen"):
            raise GraftError(f"{where}: bn_stats must be update or frozen, not {self.bn_stats!r}")
        if not isinstance(self.strategy, str) or not _STRATEGY.match(self.strategy):
            raise GraftError(f"{where}: strategy {self.strategy!r} is not understood",
                             f"use one of {', '.join(STRATEGIES)}")
        if self.head not in HEAD_MODES:
            raise GraftError(f"{where}: head must be one of {', '.join(HEAD_MODES)}, not {self.head!r}")
        if s.optimizer not in OPTIMIZERS:
            raise GraftError(f"{where}: unknown optimizer {s.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
        if s.policy not in POLICIES:
            raise GraftError(f"{where}: unknown lr policy {s.policy!r}", f"use one of {', '.join(POLICIES)}")
        for name in ("lr", "batch_size", "epochs"):
            if not getattr(s, name) or getattr(s, name) <= 0:
                raise GraftError(f"{where}: solver {name} must be positive, not {getattr(s, name)!r}")
        if s.max_iter is not None and s.max_iter <= 0:
            raise GraftError(f"{where}: solver max_iter must be positive")
        if s.weight_decay < 0 or s.label_smoothing < 0 or s.label_smoothing >= 1:
            raise GraftError(f"{where}: weight_decay must be >= 0 and label_smoothing in [0, 1)")
        if s.policy == "step" and not (s.step_epochs or s.step_iters):
            raise GraftError(f"{where}: lr policy 'step' needs step_epochs (or Caffe's stepsize)")
        if s.policy == "multistep" and not (s.milestones or s.milestone_iters):
            raise GraftError(f"{where}: lr policy 'multistep' needs milestones (or Caffe's stepvalue)")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise GraftError(f"{where}: layer_decay must be in (0, 1], not {self.layer_decay}")
        if isinstance(self.data.augment, str) and self.data.augment not in AUGMENT_NAMES:
            raise GraftError(f"{where}: data augment must be {', '.join(AUGMENT_NAMES)} or a list of augmentations, "
                             f"not {self.data.augment!r}")
        w = self.data.num_workers
        if not (w == "auto" or (isinstance(w, int) and not isinstance(w, bool) and w >= 0)):
            raise GraftError(f"{where}: data num_workers must be 'auto' or a count >= 0, not {w!r}")
        from ..data.memory import parse_budget
        try:
            parse_budget(self.data.cache_ram)
        except GraftError:
            raise GraftError(f"{where}: data cache_ram {self.data.cache_ram!r} is not understood",
                             "give e.g. 25% (of available RAM), 2G, 512M or 0 (always stream)") from None
        if not (self.data.size == "auto" or (isinstance(self.data.size, int) and self.data.size >= 8)):
            raise GraftError(f"{where}: data size must be 'auto' or a side in pixels >= 8, not {self.data.size!r}")
        for name, table in (("lr_mult", self.lr_mult), ("decay_mult", self.decay_mult),
                            ("aux_weights", self.aux_weights)):
            for k, v in table.items():
                if not isinstance(v, (int, float)) or v < 0:
                    raise GraftError(f"{where}: {name}[{k!r}] must be a number >= 0, not {v!r}")
        for epoch in self.unfreeze:
            if not isinstance(epoch, int) or epoch < 0:
                raise GraftError(f"{where}: unfreeze keys are epoch numbers >= 0, not {epoch!r}")


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"plan file {path} does not exist", "check the path given to --plan")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise GraftError(f"{path}: not valid YAML{at}", "fix the plan's syntax") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise GraftError(f"{path}: a plan must be a YAML mapping of keys (head, freeze, solver, ...)")
    return doc


def _caffe_names(doc: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in doc.items():
        out[_CAFFE_ALIASES.get(k, k)] = v
    if isinstance(out.get("optimizer"), str):
        out["optimizer"] = out["optimizer"].lower().replace("nesterov", "sgd")
    if isinstance(out.get("policy"), str):
        p = out["policy"].lower()
        out["policy"] = _POLICY_ALIASES.get(p, p)
    if "milestone_iters" in out and not isinstance(out["milestone_iters"], list):
        out["milestone_iters"] = [out["milestone_iters"]]
    return out


def _build(cls, doc: dict[str, Any], where: str, **given: Any):
    if not isinstance(doc, dict):
        raise GraftError(f"{where} must be a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise GraftError(f"{where}: unknown key {unknown[0]!r}",
                         f"known keys: {', '.join(sorted(set(fields) - set(given)))}")
    kwargs = dict(given)
    for k, v in doc.items():
        kwargs[k] = _coerce(fields[k], v, f"{where}: {k}")
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, v: Any, where: str) -> Any:
    t = str(f.type)
    try:
        if v is None:
            if "None" in t:
                return None
            raise ValueError
        if t.startswith("float"):
            return float(v)
        if t.startswith("int |") or t == "int" or t.startswith("int "):
            if isinstance(v, str) and t.startswith("int | str"):
                return int(v) if v.strip().isdigit() else v
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        if t == "bool":
            if isinstance(v, str):
                if v.lower() in ("true", "yes", "1", "on"):
                    return True
                if v.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(v)
        if t.startswith("list"):
            items = v if isinstance(v, (list, tuple)) else [s for s in str(v).split(",") if s.strip()]
            return [float(x) if "float" in t else int(x) if "int" in t else str(x).strip() for x in items]
        if t.startswith("dict[int"):
            if not isinstance(v, dict):
                raise ValueError
            return {int(k): (list(p) if isinstance(p, (list, tuple)) else [str(p)]) for k, p in v.items()}
        if t.startswith("dict"):
            if not isinstance(v, dict):
                raise ValueError
            return {str(k): float(x) for k, x in v.items()}
        if t.startswith("tuple"):
            return tuple(float(x) for x in v)
        if t.startswith("str"):
            return str(v)
    except (TypeError, ValueError):
        raise GraftError(f"{where}: value {v!r} has the wrong type (expected {t})") from None
    return v
