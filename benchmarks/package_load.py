"""graftkit.load of a package vs torch.load of the same tensors saved as .pth (one run, ratios).

Two levels are timed, best of N, page cache warm for both sides:
  tensors: the package's tensors opened (memory map + header parse) vs torch.load(.pth)
  module:  graftkit.load -> ready module  vs  torch.load + build the model + load_state_dict,
           which is what a user of a .pth does to get the same module.
Target (issue 2): package loading >= 20x faster than torch.load. Last line: JSON.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import timm
import torch

import graftkit
from graftkit.formats.safetensors_file import open_safetensors

from timing import best  # benchmarks/timing.py (the script folder is on sys.path)

MODELS = sys.argv[1:] or ["efficientnet_lite0", "resnet50", "vit_base_patch16_224"]


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name in MODELS:
            net = timm.create_model(name).eval()
            pkg, pth = Path(d, f"{name}.safetensors"), Path(d, f"{name}.pth")
            graftkit.save(net, pkg, spec=f"timm:{name}")
            torch.save(net.state_dict(), pth)
            mb = pth.stat().st_size / 1e6

            def torch_module():
                state = torch.load(pth, weights_only=True)
                m = timm.create_model(name)
                m.load_state_dict(state)

            r = {"MB": round(mb, 1),
                 "torch_load_s": best(lambda: torch.load(pth, weights_only=True)),
                 "graftkit_tensors_s": best(lambda: open_safetensors(pkg)),
                 "torch_module_s": best(torch_module, 3),
                 "graftkit_load_s": best(lambda: graftkit.load(pkg))}
            r["tensors_ratio"] = r["torch_load_s"] / r["graftkit_tensors_s"]
            r["module_ratio"] = r["torch_module_s"] / r["graftkit_load_s"]
            results[name] = r
            print(f"{name:24s} {mb:7.1f} MB  tensors: torch.load {r['torch_load_s']*1e3:7.1f} ms, graftkit "
                  f"{r['graftkit_tensors_s']*1e3:6.2f} ms ({r['tensors_ratio']:6.1f}x)  |  module: .pth route "
                  f"{r['torch_module_s']*1e3:7.1f} ms, graftkit.load {r['graftkit_load_s']*1e3:6.1f} ms "
                  f"({r['module_ratio']:5.1f}x)", flush=True)
    print(json.dumps({"benchmark": "package_load", "target_tensors_ratio": 20, "results": results}))


if __name__ == "__main__":
    main()
