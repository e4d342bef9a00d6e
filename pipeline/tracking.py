"""Experiment trackers for the stages that do not run under transformers' Trainer (PPO), through accelerate's
tracking API, with Trainer's spelling of the recipe key: `report_to: [tensorboard]` (none by default).

Written here because Trainer resolves `report_to` itself, while a hand-written loop gets only accelerate's
`log_with`, which drops a tracker that is not installed with a warning; a recipe asking for one is refused
instead, naming the key and the package, before any model loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

#: accelerate's tracker names -> the package each needs.
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}


def tracker_names(report_to: str | Sequence[str] | None) -> list[str]:
    """The trackers a `report_to` value asks for ([] for none), each checked to be known and installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [name for name in names if name != "none"]
    if names == ["all"]:
        return [name for name, package in TRACKER_PACKAGES.items() if importlib.util.find_spec(package)]
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ValueError(
                f"key 'report_to': unknown tracker '{name}'; choose from none, all, {', '.join(TRACKER_PACKAGES)}"
            )
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ValueError(
                f"key 'report_to': {name} is not installed (pip install {TRACKER_PACKAGES[name]}; "
                "`pip install -e '.[tracking]'` installs tensorboard)"
            )
    return names


def loggable(values: dict[str, Any]) -> dict[str, int | float | str | bool]:
    """The values a tracker's run configuration can hold: numbers, strings and booleans; lists as text."""
    kept: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        if isinstance(value, (int, float, str, bool)):
            kept[key] = value
        elif isinstance(value, (list, tuple)):
            kept[key] = ", ".join(map(str, value))
    return kept


def scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of one log entry (what a tracker plots)."""
    return {
        key: value for key, value in entry.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
