"""graftkit against the tools users would pick instead, same weights, images, budget and threads.

    python benchmarks/peers.py TRAIN [TEST] [--budget 300] [--model lite0] [--folds 5] [--only ...]
    python benchmarks/peers.py fmnist   # Fashion-MNIST 100/class PNG folders, full 10,000-image test set
    python benchmarks/peers.py ants     # ../shared/datasets/ants_bees, 5-fold CV (no test split)

TRAIN and TEST are class folders or `.lst` files. The contestants, one after another, each in a fresh
process on the same files, with the same ImageNet weights (graftkit's built-in model) and wall budget:
    graftkit         `graft train --model M --time-budget S` with its defaults, then `graft evaluate`
    fastai           `vision_learner` + `fine_tune` with its defaults, the pets tutorial's data pipeline
                     (item Resize(460), batch aug_transforms(size=224)); the epoch count fills the budget
                     from the measured time of a few frozen and unfrozen steps (fine_tune takes a count)
    tutorial         PyTorch's transfer-learning tutorial loop: SGD(lr 1e-3, momentum 0.9), StepLR(7, 0.1),
                     RandomResizedCrop(224) + flip, the best validation epoch kept; epochs until the budget
    tutorial_frozen  the same loop with the backbone frozen ("ConvNet as fixed feature extractor")
Every contestant gets the same seeded 10 % of TRAIN as validation (graftkit: `--val`). Accuracy is on TEST,
or with no TEST the mean over stratified k-fold cross-validation; seconds are the training process's wall
time (model build to trained weights), the test pass excluded. fastai is optional: `pip install -e '.[bench]'`.
Last line: JSON {"contestants": {name: {"accuracy", "seconds"}}, "ratios": {name: accuracy / graftkit's}}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANTS_BEES = HERE.parent.parent / "shared" / "datasets" / "ants_bees"
CONTESTANTS = ["graftkit", "fastai", "tutorial", "tutorial_frozen"]


# ---------------------------------------------------------------- data: lists every contestant shares

def as_list(data: Path, work: Path, name: str) -> Path:
    """A `.lst` (with its class map) for a folder or list, so every contestant reads the same entries."""
    from graftkit.data.index import index_folder
    from graftkit.data.lists import classes_path, save_classes, write_lst
    if data.suffix == ".lst":
        return data
    lst = index_folder(data)
    out = work / f"{name}.lst"
    write_lst(out, lst.entries)
    save_classes(classes_path(out), lst.classes, root=data.resolve())
    return out


def split_list(lst: Path, work: Path, name: str, parts: dict[str, object]) -> dict[str, Path]:
    """Write the sub-lists `parts` (name -> boolean mask over the entries) beside `lst`'s class map."""
    from graftkit.data.lists import classes_path, load_classes, open_list, save_classes, write_lst
    il = open_list(lst)
    doc = load_classes(classes_path(lst)) or {}
    out = {}
    for part, mask in parts.items():
        path = work / f"{name}_{part}.lst"
        write_lst(path, [e for e, m in zip(il.entries, mask) if m])
        save_classes(classes_path(path), doc.get("classes") or il.classes, root=il.root.resolve())
        out[part] = path
    return out


def stratified_folds(lst: Path, k: int, seed: int = 0):
    import numpy as np
    from graftkit.data.lists import open_list
    labels = np.array([e.label for e in open_list(lst).entries])
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def fmnist_folders(work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE))
    from strategies import write_fmnist
    return write_fmnist(work, 100, 10000)


# ---------------------------------------------------------------- one contestant, in its own process

def load_items(lst: Path):
    from graftkit.data.lists import open_list, resolve_in_root
    il = open_list(lst)
    return [str(resolve_in_root(il.root, e.path)) for e in il.entries], [e.label for e in il.entries], il


def backbone(model: str):
    """The built-in ImageNet model and its normalisation (the same weights for every contestant)."""
    from graftkit import builtin
    from graftkit.meta import meta_of
    net = builtin.load(model)
    pre = (meta_of(net) or {}).get("preprocessing") or {}
    return net, tuple(pre.get("mean", (0.485, 0.456, 0.406))), tuple(pre.get("std", (0.229, 0.224, 0.225)))


def run_graftkit(args, train, val, test) -> dict:
    run = Path(args.out).with_suffix(".run")
    env = {**os.environ, "GRAFTKIT_CACHE": str(run / "cache")}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graftkit.cli.main", "train", "--model", args.model, "--train", train,
                    "--val", val, "-o", run, "--time-budget", str(args.budget), "--json"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    r = subprocess.run([sys.executable, "-m", "graftkit.cli.main", "evaluate", run / "best.safetensors", test,
                        "--json"], check=True, env=env, capture_output=True, text=True)
    return {"accuracy": json.loads(r.stdout)["top1"], "seconds": seconds}


def run_tutorial(args, train, val, test, frozen: bool) -> dict:
    """https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html, budgeted."""
    import copy
    import torch
    from PIL import Image
    from torchvision import transforms as T
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net, mean, std = backbone(args.model)
    _, labels, il = load_items(train)
    classes = len(il.classes or set(labels))
    if frozen:
        for p in net.parameters():
            p.requires_grad = False
    net.reset_classifier(classes)                  # timm: a new, trainable final layer
    tf = {"train": T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]),
          "eval": T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])}

    class Files(torch.utils.data.Dataset):
        def __init__(self, lst, mode):
            self.files, self.labels, _ = load_items(lst)
            self.tf = tf[mode]

        def __len__(self):
            return len(self.files)

        def __getitem__(self, i):
            return self.tf(Image.open(self.files[i]).convert("RGB")), self.labels[i]

    loaders = {m: torch.utils.data.DataLoader(Files(lst, "train" if m == "train" else "eval"), batch_size=4,
                                              shuffle=m == "train", num_workers=min(4, os.cpu_count() or 1))
               for m, lst in (("train", train), ("val", val))}
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    best, best_acc, epoch_s = copy.deepcopy(net.state_dict()), -1.0, 0.0
    while time.perf_counter() - t0 + epoch_s <= args.budget:
        t = time.perf_counter()
        net.train()
        for x, y in loaders["train"]:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        sched.step()
        acc = accuracy(net, loaders["val"])
        if acc > best_acc:
            best_acc, best = acc, copy.deepcopy(net.state_dict())
        epoch_s = time.perf_counter() - t
    net.load_state_dict(best)
    seconds = time.perf_counter() - t0
    test_loader = torch.utils.data.DataLoader(Files(test, "eval"), batch_size=64, num_workers=min(4, os.cpu_count() or 1))
    return {"accuracy": accuracy(net, test_loader), "seconds": seconds}


def accuracy(net, loader) -> float:
    import torch
    net.eval()
    right = n = 0
    with torch.inference_mode():
        for x, y in loader:
            right += int((net(x).argmax(1) == y).sum())
            n += len(y)
    return right / max(1, n)


def run_fastai(args, train, val, test) -> dict:
    try:
        from fastai.vision.all import accuracy as fa_accuracy, vision_learner
    except ImportError:
        raise SystemExit("fastai is not installed: pip install -e '.[bench]' (or pip install fastai)")
    import torch
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net, mean, std = backbone(args.model)
    tr_files, tr_labels, il = load_items(train)
    va_files, va_labels, _ = load_items(val)
    names = list(il.classes) if il.classes else sorted(set(tr_labels))
    files, labels = tr_files + va_files, [names[i] for i in tr_labels + va_labels]
    dls = _fastai_dls(files, labels, len(tr_files), mean, std)

    def arch(pretrained=True, **kw):               # vision_learner cuts the body at the pooling layer
        return net
    learn = vision_learner(dls, arch, normalize=False, metrics=fa_accuracy, pretrained=True)
    n = _epochs_to_fill(learn, args.budget - (time.perf_counter() - t0))
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(n)
    seconds = time.perf_counter() - t0
    te_files, te_labels, _ = load_items(test)
    with learn.no_bar():
        preds, _ = learn.get_preds(dl=learn.dls.test_dl(te_files))
    vocab = list(learn.dls.vocab)                  # fastai sorts the labels its own way
    acc = statistics.mean(vocab[int(i)] == names[y] for i, y in zip(preds.argmax(1), te_labels))
    return {"accuracy": acc, "seconds": seconds, "epochs": n}


def _fastai_dls(files, labels, n_train, mean, std):
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Normalize, Resize,
                                   aug_transforms)
    label_of = dict(zip(files, labels))
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda f: label_of[f],
                      splitter=IndexSplitter(list(range(n_train, len(files)))),
                      item_tfms=Resize(460),
                      batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(mean, std)])
    return block.dataloaders(files, bs=64)


def _epochs_to_fill(learn, seconds_left: float) -> int:
    """fine_tune(n) runs one frozen epoch, then n unfrozen ones: time a few steps of each, then fit n."""
    import copy
    import torch
    dl = learn.dls.train
    steps = len(dl)
    probe = copy.deepcopy(learn.model)
    opt = torch.optim.Adam([p for p in probe.parameters()], lr=1e-5)

    def step_time(frozen: bool) -> float:
        body = probe[0]
        for p in body.parameters():
            p.requires_grad = not frozen
        times = []
        for _, (x, y) in zip(range(3), dl):
            x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
            t = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(probe(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    frozen_epoch, unfrozen_epoch = steps * step_time(True), steps * step_time(False)
    return max(1, int((seconds_left - frozen_epoch) / (unfrozen_epoch * 1.1)))


def contestant_main(args) -> None:
    train, val, test = Path(args.train), Path(args.val), Path(args.test)
    if args.contestant == "graftkit":
        result = run_graftkit(args, train, val, test)
    elif args.contestant == "fastai":
        result = run_fastai(args, train, val, test)
    else:
        result = run_tutorial(args, train, val, test, frozen=args.contestant == "tutorial_frozen")
    Path(args.out).write_text(json.dumps(result))


def contest(name: str, train: Path, val: Path, test: Path, args, work: Path) -> dict:
    out = work / f"{name}-{train.stem}.json"
    cmd = [sys.executable, __file__, train, test, "--contestant", name, "--val", val,
           "--budget", str(args.budget), "--model", args.model, "--out", out]
    subprocess.run(list(map(str, cmd)), check=True)
    return json.loads(out.read_text())


# ---------------------------------------------------------------- the contest

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", nargs="?", help="class folder or .lst; or `fmnist` / `ants`")
    ap.add_argument("test", nargs="?")
    ap.add_argument("--budget", type=float, default=300.0, help="wall seconds of training per contestant")
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds when there is no TEST")
    ap.add_argument("--only", default=",".join(CONTESTANTS))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--contestant", help=argparse.SUPPRESS)
    ap.add_argument("--val", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contestant:
        return contestant_main(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="graft-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.train == "fmnist":
        train_dir, test_dir = fmnist_folders(work)
    elif args.train == "ants":
        train_dir, test_dir = ANTS_BEES, None
    else:
        train_dir, test_dir = Path(args.train), Path(args.test) if args.test else None
    train = as_list(train_dir, work, "all_train")
    if test_dir is not None:                        # one split: TRAIN -> 90 % train + 10 % val, TEST held out
        test = as_list(test_dir, work, "test")
        val_mask = stratified_folds(train, 10) == 0
        splits = [(split_list(train, work, "split", {"train": ~val_mask, "val": val_mask}), test)]
    else:                                           # k folds; each fold's training part gives up 10 % as val
        fold = stratified_folds(train, args.folds)
        inner = stratified_folds(train, 10, seed=1) == 0
        splits = []
        for f in range(args.folds):
            parts = split_list(train, work, f"fold{f}", {"train": (fold != f) & ~inner, "val": (fold != f) & inner,
                                                         "test": fold == f})
            splits.append((parts, parts["test"]))
    results: dict[str, dict] = {}
    for name in [c for c in args.only.split(",") if c]:
        runs = [contest(name, parts["train"], parts["val"], test, args, work) for parts, test in splits]
        results[name] = {"accuracy": round(statistics.mean(r["accuracy"] for r in runs), 4),
                         "seconds": round(statistics.mean(r["seconds"] for r in runs), 1)}
        if len(runs) > 1:
            results[name]["std"] = round(statistics.pstdev(r["accuracy"] for r in runs), 4)
        print(f"{name:16s} accuracy {results[name]['accuracy']:.4f}  {results[name]['seconds']:7.1f} s", flush=True)
    base = results.get("graftkit")
    ratios = {n: {"accuracy": round(r["accuracy"] / base["accuracy"], 3), "seconds": round(r["seconds"] / base["seconds"], 2)}
              for n, r in results.items()} if base else {}
    print(f"\n{'contestant':16s} {'accuracy':>9s} {'seconds':>8s} {'acc/graftkit':>13s} {'s/graftkit':>11s}")
    for n, r in results.items():
        q = ratios.get(n, {})
        print(f"{n:16s} {r['accuracy']:9.4f} {r['seconds']:8.1f} {q.get('accuracy', float('nan')):13.3f} "
              f"{q.get('seconds', float('nan')):11.2f}")
    print(json.dumps({"contestants": results, "ratios": ratios, "budget": args.budget, "model": args.model,
                      "data": str(train_dir), "test": str(test_dir) if test_dir else f"{args.folds}-fold CV"}))


if __name__ == "__main__":
    main()
