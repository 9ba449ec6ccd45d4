"""What serving needs from any model: its main output, its class names, its preprocessing.

Models come in several shapes: a plain classifier returns a tensor; a converted
multi-output net returns a dict keyed by its source's output names; Inception-style
nets may return (logits, aux_logits). Serving (evaluate, predict, export) always
uses the main output, so auxiliary heads never reach a user or an exported file.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import GraftError
from ..layout import channels_last
from ..meta import imagenet_preprocessing, meta_of
from .calibration import are_probabilities, temperature_of

_AUX_HINTS = ("aux", "loss1", "loss2")


def main_output_name(names: list[str], meta: dict[str, Any] | None = None) -> str:
    """Which of a dict's outputs is the main one: the package's choice, else the one not named as auxiliary."""
    chosen = ((meta or {}).get("extra") or {}).get("main_output")
    if chosen in names:
        return chosen
    plain = [n for n in names if not any(h in n.lower() for h in _AUX_HINTS)]
    # Caffe and Keras list the final classifier last (GoogLeNet: loss1, loss2, loss3).
    return (plain or names)[-1]


def main_output(out: Any, meta: dict[str, Any] | None = None) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and out:
        return out[main_output_name(list(out), meta)]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]  # torchvision/timm put the logits first, the auxiliary logits after
    raise GraftError(f"the model returns {type(out).__name__}, not a tensor of class scores",
                     "serve a classifier whose forward() returns logits")


class MainOutput(nn.Module):
    """`model` reduced to its main output: what is exported and served. A package's fitted
    temperature divides the logits (calibrated probabilities, same predictions) unless `calibrated=False`."""

    def __init__(self, model: nn.Module, calibrated: bool = True):
        super().__init__()
        self.model = model
        self._meta = meta_of(model)
        self._name: str | None = None  # the main key of a dict output, resolved on the first call
        self.temperature = temperature_of(self._meta) if calibrated else None
        # a network that ends in Softmax is tempered on its log-probabilities (calibration.py)
        self._probabilities = (self._meta.get("calibration") or {}).get("scores") == "probabilities"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, dict):
            # A fixed key keeps tracing and scripting simple.
            if self._name is None:
                self._name = main_output_name(list(out), self._meta)
            out = out[self._name]
        else:
            out = main_output(out, self._meta)
        if self.temperature is None:
            return out
        if self._probabilities:
            return (out.clamp_min(1e-12).log() / self.temperature).softmax(-1)
        return out / self.temperature


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a network's scores [N, K]: the softmax of logits, or the scores as they
    are when they already are probabilities (a second softmax would flatten them towards 1/K)."""
    return scores.float() if are_probabilities(scores) else scores.float().softmax(1)


def classes_of(model: nn.Module) -> list[str] | None:
    classes = meta_of(model).get("classes")
    return [str(c) for c in classes] if classes else None


def preprocessing_of(model: nn.Module) -> dict[str, Any]:
    """The model's preprocessing; ImageNet's defaults for a bare architecture spec (which has none)."""
    return meta_of(model).get("preprocessing") or imagenet_preprocessing()


def input_shape_of(model: nn.Module) -> tuple[int, int, int]:
    from ..data.transforms import complete
    c, h, w = complete(preprocessing_of(model))["input_size"]  # (checked: types, channels, bounds)
    return int(c), int(h), int(w)


def run_net(net: nn.Module, x: torch.Tensor, nhwc: bool = False) -> torch.Tensor:
    """`net(x)` on preprocessed images; a network that cannot take them (a package whose preprocessing
    does not fit its network: channels, size) is one GraftError, not torch's traceback. `nhwc`: the net
    was made channels-last (layout.to_channels_last), so the images are made so too."""
    try:
        return net(channels_last(x) if nhwc else x)
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as e:  # (torch's and a package graph's)
        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise GraftError(f"the network cannot run on its preprocessed input of shape {list(x.shape)} ({first})",
                         "the package's preprocessing (input_size, channels) does not fit its network; "
                         "set it again with the right --input-size") from None


def num_outputs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.inference_mode():
        return int(run_net(MainOutput(model).eval(), torch.zeros(1, *shape)).shape[-1])
