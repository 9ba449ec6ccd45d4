"""PyTorch checkpoints (.pt/.pth/.bin/.ckpt/.tar), zip-based or legacy pickles.

A checkpoint is a pickle, and unpickling can run arbitrary code, so we load with
`torch.load(weights_only=True)`, whose restricted unpickler only rebuilds
tensors and plain containers. A file that needs more is refused unless the user
says they made it (`trust=True`). Training checkpoints wrap the weights
(`{"state_dict": ..., "optimizer": ...}`, `{"model": ..., "ema": ...}`) and
DataParallel/torch.compile prefix their names; both are undone here so that
downstream code sees a plain state dict.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import GraftError
from .base import TensorSet
from .safetensors_file import records_from_state_dict

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
# Keys under which training scripts nest the weights, most specific first.
WRAPPERS = ("state_dict", "model_state", "model_state_dict", "model", "module", "net", "network",
            "params", "ema", "model_ema", "state_dict_ema")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
PREFIXES = ("module.", "_orig_mod.")
# The legacy (pre-1.6) format starts with this pickled magic number.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def sniff(path: Path, head: bytes) -> bool:
    if path.suffix.lower() in SUFFIXES:
        return True
    if head.startswith(LEGACY_MAGIC):
        return True
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _load(path: Path, trust: bool) -> Any:
    is_zip = zipfile.is_zipfile(path)
    try:
        # mmap avoids reading the whole file up front; only the zip format supports it.
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if not trust and "weights only load failed" in str(e).lower():
            raise GraftError(f"{path}: this checkpoint contains Python objects whose loading could run code",
                             "pass --trust (trust=True) only if you made this file yourself") from None
        raise GraftError(f"{path}: corrupt PyTorch checkpoint ({_first_line(e)})",
                         "the file is damaged or truncated; re-download or re-save it") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            AttributeError, ModuleNotFoundError, ImportError) as e:
        if isinstance(e, (ModuleNotFoundError, AttributeError, ImportError)) and trust:
            raise GraftError(f"{path}: the checkpoint refers to Python code that is not installed "
                             f"({_first_line(e)})", "install the package that saved it") from None
        what = "truncated or corrupt" if not isinstance(e, (ModuleNotFoundError, ImportError)) else "unreadable"
        raise GraftError(f"{path}: {what} PyTorch checkpoint ({_first_line(e)})",
                         "re-download or re-save the file") from None
    except OSError as e:
        raise GraftError(f"{path}: cannot read: {e.strerror or e}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0].split(". ")[0] if text else type(e).__name__)[:200]


def _tensors_in(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return {}


def unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flat name -> tensor state dict, facts about what was unwrapped/ignored)."""
    facts: dict[str, Any] = {}
    path = []
    while True:
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
            facts["saved_as"] = "nn.Module"
        if not isinstance(obj, dict):
            break
        nested = [k for k in WRAPPERS if isinstance(obj.get(k), (dict, torch.nn.Module))]
        # Descend only while this level holds no tensors of its own.
        if nested and not _tensors_in(obj):
            key = nested[0]
            facts.setdefault("ignored", []).extend(".".join(path + [str(k)]) for k in obj if k != key)
            path.append(key)
            obj = obj[key]
            continue
        break
    if path:
        facts["unwrapped"] = ".".join(path)
    state = _tensors_in(obj)
    if isinstance(obj, dict):
        skipped = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if skipped:
            facts.setdefault("ignored", []).extend(".".join(path + [k]) for k in skipped)
    elif obj is not None:
        facts["ignored"] = [type(obj).__name__]
    return state, facts


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes that every name carries (module., _orig_mod.)."""
    stripped = []
    changed = True
    while changed and state:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                stripped.append(p)
                changed = True
    return state, stripped


def read(path: Path, *, trust: bool = False) -> TensorSet:
    path = Path(path)
    obj = _load(path, trust)
    state, facts = unwrap(obj)
    if not state:
        raise GraftError(f"{path}: the checkpoint holds no tensors"
                         + (f" (found {', '.join(facts.get('ignored', [])[:8])})" if facts.get("ignored") else ""),
                         "save the model's state_dict()")
    state, stripped = strip_prefixes(state)
    meta: dict[str, Any] = {"framework": "pytorch", "container": "zip" if zipfile.is_zipfile(path) else "legacy"}
    if stripped:
        meta["stripped_prefixes"] = stripped
    if len(facts.get("ignored", [])) > 50:
        facts["ignored"] = facts["ignored"][:50] + [f"... {len(facts['ignored']) - 50} more"]
    meta.update(facts)
    return TensorSet(records_from_state_dict(state), format="pytorch", source=str(path), meta=meta)
