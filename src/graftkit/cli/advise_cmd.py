"""`graft advise`: measure how a pretrained network's features fit the data and recommend a strategy."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import err, out, print_json, print_table


def register(app: typer.Typer) -> None:
    @app.command()
    def advise(data: Path = typer.Argument(..., help="training data: class folder, .lst or RecordIO pack"),
               model: str = typer.Option("lite0", "--model", "-m", help="lite0, timm:NAME, torchvision:NAME or a package"),
               val: Optional[Path] = typer.Option(None, "--val", help="also score every probe on this validation data"),
               budget: Optional[float] = typer.Option(None, "--budget", "--time-budget",
                                                      help="seconds of training you will give `graft train`"),
               at: List[str] = typer.Option([], "--at", help="probe at this depth (repeatable; default: every stage "
                                                             "end and pre_logits)"),
               size: Optional[int] = typer.Option(None, "--size", help="input side in pixels (default: as graft train)"),
               cache: Optional[Path] = typer.Option(None, "--cache", help="feature cache folder"),
               seed: int = typer.Option(0, "--seed", help="seed of the cross-validation folds"),
               plan_out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the recommended plan (YAML) "
                                                                                 "for `graft train --plan`"),
               trust: bool = typer.Option(False, "--trust", help="build a package whose architecture is a Python file"),
               json_: bool = typer.Option(False, "--json", help="print every number behind the decision as JSON")) -> None:
        """Probe MODEL's features at every depth on DATA (cross-validated, cached) and recommend how to train:
        a linear probe, a probe at an earlier depth, a partial or a full fine-tune."""
        from ..advise import recommend
        from ..advise.advice import score_on
        from ..data import ImageDataset
        from ..models import resolve
        from ..train.data import preprocessing_for
        from ..tune import Plan
        from ..meta import meta_of
        module = resolve(model, trust=trust)
        ds = ImageDataset.open(data)
        plan = Plan.load(None, size=size)
        pre = preprocessing_for(meta_of(module).get("preprocessing"), plan, ds)
        advice = recommend(module, ds, budget=budget, at=at or None, preprocessing=pre, cache_dir=cache, seed=seed,
                           progress=None if not json_ else False)
        if val is not None:
            score_on(advice, module, val, preprocessing=pre, cache_dir=cache, progress=None if not json_ else False)
        if plan_out is not None:
            _write_plan(plan_out, advice, budget, size)
        if json_:
            print_json({"model": model, "data": str(data), **advice.to_json(),
                        "input_size": pre["input_size"], "plan": str(plan_out) if plan_out else None})
            return
        d = advice.data
        print_table(f"{d['images']} images, {d['classes']} classes (imbalance {d['imbalance']}x)",
                    ["class", "images"], list(d["per_class"].items()), justify={"images": "right"})
        print_table(f"linear probes on {model}'s features at {pre['input_size'][1]} px "
                    f"({advice.probes[0].folds}-fold cross-validated)",
                    ["depth", "dim", "probe accuracy", "nearest mean", "L2", "seconds"] + (["on --val"] if val else []),
                    [(p.depth, p.dim, f"{p.cv_acc:.1%} ± {p.cv_std:.1%}", f"{p.ncm_acc:.1%}", f"{p.l2:g}",
                      f"{p.seconds:.1f}") + ((f"{p.val_acc:.1%}",) if val else ()) for p in advice.probes],
                    justify={"dim": "right", "probe accuracy": "right", "nearest mean": "right", "seconds": "right"})
        out.print(f"scenario: {advice.scenario}", soft_wrap=True)
        out.print(f"recommended: [bold]{advice.strategy}[/] - {advice.why}", soft_wrap=True)
        out.print(f"expected training time: about {advice.expected_seconds:.0f} s "
                  f"(a training step runs {advice.speed['train_img_s']:.0f} img/s here"
                  + (f", {advice.speed['cut_train_img_s']:.0f} img/s cut at {advice.speed['cut_at']}"
                     if "cut_at" in advice.speed else "") + "; "
                  f"measuring took {advice.spent_seconds:.1f} s"
                  + (f", features of {', '.join(advice.cached_depths)} from the cache" if advice.cached_depths else "")
                  + ")", soft_wrap=True)
        if plan_out is not None:
            err.print(f"wrote {plan_out}: graft train --plan {plan_out} --train {data} ...")


def _write_plan(path: Path, advice, budget, size) -> None:
    import yaml
    from ..atomic import atomic_open
    doc = {"strategy": advice.strategy}
    if budget is not None:
        doc["time_budget"] = budget
    if size is not None:
        doc["data"] = {"size": size}
    text = (f"# graft advise: {advice.scenario}\n# {advice.why}\n" + yaml.safe_dump(doc, sort_keys=False))
    with atomic_open(path, "w") as f:
        f.write(text)
