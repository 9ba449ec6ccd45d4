"""The data audit on planted problems, through the user's path (files on disk, the `graft` command).

    labels   the Fashion-MNIST demo training split (1,000 PNGs) with 5 % of its labels flipped at
             random (seeded) to another class; `graft train --strategy probe` with the demo's
             validation split, which writes the run's report. The audit's top-N label-error list
             (N = number flipped) is compared with the flips: recall = precision at N.
    leakage  10 test images copied into the training data (5 as they are, 5 re-encoded as JPEG at
             2x size); `graft report RUN --data test`. Counted: copies flagged as train/test
             duplicates, and false alarms (flagged pairs that are not a planted copy) on the untouched
             demo set (a run on the clean training split).

    python benchmarks/audit.py [--work DIR] [--seed 0] [--flip 0.05] [--copies 10]
Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from timing import graft_seconds  # benchmarks/timing.py (the script folder is on sys.path)


def write_list(path: Path, rows: list[tuple[int, str]], classes: list[str]) -> Path:
    from graftkit.data.lists import save_classes
    path.write_text("".join(f"{i}\t{label}\t{rel}\n" for i, (label, rel) in enumerate(rows)))
    save_classes(path.with_suffix(".classes.json"), classes, root=path.parent)
    return path


def split_rows(root: Path, split: str) -> tuple[list[tuple[int, str]], list[str]]:
    classes = sorted(p.name for p in (root / split).iterdir())
    return [(c, str(f.relative_to(root.parent))) for c, name in enumerate(classes)
            for f in sorted((root / split / name).glob("*.png"))], classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--copies", type=int, default=10)
    a = ap.parse_args()
    from PIL import Image
    from graftkit.data import write_demo_set
    work = a.work or Path(tempfile.mkdtemp(prefix="graft-audit-"))
    env = {**os.environ, "GRAFTKIT_CACHE": str(work / "cache")}
    write_demo_set(work / "demo")
    train, classes = split_rows(work / "demo", "train")
    val, _ = split_rows(work / "demo", "val")
    test, _ = split_rows(work / "demo", "test")
    lists = {"val": write_list(work / "val.lst", val, classes), "test": write_list(work / "test.lst", test, classes)}
    rng = random.Random(a.seed)
    results: dict = {"seed": a.seed}

    # label errors
    flipped = set(rng.sample(range(len(train)), round(a.flip * len(train))))
    noisy = [((c + rng.randrange(1, len(classes))) % len(classes), p) if i in flipped else (c, p)
             for i, (c, p) in enumerate(train)]
    lists["noisy"] = write_list(work / "train_noisy.lst", noisy, classes)
    seconds = graft_seconds("train", "--model", "lite0", "--strategy", "probe", "--train", lists["noisy"], "--val",
                    lists["val"], "-o", work / "run_noisy", env=env)
    audit = json.loads((work / "run_noisy" / "audit.json").read_text())
    issues = next(li for li in audit["label_issues"] if li["split"] == "train")
    top = {r["index"] for r in issues["ranked"][:len(flipped)]}
    flagged = {r["index"] for r in issues["ranked"] if r["flagged"]}
    hit = len(top & flipped)
    results["labels"] = {"images": len(train), "flipped": len(flipped), "found_in_top_n": hit,
                         "recall_at_n": round(hit / len(flipped), 3), "precision_at_n": round(hit / len(flipped), 3),
                         "flagged": issues["flagged"], "flagged_recall": round(len(flagged & flipped) / len(flipped), 3),
                         "flagged_precision": round(len(flagged & flipped) / max(1, len(flagged)), 3),
                         "train_and_report_seconds": round(seconds, 1)}
    print(f"label errors: {hit}/{len(flipped)} flipped labels in the top {len(flipped)} "
          f"(recall = precision at N {hit / len(flipped):.1%}); confident-learning flags {issues['flagged']} "
          f"images, recall {len(flagged & flipped) / len(flipped):.1%}, precision "
          f"{len(flagged & flipped) / max(1, len(flagged)):.1%}", flush=True)

    # leakage: a clean run (false alarms), then test copies planted in the training data
    lists["clean"] = write_list(work / "train.lst", train, classes)
    graft_seconds("train", "--model", "lite0", "--strategy", "probe", "--train", lists["clean"], "--val", lists["val"],
          "-o", work / "run_clean", "--no-report", env=env)
    graft_seconds("report", work / "run_clean", "--data", lists["test"], env=env)
    clean = json.loads((work / "run_clean" / "audit.json").read_text())["duplicates"]
    (work / "copies").mkdir(exist_ok=True)
    planted, leaky = {}, list(train)
    for n, k in enumerate(rng.sample(range(len(test)), a.copies)):
        c, rel = test[k]
        src = work / rel
        dst = work / "copies" / (f"leak{n}.jpg" if n % 2 else f"leak{n}.png")
        if n % 2:
            Image.open(src).convert("RGB").resize((56, 56), Image.BILINEAR).save(dst, quality=85)
        else:
            dst.write_bytes(src.read_bytes())
        planted[str(dst.relative_to(work))] = rel
        leaky.append((c, str(dst.relative_to(work))))
    lists["leaky"] = write_list(work / "train_leaky.lst", leaky, classes)
    graft_seconds("train", "--model", "lite0", "--strategy", "probe", "--train", lists["leaky"], "--val", lists["val"],
          "-o", work / "run_leaky", "--no-report", env=env)
    graft_seconds("report", work / "run_leaky", "--data", lists["test"], env=env)
    dup = json.loads((work / "run_leaky" / "audit.json").read_text())["duplicates"]
    across = [p for p in dup["exact"] + dup["near"] if {p["a"], p["b"]} == {"train", "evaluated"}]
    found = {p["a_name"] for p in across if "leak" in p["a_name"]}
    false = [p for p in dup["exact"] + dup["near"] if not any(k in (p["a_name"], p["b_name"]) or
                                                             k in p["a_name"] for k in planted)]
    results["leakage"] = {"planted": a.copies, "flagged": len(found), "false_alarms_with_copies": len(false),
                          "false_alarms_clean": sum(v["exact"] + v["near"] for v in clean["counts"].values()),
                          "counts_clean": clean["counts"]}
    print(f"leakage: {len(found)}/{a.copies} planted copies flagged as train/test duplicates; false alarms on the "
          f"untouched demo set: {results['leakage']['false_alarms_clean']}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
