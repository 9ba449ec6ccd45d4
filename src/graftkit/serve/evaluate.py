"""Evaluate a classifier on a labelled data set: top-1, top-5, per-class accuracy, confusion matrix.

The data's labels and the model's outputs are matched by class NAME (the data's
class map against the package's class list), never by position alone: a data set
whose folders sort differently from the model's classes is still scored right.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..atomic import atomic_open
from ..errors import GraftError
from ..layout import channels_last_while
from ..progress import make_progress
from .inference import MainOutput, classes_of, input_shape_of, num_outputs, preprocessing_of, run_net

OTHER = "(other)"  # column for predictions of model classes the data does not have


def class_mapping(data_classes: Sequence[str], model_classes: Sequence[str] | None, n_outputs: int,
                  where: str = "the data") -> list[int]:
    """For each data label, the model output index of the same class name."""
    if model_classes is None:
        if len(data_classes) != n_outputs:
            raise GraftError(f"the model has no class names and {n_outputs} outputs, but {where} has "
                             f"{len(data_classes)} classes", "evaluate a graftkit package trained on these classes")
        return list(range(n_outputs))  # no names to match: the only possible mapping is by position
    if len(model_classes) != n_outputs:
        raise GraftError(f"the model lists {len(model_classes)} class names but has {n_outputs} outputs",
                         "the package metadata is inconsistent; re-save it with the right classes")
    index = {name: i for i, name in enumerate(model_classes)}
    missing = [c for c in data_classes if c not in index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise GraftError(f"{where} has classes the model does not know: {shown} (model classes: "
                         f"{', '.join(list(model_classes)[:8])}{' ...' if len(model_classes) > 8 else ''})",
                         "evaluate on data with the model's class names, or fine-tune the model on these classes")
    return [index[c] for c in data_classes]


class ConfusionCounter:
    """Accumulates top-1/top-k hits and the confusion matrix, batch by batch."""

    def __init__(self, data_classes: Sequence[str], mapping: list[int], n_outputs: int, k: int = 5):
        self.classes = list(data_classes)
        self.k = min(k, n_outputs)
        n = len(self.classes)
        # model output index -> confusion column; outputs the data lacks go to the OTHER column
        self.extra = n_outputs > n
        column = torch.full((n_outputs,), n, dtype=torch.long)
        column[torch.tensor(mapping, dtype=torch.long)] = torch.arange(n)
        self.column = column
        self.target = torch.tensor(mapping, dtype=torch.long)
        self.confusion = torch.zeros(n, n + 1, dtype=torch.long)
        self.topk_hits = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.detach().float().cpu(), labels.cpu().long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise GraftError(f"a label is outside 0..{len(self.classes) - 1}", "check the data's class map")
        want = self.target[labels]
        top = logits.topk(self.k, dim=1).indices
        self.topk_hits += int((top == want[:, None]).any(dim=1).sum())
        pred = self.column[top[:, 0]]
        self.confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)

    def result(self) -> dict[str, Any]:
        n = int(self.confusion.sum())
        if n == 0:
            raise GraftError("the data set has no images to evaluate", "check the data path")
        diag = self.confusion.diagonal()
        per_row = self.confusion.sum(dim=1)
        conf = self.confusion if self.extra else self.confusion[:, :-1]
        return {
            "top1": int(diag.sum()) / n,
            "top5": self.topk_hits / n,
            "per_class": {c: (int(diag[i]) / int(per_row[i]) if per_row[i] else None)
                          for i, c in enumerate(self.classes)},
            "confusion": conf.tolist(),
            "n": n,
            "classes": self.classes,
            "columns": self.classes + ([OTHER] if self.extra else []),
            "k": self.k,
        }


class _EachOnce(torch.utils.data.Dataset):
    """An ImageDataset scored image by image: an undecodable image is left out and named, not
    replaced by its neighbour (the substitution that keeps training going would count that one twice)."""

    def __init__(self, dataset):
        self.dataset, self.classes = dataset, dataset.classes
        c, (h, w) = dataset.transform.channels, dataset.transform.size
        self.blank = torch.zeros(c, h, w)
        self.skipped: list[str] = []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        from ..data.decode import DecodeError
        try:
            image = self.dataset.decode(i)
        except DecodeError as e:
            self.skipped.append(f"{self.dataset.name(i)}: {e}")
            return self.blank, -1
        return self.dataset.transform(image), int(self.dataset.targets[i])


def _open_data(data: Any, model: nn.Module):
    """A dataset of (image tensor, label) with a `classes` list, preprocessed as the model wants."""
    if hasattr(data, "classes") and hasattr(data, "__getitem__"):
        return data
    from ..data.dataset import ImageDataset
    from ..data.transforms import eval_pipeline
    return _EachOnce(ImageDataset.open(data, eval_pipeline(preprocessing_of(model))))


@dataclass
class Scores:
    """One pass of a model over a labelled data set: the main output of every image that decoded."""
    logits: torch.Tensor          # [N, outputs], float32
    labels: torch.Tensor          # [N] data labels
    index: torch.Tensor           # [N] the images' positions in the data set
    dataset: Any                  # what was scored (for names and pixels)
    mapping: list[int]            # data label -> model output index
    features: torch.Tensor | None = None   # [N, C] the classifier's input, when asked for
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def score(model: nn.Module | str | os.PathLike, data: Any, *, batch_size: int = 64,
          device: str | torch.device | None = None, num_workers: int = 0, progress: bool | None = None,
          trust: bool = False, calibrated: bool = True, keep_features: bool = False) -> Scores:
    """Run `model` over `data` once and keep its outputs (see evaluate for the kinds of data)."""
    import time
    from ..models import resolve
    from ..tune.head import find_head
    model = resolve(model, trust=trust)  # (a package naming Python code builds only with trust)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = _open_data(data, model)
    n_out = num_outputs(model, input_shape_of(model))
    mapping = class_mapping(list(dataset.classes), classes_of(model), n_out, where=str(data))
    net = MainOutput(model, calibrated=calibrated).to(device).eval()
    taken: list[torch.Tensor] = []
    hook = None
    head = find_head(model) if keep_features else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    logits, labels, index, at = [], [], [], 0
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        nhwc = stack.enter_context(channels_last_while(net, input_shape_of(model)))  # (its trial forward: before the hook)
        if head is not None:  # the classifier's input comes free with the forward pass
            hook = model.get_submodule(head).register_forward_hook(
                lambda _m, args, _out: taken.append(args[0].detach().flatten(1).float().cpu()))
            stack.callback(lambda: hook is not None and hook.remove())
        with make_progress("img", disable=None if progress is None else not progress) as bar, torch.inference_mode():
            task = bar.add_task("evaluate", total=len(dataset), rate="")
            for images, y in loader:
                keep = y >= 0
                if keep.any():
                    logits.append(run_net(net, images[keep].to(device), nhwc).float().cpu())
                    labels.append(y[keep])
                    index.append(torch.arange(at, at + len(y))[keep])
                    if hook is not None and taken and len(taken[-1]) != int(keep.sum()):
                        hook.remove()   # a head run more than once per image: no features to keep
                        hook, taken = None, []
                at += len(y)
                speed = bar.tasks[0].speed
                bar.update(task, advance=len(y), rate=f"{speed:.1f} img/s" if speed else "")
    if not logits:
        raise GraftError(f"{data}: the data set has no images to evaluate", "check the data path")
    return Scores(torch.cat(logits), torch.cat(labels), torch.cat(index), dataset, mapping,
                  torch.cat(taken) if taken else None, list(getattr(dataset, "skipped", [])),
                  time.perf_counter() - t0)


def metrics(scores: Scores) -> dict[str, Any]:
    """Top-1, top-k, per-class accuracy and the confusion matrix of a scored data set."""
    counter = ConfusionCounter(scores.dataset.classes, scores.mapping, scores.logits.shape[1])
    counter.update(scores.logits, scores.labels)
    result = counter.result()
    n_skipped = len(scores.dataset) - len(scores.labels)
    if n_skipped:  # undecodable images: named (when read in this process) and left out of every metric
        result["skipped"] = n_skipped
        result["skipped_files"] = scores.skipped
    return result


def evaluate(model: nn.Module | str | os.PathLike, data: Any, *, batch_size: int = 64,
             device: str | torch.device | None = None, out_dir: str | os.PathLike | None = None,
             num_workers: int = 0, progress: bool | None = None, trust: bool = False) -> dict[str, Any]:
    """Score `model` (a module or any reference graftkit.models.resolve takes) on `data`.

    `data` is a class folder, a .lst file or a RecordIO pack (or a dataset with a
    `classes` list). Returns {"top1", "top5", "per_class", "confusion", "n", ...};
    with `out_dir`, also writes metrics.json and confusion.png there.
    """
    result = metrics(score(model, data, batch_size=batch_size, device=device, num_workers=num_workers,
                           progress=progress, trust=trust))
    if out_dir is not None:
        write_report(result, out_dir)
    return result


def write_report(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """metrics.json and confusion.png in `out_dir` (each written atomically)."""
    import json
    from .plots import confusion_png
    out = Path(out_dir)
    paths = {"metrics": out / "metrics.json", "confusion_plot": out / "confusion.png"}
    with atomic_open(paths["metrics"], "w") as f:
        json.dump(result, f, indent=2)
    confusion_png(result["confusion"], result["classes"], result["columns"], paths["confusion_plot"],
                  title=f"top-1 {result['top1']:.1%} on {result['n']} images")
    return paths
