"""One training step of lite0 on the CPU, taken apart, and how close it comes to the machine's own limit.

    python benchmarks/cpu_step.py [--size 112] [--batch 32] [--steps 8] [--threads N] [--compile]

  data        one batch from graftkit's own training data path: the built-in Fashion-MNIST demo set
              written as PNG class folders, decoded once into RAM and augmented, as `graft train` does
  forward, backward, optimiser
              the built-in lite0 with a new 10-class head under the default plan, AdamW, cross-entropy,
              in two memory layouts: NCHW (contiguous) and NHWC (channels-last, graftkit's default);
              the two alternate step by step, so load from other processes hits both alike
  compile     (--compile) torch.compile of the NHWC model too: its compile time, then its steps
  FLOP/s      a forward + backward's floating-point operations per second of forward + backward: the
              forward's convolutions and matmuls (torch.utils.flop_counter, 2 per multiply-add) times 3,
              as the backward computes a gradient for the input and one for the weights, each costing
              a forward (flop_counter's own backward count ignores groups: 40x too high for lite0's
              depthwise convolutions)
  peak        the best of float32 2048x2048 matmuls on the same threads, taken between the steps: the
              machine's own physical limit for this work; the step's FLOP/s is a fraction of it

  infer       images/s of the same model in eval mode under torch.inference_mode (no optimiser)

Times are the median over --steps steps after warm-up steps. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def matmul_seconds(n: int = 2048, repeats: int = 2) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return min(_timed(lambda: a @ b) for _ in range(repeats))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_data(folder: Path, size: int):
    """graftkit's training dataset (decoded once into RAM, augmented) and its normaliser."""
    from graftkit.data.demo_set import write_demo_set
    from graftkit.train.data import open_run_data
    from graftkit.tune import Plan
    from graftkit.models import resolve
    from graftkit.meta import meta_of
    write_demo_set(folder, split="train")
    plan = Plan.load(**{"data.size": size})
    data = open_run_data(str(folder), None, plan, meta_of(resolve("lite0")), seed=0)
    data.train.cache(1 << 30, progress=False)
    return data


def step_parts(model, opt, crit, x, y) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    loss = crit(model(x), y)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=112, help="input side (112: Fashion-MNIST's auto size for lite0)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also torch.compile the NHWC model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from graftkit.layout import channels_last
    from graftkit.models import resolve
    from graftkit.tune import Plan, apply

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = train_data(Path(tmp) / "fmnist", args.size)
        idx = list(range(args.batch))
        data_s = []
        for _ in range(args.steps):
            data_s.append(_timed(lambda: data.normalize(torch.stack([data.train[i][0] for i in idx]))))
        x = data.normalize(torch.stack([data.train[i][0] for i in idx]))
    y = torch.arange(args.batch) % 10

    variants = {}
    for name in ("nchw", "nhwc") + (("nhwc_compiled",) if args.compile else ()):
        model, tuning = apply(resolve("lite0"), Plan.load(), [str(i) for i in range(10)])
        model.train()
        inp = x
        if name != "nchw":
            model.to(memory_format=torch.channels_last)
            inp = channels_last(x)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        run = model
        compile_s = None
        if name == "nhwc_compiled":
            run = torch.compile(model)
            compile_s = _timed(lambda: step_parts(run, opt, nn.CrossEntropyLoss(), inp, y))
        variants[name] = {"model": run, "opt": opt, "x": inp, "times": [], "compile_s": compile_s}
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        variants["nchw"]["model"](x)
    step_flops = 3 * flops.get_total_flops()
    crit = nn.CrossEntropyLoss()
    matmul = []
    for i in range(args.steps + 2):
        for v in variants.values():
            parts = step_parts(v["model"], v["opt"], crit, v["x"], y)
            if i >= 2:
                v["times"].append(parts)
        matmul.append(matmul_seconds())
    peak = 2 * 2048 ** 3 / min(matmul)
    for v in variants.values():  # inference (eval mode, no autograd), alternating the layouts too
        v["model"].eval()
    infer = {name: [] for name in variants}
    with torch.inference_mode():
        for i in range(args.steps + 1):
            for name, v in variants.items():
                seconds = _timed(lambda: v["model"](v["x"]))
                if i >= 1:
                    infer[name].append(seconds)

    result = {"size": args.size, "batch": args.batch, "threads": torch.get_num_threads(),
              "matmul_peak_gflops": round(peak / 1e9, 1), "step_gflop": round(step_flops / 1e9, 2),
              "data_ms": round(1000 * statistics.median(data_s), 1)}
    print(f"lite0, {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads; float32 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s; a forward + backward is {step_flops / 1e9:.1f} GFLOP")
    print(f"data (graftkit's RAM-cached, augmented batch): {result['data_ms']:.0f} ms")
    print(f"{'layout':<15}{'forward':>10}{'backward':>10}{'optimiser':>11}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'infer img/s':>13}")
    for name, v in variants.items():
        f, b, o = (statistics.median(t[k] for t in v["times"]) for k in range(3))
        rate = args.batch / (f + b + o + result["data_ms"] / 1000)
        gflops = step_flops / (f + b) / 1e9
        result[name] = {"forward_ms": round(1000 * f, 1), "backward_ms": round(1000 * b, 1),
                        "optimiser_ms": round(1000 * o, 1), "img_s": round(rate, 1), "gflops": round(gflops, 1),
                        "of_peak": round(gflops * 1e9 / peak, 3),
                        "infer_img_s": round(args.batch / statistics.median(infer[name]), 1)}
        if v["compile_s"] is not None:
            result[name]["compile_s"] = round(v["compile_s"], 1)
        print(f"{name:<15}{1000 * f:>8.0f}ms{1000 * b:>8.0f}ms{1000 * o:>9.0f}ms{rate:>8.1f}{gflops:>9.1f}"
              f"{gflops * 1e9 / peak:>9.1%}{result[name]['infer_img_s']:>13.1f}" + (f"   (compiling took {v['compile_s']:.0f} s)" if v["compile_s"] else ""))
    result["nhwc_speedup"] = round(result["nhwc"]["img_s"] / result["nchw"]["img_s"], 2)
    result["nhwc_infer_speedup"] = round(result["nhwc"]["infer_img_s"] / result["nchw"]["infer_img_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
