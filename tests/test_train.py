"""graftkit.train: exact resume, freezing that holds, auxiliary losses, the NaN guard, bad inputs, DDP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.utils.data import Dataset

import graftkit
from graftkit.errors import GraftError
from graftkit.meta import attach, make_meta
from graftkit.train import RunInterrupted, fit
from graftkit.tune import Plan

HERE = Path(__file__).resolve()
torch.set_num_threads(1)


class TinyNet(nn.Module):
    """conv-BN-ReLU x2, dropout, linear head: enough to exercise BN stats, dropout RNG and a head."""

    def __init__(self, num_classes: int = 5, aux: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.drop = nn.Dropout(0.2)
        self.aux = aux
        if aux:  # GoogLeNet-style side heads on intermediate features
            self.aux1 = nn.Linear(8, num_classes)
            self.aux2 = nn.Linear(16, num_classes)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        a = self.stem(x)
        b = self.block(a)
        logits = self.fc(self.drop(b.mean((2, 3))))
        if self.aux and self.training:
            return {"aux1": self.aux1(a.mean((2, 3))), "aux2": self.aux2(b.mean((2, 3))), "logits": logits}
        return logits


def tiny_net(num_classes: int = 5, aux: bool = False) -> nn.Module:
    return TinyNet(num_classes, aux)


def make_model(num_classes=5, aux=False, classes=None):
    spec = f"{HERE}:tiny_net?num_classes={num_classes}" + ("&aux=true" if aux else "")
    torch.manual_seed(123)  # the "pretrained" weights
    m = TinyNet(num_classes, aux)
    return attach(m, make_meta(spec, classes=classes or [f"c{i}" for i in range(num_classes)]))


class NoisyImages(Dataset):
    """Random images whose mean depends on the class, with per-sample augmentation noise from torch's RNG."""

    def __init__(self, n=48, k=4, seed=0, delay=0.0):
        g = torch.Generator().manual_seed(seed)
        self.targets = [i % k for i in range(n)]
        self.x = torch.randn(n, 3, 16, 16, generator=g) * 0.5 + torch.tensor(self.targets).view(-1, 1, 1, 1) * 0.3
        self.classes = [f"class{i}" for i in range(k)]
        self.delay = delay

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        x = self.x[i] + 0.1 * torch.randn(3, 16, 16)  # augmentation: must be reproducible on resume
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.targets[i]


def small_plan(**kw) -> Plan:
    kw = {"epochs": 2, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0.5, **kw}
    return Plan.load(None, **kw)


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, workers):
    ds = NoisyImages()
    plan = lambda: small_plan(num_workers=workers)  # noqa: E731
    full = fit(make_model(), ds, ds, out_dir=tmp_path / "full", plan=plan(), seed=7, quiet=True)
    with pytest.raises(RunInterrupted):
        fit(make_model(), ds, ds, out_dir=tmp_path / "cut", plan=plan(), seed=7, quiet=True, interrupt_after=9)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = fit(make_model(), ds, ds, out_dir=tmp_path / "cut", plan=plan(), seed=7, quiet=True, resume=True)
    assert_identical(weights(tmp_path / "full" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors"))
    assert full["iterations"] == resumed["iterations"] == 12
    drop = lambda row: {k: v for k, v in row.items() if k != "seconds"}  # noqa: E731  (wall time differs)
    assert drop(full["last"]) == drop(resumed["last"])
    # and the weights did change: the comparison is not vacuous
    before = make_model().state_dict()
    after = weights(tmp_path / "full" / "last.safetensors")
    assert not torch.equal(before["fc.weight"][:4], after["fc.weight"])


def test_frozen_layers_and_their_batchnorm_stats_stay_bit_identical(tmp_path):
    ds = NoisyImages()
    plan = small_plan(freeze=["stem"])
    start = {k: v.clone() for k, v in make_model().state_dict().items()}
    fit(make_model(), ds, out_dir=tmp_path, plan=plan, seed=1, quiet=True)
    after = weights(tmp_path / "last.safetensors")
    for k in start:
        if k.startswith("stem."):
            assert torch.equal(start[k], after[k]), k          # weights, BN running stats, num_batches_tracked
    assert not torch.equal(start["block.0.weight"], after["block.0.weight"])
    assert not torch.equal(start["block.1.running_mean"], after["block.1.running_mean"])


def test_stop_gradient_freezes_everything_below_and_runs_it_without_autograd(tmp_path):
    from graftkit.tune import apply
    model, tuning = apply(make_model(), small_plan(stop_gradient="block.0"), ["a", "b", "c", "d"])
    frozen = {p.name for p in tuning.params if p.frozen}
    assert frozen == {"stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias", "block.0.weight", "block.0.bias"}
    # a container as the cut: its own layers are below it too (they run without autograd)
    _, at_stem = apply(make_model(), small_plan(stop_gradient="stem"), ["a", "b", "c", "d"])
    assert {p.name for p in at_stem.params if p.frozen} == {"stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"}
    seen = {}
    model.block[1].register_forward_hook(lambda m, i, o: seen.update(grad=i[0].requires_grad) or None)
    model.stem[0].register_forward_hook(lambda m, i, o: seen.update(stem=o.requires_grad) or None)
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert seen == {"stem": False, "grad": False}             # nothing below the cut is recorded
    assert torch.is_grad_enabled()
    ds = NoisyImages()
    start = {k: v.clone() for k, v in make_model().state_dict().items()}
    fit(make_model(), ds, out_dir=tmp_path, plan=small_plan(stop_gradient="block.0"), seed=1, quiet=True)
    after = weights(tmp_path / "last.safetensors")
    for k in ("stem.0.weight", "stem.1.running_var", "block.0.weight"):
        assert torch.equal(start[k], after[k]), k
    assert not torch.equal(start["block.1.weight"], after["block.1.weight"])


def test_auxiliary_losses_weighted_like_googlenet(tmp_path):
    from graftkit.tune import apply
    model, tuning = apply(make_model(aux=True), small_plan(), ["a", "b", "c", "d"])
    model.train()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(0)
    loss, main, parts = tuning.loss(model(x), y, nn.CrossEntropyLoss())
    torch.manual_seed(0)
    out = model(x)
    ce = nn.functional.cross_entropy
    expected = 0.3 * (ce(out["aux1"], y) + ce(out["aux2"], y)) + ce(out["logits"], y)
    assert torch.allclose(loss, expected, rtol=0, atol=1e-6)
    assert torch.equal(main, out["logits"])
    assert set(parts) == {"main", "aux1", "aux2"}
    # the aux heads really train, and the run completes
    start = model.state_dict()["aux1.weight"].clone()
    fit(make_model(aux=True), NoisyImages(), out_dir=tmp_path, plan=small_plan(epochs=1), seed=1, quiet=True)
    assert not torch.equal(start, weights(tmp_path / "last.safetensors")["aux1.weight"])
    # the package tells serving which output was trained as the main one
    assert graftkit.read_meta(tmp_path / "last.safetensors")["extra"]["main_output"] == "logits"


def test_nan_loss_is_diagnosed_and_the_last_good_checkpoint_kept(tmp_path):
    ds = NoisyImages()
    fit(make_model(), ds, out_dir=tmp_path, plan=small_plan(epochs=1), seed=1, quiet=True)
    ck = (tmp_path / "checkpoint.pt").read_bytes()
    last = (tmp_path / "last.safetensors").read_bytes()
    with pytest.raises(GraftError, match="learning rate .* too high.*checkpoint .* intact"):
        fit(make_model(), ds, out_dir=tmp_path, plan=small_plan(epochs=3, lr=1e12, warmup_epochs=0, optimizer="sgd",
                                                                label_smoothing=0), seed=1, quiet=True, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == ck
    assert (tmp_path / "last.safetensors").read_bytes() == last


def test_labels_from_one_to_k_and_empty_classes_are_refused(tmp_path):
    ds = NoisyImages(k=4)
    ds.targets = [y + 1 for y in ds.targets]
    with pytest.raises(GraftError, match=r"labels run 1..4 but there are 4 classes.*start at 1"):
        fit(make_model(), ds, out_dir=tmp_path / "a", plan=small_plan(), quiet=True)
    ds = NoisyImages(k=4)
    ds.classes = ds.classes + ["empty"]
    with pytest.raises(GraftError, match="class 'empty' has no images"):
        fit(make_model(), ds, out_dir=tmp_path / "b", plan=small_plan(), quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_run_folder_is_not_overwritten_without_resume(tmp_path):
    fit(make_model(), NoisyImages(n=16), out_dir=tmp_path, plan=small_plan(epochs=1), quiet=True)
    with pytest.raises(GraftError, match="already holds a training run.*--resume"):
        fit(make_model(), NoisyImages(n=16), out_dir=tmp_path, plan=small_plan(epochs=1), quiet=True)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path):
    """A real process killed by SIGTERM while training: it checkpoints, exits non-zero, and --resume finishes
    with the same weights as a run that was never interrupted."""
    script = (f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); import test_train as t; "
              f"t.fit(t.make_model(), t.NoisyImages(delay=0.01), out_dir={str(tmp_path / 'cut')!r}, "
              f"plan=t.small_plan(epochs=3), seed=5, quiet=True)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "log.csv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # epoch 1 is done; epoch 2 is running
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    assert "stopped by signal SIGTERM" in stderr and "--resume" in stderr
    fit(make_model(), NoisyImages(), out_dir=tmp_path / "cut", plan=small_plan(epochs=3), seed=5, quiet=True,
        resume=True)
    fit(make_model(), NoisyImages(), out_dir=tmp_path / "full", plan=small_plan(epochs=3), seed=5, quiet=True)
    assert_identical(weights(tmp_path / "full" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors"))


def _ddp_worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    model = make_model()
    fit(model, NoisyImages(n=40), out_dir=Path(out) / "run", plan=small_plan(epochs=2), seed=3, quiet=True,
        device="cpu")
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_end_with_identical_weights(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_identical(a, b)
    start = make_model().state_dict()
    assert not torch.equal(start["block.0.weight"], a["block.0.weight"])
    import json
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 6   # 40 images / 2 ranks / batch 8 -> 3 per epoch
    assert_identical(weights(tmp_path / "run" / "last.safetensors"), {k: v for k, v in a.items()})


def test_early_stopping_and_time_budget(tmp_path):
    ds = NoisyImages(n=16)
    s = fit(make_model(), ds, ds, out_dir=tmp_path / "a", plan=small_plan(epochs=6, lr=1e-12, early_stopping=1),
            seed=1, quiet=True)   # nothing can improve: stops after one epoch without progress
    assert s["epochs"] == 2 and s["stop_reason"].startswith("early stopping") and s["best_epoch"] == 1
    s = fit(make_model(), ds, out_dir=tmp_path / "b", plan=small_plan(epochs=50, time_budget=1e-3), seed=1, quiet=True)
    assert s["epochs"] == 1 and s["stop_reason"].startswith("time budget")
    s = fit(make_model(), ds, out_dir=tmp_path / "c", plan=small_plan(epochs=5000, time_budget=3), seed=1, quiet=True)
    assert 1 < s["epochs"] < 5000 and s["seconds"] <= 5 and s["stop_reason"].startswith("time budget"), s


def test_a_time_budget_is_used_whole_with_a_monotonic_schedule(tmp_path):
    """The schedule runs on the spent fraction of the budget: after warm-up the lr only falls, it ends
    near its floor, and training plus the last validation fill the budget (Budgeted Training)."""
    import csv
    ds = NoisyImages(n=32, delay=0.005)
    plan = small_plan(epochs=1000, time_budget=6, warmup_epochs=1, lr=0.01)
    s = fit(make_model(), ds, ds, out_dir=tmp_path / "run", plan=plan, seed=1, quiet=True)
    # the last stretch shorter than one epoch's validation + saving (here up to ~0.5 s of 6) stays unused
    assert s["stop_reason"].startswith("time budget") and 0.9 * 6 <= s["seconds"] <= 6 * 1.1, s
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "run" / "log.csv"))][1:]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[-1] < 0.2 * 0.01


def test_epoch_batches_balanced_sharded_and_resumable():
    from graftkit.train.sampling import EpochBatches
    labels = [0] * 12 + [1] * 3 + [2] * 1
    s = EpochBatches(len(labels), 4, seed=9, labels=labels, balanced=True)
    drawn = [labels[i] for b in s.batches(0) for i in b]
    assert sorted(drawn) == [0] * 12 + [1] * 12 + [2] * 12          # every class up to the largest
    assert s.batches(0) == EpochBatches(len(labels), 4, seed=9, labels=labels, balanced=True).batches(0)
    assert s.batches(0) != s.batches(1)
    s.set_epoch(1, start_batch=2)
    assert [[i for _, i in b] for b in s] == s.batches(1)[2:]        # resume from batch 2 of epoch 1
    ranks = [EpochBatches(10, 2, seed=1, rank=r, world=2).order(0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and sorted(ranks[0] + ranks[1]) == list(range(10))
