"""Stages under `accelerate launch` with two CPU processes (gloo): same result as one process, written once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, run_module
from conftest import launch_two_processes as launch

CPU2 = REPO / "recipes" / "accelerate" / "cpu2.yaml"


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
    print(
        f"pretrain eval loss: 1 process {metrics_one['eval_loss']}, 2 processes {metrics_two['eval_loss']}"
    )  # pytest -s shows it
    # Evaluation pads the last batch across the two processes by repeating a block: about 1/50 of a loss apart here.
    assert metrics_two["eval_loss"] == pytest.approx(metrics_one["eval_loss"], abs=1e-2)
    # Written once, by the main process; the story logged once.
    assert json.loads((two / "manifest.json").read_text())["stage"] == "pretrain"
    assert not list(two.glob(".manifest.json.tmp*"))
    assert result.stderr.count("global batch 16 = 8 per device x 1 accumulation x 2 processes") == 1


@pytest.mark.slow
def test_chain_runner_launches_stages_through_accelerate(tmp_path):
    from conftest import TINY_PRETRAIN, write_recipe

    folder = tmp_path / "recipes"
    write_recipe(
        folder / "pretrain.yaml",
        {
            **TINY_PRETRAIN,
            "max_steps": 6,
            "per_device_train_batch_size": 8,
            "decoding_strategies": ["greedy"],
            "num_sample_prompts": 2,
            "output_dir": str(tmp_path / "runs" / "pretrain"),
        },
    )
    accelerate = Path(sys.executable).with_name("accelerate")
    result = run_module(
        "pipeline",
        "run",
        str(folder),
        "--no-report",
        "--launcher",
        f"{accelerate} launch --config_file {CPU2} --main_process_port {free_port()}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr
    assert (tmp_path / "runs" / "pretrain" / "manifest.json").is_file()


def one_and_two_processes(
    module: str, recipe: dict, tmp_path: Path, batch: int
) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """Run `module` on `recipe` in one process (batch per device) and in two (batch / 2 each): same global batch."""
    from conftest import write_recipe

    one = write_recipe(
        tmp_path / "one.yaml", {**recipe, "output_dir": str(tmp_path / "one"), "per_device_train_batch_size": batch}
    )
    two = write_recipe(
        tmp_path / "two.yaml",
        {**recipe, "output_dir": str(tmp_path / "two"), "per_device_train_batch_size": batch // 2},
    )
    single = run_module(module, "--config", str(one))
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch("-m", module, "--config", str(two))
    assert double.returncode == 0, double.stderr[-3000:]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    print(f"{module}: 1 process {metrics[0]}\n{module}: 2 processes {metrics[1]}")  # pytest -s shows it
    for name in ("one", "two"):
        assert json.loads((tmp_path / name / "manifest.json").read_text())["stage"] == recipe["stage"]
    return metrics[0], metrics[1], double


@pytest.mark.slow
def test_reward_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from conftest import save_tiny_gpt2

    model = save_tiny_gpt2(tmp_path / "base")
    recipe = {
        "stage": "reward",
        "model_name_or_path": str(model),
        "dataset": "toy",
        "toy_pairs": 320,
        "toy_eval_pairs": 96,
        "learning_rate": 3.0e-3,
        "per_device_eval_batch_size": 48,
        "max_steps": 16,
        "logging_steps": 4,
        "eval_strategy": "no",
        "save_strategy": "no",
        "seed": 3,
        "use_cpu": True,
        "bf16": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    one, two, launched = one_and_two_processes("pipeline.reward", recipe, tmp_path, batch=16)
    assert two["steps"] == one["steps"] == 16 and two["heldout_pairs"] == one["heldout_pairs"]
    # Held-out pairs are scored by both processes and gathered: every pair once, none twice.
    assert two["heldout_loss"] == pytest.approx(one["heldout_loss"], abs=0.02)
    assert two["heldout_accuracy"] == pytest.approx(one["heldout_accuracy"], abs=0.03)
    assert launched.stderr.count("reward model:") == 1  # the story is logged once


@pytest.mark.slow
def test_dpo_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from conftest import save_tiny_gpt2

    model = save_tiny_gpt2(tmp_path / "sft")
    recipe = {
        "stage": "dpo",
        "model_name_or_path": str(model),
        "dataset": "toy",
        "toy_pairs": 64,
        "toy_eval_pairs": 32,
        "num_eval_prompts": 8,
        "sample_max_new_tokens": 8,
        "max_length": 96,
        "beta": 0.1,
        "learning_rate": 3.0e-3,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "per_device_eval_batch_size": 16,
        "max_steps": 8,
        "logging_steps": 2,
        "eval_strategy": "no",
        "save_strategy": "no",
        "seed": 7,
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    one, two, launched = one_and_two_processes("pipeline.dpo", recipe, tmp_path, batch=8)
    assert two["steps"] == one["steps"] == 8
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=0.02)
    assert two["implicit_reward_margin"] == pytest.approx(one["implicit_reward_margin"], abs=0.05)
    assert launched.stderr.count("DPO (full") == 1
