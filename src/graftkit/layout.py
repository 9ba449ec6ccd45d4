"""Channels-last memory format for convolutional networks.

Convolutions over NHWC tensors run faster than over NCHW ones, on CPU (oneDNN) as on GPU tensor
cores: lite0 at 112 px on 2 CPU cores trains at 1.7x the images per second and infers at 1.44x
(`python benchmarks/cpu_step.py`). The results are the same up to float rounding.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn as nn


def to_channels_last(module: nn.Module, input_size: Sequence[int]) -> bool:
    """Put `module`'s 4-D weights in channels-last order when the network runs on a channels-last input
    of `input_size` (C, H, W); a graph that cannot (one that views its activations as NCHW-contiguous)
    is left as it was. Returns whether the module was converted."""
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return False
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    was = module.training
    module.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            module.eval()(channels_last(torch.zeros(1, *input_size, device=device)))
    except Exception:  # (any error the graph raises: it then runs as before)
        module.to(memory_format=torch.contiguous_format)
        return False
    finally:
        module.train(was)
    return True


@contextlib.contextmanager
def channels_last_while(module: nn.Module, input_size: Sequence[int]) -> Iterator[bool]:
    """to_channels_last for a with-block (yields whether it converted), then the caller's module gets its
    own layout back: same values either way, but a user's tensors should not change strides under them
    (safetensors, for one, refuses to save a non-contiguous tensor)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.dim() == 4 and t.is_contiguous()]
    converted = to_channels_last(module, input_size)
    try:
        yield converted
    finally:
        if converted:
            for t in tensors:
                t.data = t.data.contiguous()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """An image batch in channels-last order (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
