"""JSON parsing for the headers read on every load: orjson (2-3x faster than json, which
matters for a converted net's graph), falling back to json for what orjson refuses
but json accepts (NaN and Infinity, integers beyond 64 bits)."""
from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """json.loads, faster; raises json.JSONDecodeError (or UnicodeDecodeError) on bad input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError:  # (orjson refuses more than 1024 levels; json recurses until Python stops it)
            raise json.JSONDecodeError("nested too deeply", "", 0) from None
