"""Metrics that the `evaluate` Hub cannot give offline, as local `evaluate` modules loaded by path.

Each folder holds one `evaluate.Metric` script named like the folder, so it loads as any other metric:

    import evaluate
    distinct = evaluate.load("/abs/path/to/eval/metrics/distinct_n")      # or eval.metrics.load("distinct_n")
    distinct.compute(predictions=["a b a b", "c d"], max_n=2)            # {"distinct_1": ..., "distinct_2": ...}

`evaluate.load` of a local path never touches the network, also with HF_HUB_OFFLINE=1 and
HF_EVALUATE_OFFLINE=1. The scripts import the formulas from the pipeline (pipeline.decoding,
pipeline.data.toy_world) so that the report and the stages compute them one way.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
LOCAL_METRICS = ("distinct_n", "repetition_rate", "gold_reward")


def path(name: str) -> str:
    """Absolute path of a local metric's folder (what `evaluate.load` takes)."""
    if name not in LOCAL_METRICS:
        raise ValueError(f"unknown local metric {name!r}; the local metrics are {', '.join(LOCAL_METRICS)}")
    return str(METRICS_DIR / name)


@cache
def load(name: str):
    """`evaluate.load` of a local metric, in memory (no cache files are written for its computations)."""
    # A local script needs no hub; offline mode also stops evaluate from asking the hub about anything.
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    return evaluate.load(path(name), keep_in_memory=True)
