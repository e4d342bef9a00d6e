"""Small helpers the sections share: reading numbers out of stage metrics and log histories."""

from __future__ import annotations

import math
from typing import Any


def number(value: Any) -> float | None:
    """A finite float, or None (missing keys, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]... or None when any level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def series(history: list[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in a log history (entries without it are skipped)."""
    points = [
        (entry[x], entry[key])
        for entry in history
        if number(entry.get(key)) is not None and number(entry.get(x)) is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def numeric_keys(history: list[dict[str, Any]]) -> list[str]:
    """Every key with a numeric value somewhere in the log history, in first-seen order."""
    keys: dict[str, None] = {}
    for entry in history:
        for key, value in entry.items():
            if number(value) is not None:
                keys.setdefault(key, None)
    return list(keys)
