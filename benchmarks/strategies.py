"""Every training strategy, through the user's own path, on two real data sets.

    fmnist     Fashion-MNIST 100 images/class as PNG class folders (Debian `dataset-fashion-mnist`),
               `graft train --strategy S --time-budget B`, then `graft evaluate` on the full 10,000-image
               test set written as PNG folders too. Far from ImageNet.
    ants_bees  ../shared/datasets/ants_bees (245 photos, 2 classes; no test split): 5-fold stratified CV,
               each fold `graft train --strategy S --train fold.lst --val held.lst`, accuracy from the
               run's summary.json. Close to ImageNet.

Every command runs in a fresh process on files on disk, with a fresh feature cache per data set
and strategy (the first `graft train` of each pays for its features). Reported per strategy:
accuracy and training wall time (the `graft train` process, start to exit). Last line: JSON.

    cache      `graft advise` twice on unchanged data (fresh cache, fresh processes): the second reads
               the features, probes and speed from the cache. On ants_bees and on the Fashion-MNIST test
               folder (10,000 PNGs, the larger data the cache is for).

    python benchmarks/strategies.py [--sets fmnist,ants_bees,cache] [--only auto,probe,...] [--budget 300]
        [--ab-budget 120] [--work DIR] [--test-limit 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANTS_BEES = HERE.parent.parent / "shared" / "datasets" / "ants_bees"
STRATEGIES = ["auto", "probe", "probe-at:blocks.4", "lp-ft", "partial", "finetune", "scratch"]


def graft(*args, env=None) -> tuple[dict, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "graftkit.cli.main", *map(str, args), "--json"], capture_output=True,
                       text=True, env=env)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"graft {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout), seconds


def write_fmnist(work: Path, per_class: int, test_limit: int) -> tuple[Path, Path]:
    """PNG class folders: the seeded 100/class training subset and the test set."""
    import numpy as np
    from PIL import Image
    from graftkit.data import FASHION_MNIST_CLASSES, fashion_mnist_subset, load_fashion_mnist
    names = [c.lower().replace("/", "_").replace(" ", "_") for c in FASHION_MNIST_CLASSES]
    train, test = work / "fmnist" / "train", work / "fmnist" / "test"
    for folder, (x, y), limit in ((train, fashion_mnist_subset(per_class, "train", seed=0), None),
                                  (test, load_fashion_mnist("test"), test_limit)):  # (the limit is the test set's)
        if folder.exists():
            continue
        part = folder.with_suffix(".part")
        shutil.rmtree(part, ignore_errors=True)
        for i, (img, label) in enumerate(zip(x[:limit], y[:limit])):
            d = part / names[int(label)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(img)).save(d / f"{i:05d}.png")
        part.rename(folder)
    return train, test


def ab_folds(work: Path, k: int = 5) -> list[tuple[Path, Path]]:
    """Stratified k-fold .lst pairs over ants_bees (seeded), rooted at the shared folder."""
    import numpy as np
    from graftkit.data.index import index_folder
    from graftkit.data.lists import classes_path, save_classes, write_lst
    lst = index_folder(ANTS_BEES)
    labels = np.array([e.label for e in lst.entries])
    rng = np.random.default_rng(0)
    fold_of = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % k
    out = []
    for f in range(k):
        pair = []
        for name, keep in (("train", fold_of != f), ("val", fold_of == f)):
            path = work / "ants_bees" / f"fold{f}_{name}.lst"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_lst(path, [e for e, m in zip(lst.entries, keep) if m])
            save_classes(classes_path(path), lst.classes, root=ANTS_BEES)
            pair.append(path)
        out.append(tuple(pair))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fmnist,ants_bees,cache")
    ap.add_argument("--only", default=",".join(STRATEGIES))
    ap.add_argument("--budget", type=float, default=300.0, help="Fashion-MNIST --time-budget (seconds)")
    ap.add_argument("--ab-budget", type=float, default=120.0, help="ants_bees --time-budget per fold (seconds)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp folder)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="graft-strategies-"))
    work.mkdir(parents=True, exist_ok=True)
    only = [s for s in args.only.split(",") if s]
    results: dict[str, dict] = {}

    if "fmnist" in args.sets:
        train, test = write_fmnist(work, args.per_class, args.test_limit)
        for s in only:
            run = work / "runs" / f"fmnist-{s.replace(':', '_')}"
            shutil.rmtree(run, ignore_errors=True)
            env = {**os.environ, "GRAFTKIT_CACHE": str(run / "cache")}
            summary, seconds = graft("train", "--model", "lite0", "--train", train, "-o", run, "--strategy", s,
                                     "--time-budget", args.budget, env=env)
            ev, _ = graft("evaluate", run / "best.safetensors", test, env=env)
            chosen = summary["strategy"]["chosen"]
            results[f"fmnist/{s}"] = {"top1": round(ev["top1"], 4), "train_s": round(seconds, 1), "chosen": chosen,
                                      "epochs": summary["epochs"], "test_images": ev["n"]}
            print(f"fmnist     {s:18s} -> {chosen:18s} test top-1 {ev['top1']:.4f}  train {seconds:6.1f} s "
                  f"({summary['epochs']} epochs)", flush=True)

    if "ants_bees" in args.sets:
        folds = ab_folds(work, args.folds)
        for s in only:
            accs, secs, chosen = [], [], set()
            for f, (tr, va) in enumerate(folds):
                run = work / "runs" / f"ab-{s.replace(':', '_')}-{f}"
                shutil.rmtree(run, ignore_errors=True)
                env = {**os.environ, "GRAFTKIT_CACHE": str(run / "cache")}
                summary, seconds = graft("train", "--model", "lite0", "--train", tr, "--val", va, "-o", run,
                                         "--strategy", s, "--time-budget", args.ab_budget, env=env)
                # the held-out fold's accuracy at the end of the run (not the best epoch's: that one chose by it)
                accs.append(summary["val"]["top1"] if summary["epochs"] == 0 else summary["last"]["val_top1"])
                secs.append(seconds)
                chosen.add(summary["strategy"]["chosen"])
            import statistics
            results[f"ants_bees/{s}"] = {"cv_top1": round(statistics.mean(accs), 4),
                                         "cv_std": round(statistics.pstdev(accs), 4),
                                         "train_s": round(statistics.mean(secs), 1), "chosen": sorted(chosen)}
            print(f"ants_bees  {s:18s} -> {','.join(sorted(chosen)):18s} {args.folds}-fold CV top-1 "
                  f"{statistics.mean(accs):.4f} ± {statistics.pstdev(accs):.4f}  train {statistics.mean(secs):6.1f} s/fold",
                  flush=True)
    if "cache" in args.sets:
        sets = {"ants_bees": ANTS_BEES}
        if "fmnist" in args.sets or (work / "fmnist" / "test").exists():
            sets["fmnist_test"] = write_fmnist(work, args.per_class, args.test_limit)[1]
        for name, data in sets.items():
            env = {**os.environ, "GRAFTKIT_CACHE": str(work / "runs" / f"advise-cache-{name}")}
            shutil.rmtree(env["GRAFTKIT_CACHE"], ignore_errors=True)
            first, t1 = graft("advise", data, env=env)
            second, t2 = graft("advise", data, env=env)
            assert second["strategy"] == first["strategy"] and len(second["cached_depths"]) == len(first["probes"])
            results[f"cache/{name}"] = {"first_s": round(t1, 1), "second_s": round(t2, 2), "ratio": round(t1 / t2, 1),
                                        "images": first["data"]["images"]}
            print(f"cache      {name:18s} graft advise: first {t1:6.1f} s, second {t2:5.2f} s ({t1 / t2:.1f}x)",
                  flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
