"""Same recipe + same seed on the same machine -> the same metrics, for every number that is not a timing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN, run_module, save_tiny_gpt2, write_recipe

# Wall time, throughput and memory depend on the machine's load, not on the recipe.
MACHINE_DEPENDENT = re.compile(r"second|time|memory|per_s|throughput|samples_per|tokens_per")


def reproducible(value, key: str = ""):
    """The metrics without their machine-dependent entries (recursively)."""
    if isinstance(value, dict):
        return {k: reproducible(v, k) for k, v in value.items() if not MACHINE_DEPENDENT.search(str(k))}
    if isinstance(value, list):
        return [reproducible(v, key) for v in value]
    return value


def run_twice(tmp_path: Path, module: str, values: dict) -> tuple[dict, dict]:
    results = []
    for name in ("first", "second"):
        path = write_recipe(tmp_path / f"{name}.yaml", {**values, "output_dir": str(tmp_path / name)})
        result = run_module(module, "--config", str(path))
        assert result.returncode == 0, result.stderr[-3000:]
        results.append(reproducible(json.loads((tmp_path / name / "metrics.json").read_text())))
    return results[0], results[1]


@pytest.mark.slow
def test_pretraining_twice_gives_the_same_metrics(tmp_path):
    first, second = run_twice(
        tmp_path,
        "pipeline.pretrain",
        {**TINY_PRETRAIN, "max_steps": 20, "decoding_strategies": ["greedy", "temperature_1.0"]},
    )
    assert first == second
    assert first["eval_loss"] > 0 and "gold_reward_sampled" in first  # sampled decoding is seeded too


@pytest.mark.slow
def test_reward_modelling_twice_gives_the_same_metrics(tmp_path):
    model = save_tiny_gpt2(tmp_path / "base")
    first, second = run_twice(
        tmp_path,
        "pipeline.reward",
        {
            "stage": "reward",
            "model_name_or_path": str(model),
            "dataset": "toy",
            "toy_pairs": 200,
            "toy_eval_pairs": 64,
            "learning_rate": 3.0e-3,
            "per_device_train_batch_size": 16,
            "max_steps": 10,
            "eval_strategy": "no",
            "save_strategy": "no",
            "seed": 5,
            "use_cpu": True,
            "bf16": False,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        },
    )
    assert first == second
    assert first["steps"] == 10 and 0.0 <= first["heldout_accuracy"] <= 1.0 and first["heldout_pairs"] == 64
