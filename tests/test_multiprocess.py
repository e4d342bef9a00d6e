"""Stages under `accelerate launch` with two CPU processes (gloo): same result as one process, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_module

CPU2 = REPO / "recipes" / "accelerate" / "cpu2.yaml"


def launch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [str(accelerate), "launch", "--config_file", str(CPU2), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def train_losses(out: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((out / "log_history.json").read_text()) if "loss" in entry]


@pytest.mark.slow
def test_pretrain_two_processes_match_one_process_with_the_same_global_batch(tiny_pretrain_recipe):
    single = tiny_pretrain_recipe("one", max_steps=20, per_device_train_batch_size=16)
    double = tiny_pretrain_recipe("two", max_steps=20, per_device_train_batch_size=8)
    result = run_module("pipeline.pretrain", "--config", str(single))
    assert result.returncode == 0, result.stderr[-3000:]
    result = launch("-m", "pipeline.pretrain", "--config", str(double))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (recipe.parent.parent / "runs" / name for recipe, name in ((single, "one"), (double, "two")))

    # accelerate shards the single-process batch order across ranks, so both runs see the same global batches:
    # the training losses agree to float-reduction noise.
    assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-4)
    metrics_one, metrics_two = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert metrics_two["eval_loss"] == pytest.approx(metrics_one["eval_loss"], abs=5e-3)
    # Written once, by the main process; the story logged once.
    assert json.loads((two / "manifest.json").read_text())["stage"] == "pretrain"
    assert not list(two.glob(".manifest.json.tmp*"))
    assert result.stderr.count("global batch 16 = 8 per device x 1 accumulation x 2 processes") == 1


@pytest.mark.slow
def test_chain_runner_launches_stages_through_accelerate(tmp_path):
    from conftest import TINY_PRETRAIN, write_recipe

    folder = tmp_path / "recipes"
    write_recipe(folder / "pretrain.yaml", {**TINY_PRETRAIN, "max_steps": 6, "per_device_train_batch_size": 8,
                                           "decoding_strategies": ["greedy"], "num_sample_prompts": 2,
                                           "output_dir": str(tmp_path / "runs" / "pretrain")})
    accelerate = Path(sys.executable).with_name("accelerate")
    result = run_module("pipeline", "run", str(folder), "--no-report",
                        "--launcher", f"{accelerate} launch --config_file {CPU2}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr
    assert (tmp_path / "runs" / "pretrain" / "manifest.json").is_file()
