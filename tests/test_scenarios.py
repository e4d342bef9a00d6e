"""A tiny chain end to end in the toy world's scenario `flawed_demos`: the scenario reaches every stage from its
recipe, the SFT model picks up the demonstrators' habit, and every stage counts the habit where it judges a policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN, run_module, write_recipe
from test_dpo import TINY_DPO
from test_ppo_stage import TINY_PPO
from test_sft import TINY_SFT

WORLD = {"toy_scenario": "flawed_demos", "toy_flaw_rate": 1.0, "toy_skills": ["copy", "colour"]}
FRONTIER = {"sharpening_temperatures": [1.0, 0.5]}


@pytest.fixture(scope="module")
def flawed_chain(tmp_path_factory) -> Path:
    """pretrain -> SFT -> reward (+ Best-of-N) -> PPO and DPO against it, tiny, all in scenario flawed_demos."""
    root = tmp_path_factory.mktemp("flawed")
    runs, recipes = root / "runs", root / "recipes"
    write_recipe(recipes / "pretrain.yaml", {**TINY_PRETRAIN, "output_dir": str(runs / "pretrain"), "max_steps": 30,
                                             "num_sample_prompts": 2, "decoding_strategies": ["greedy"]})
    write_recipe(recipes / "sft.yaml", {**TINY_SFT, **WORLD, "model_name_or_path": str(runs / "pretrain"), "output_dir": str(runs / "sft"),
                                        "sample_max_new_tokens": 32, "num_eval_prompts": 16,
                                        "use_peft": False, "learning_rate": 5.0e-3, "max_steps": 80})
    write_recipe(recipes / "reward.yaml", {
        "stage": "reward", **WORLD, **FRONTIER, "output_dir": str(runs / "reward"), "model_name_or_path": str(runs / "sft"),
        "dataset": "toy", "toy_pairs": 300, "toy_eval_pairs": 50, "toy_policy_prompts": 16, "toy_policy_samples": 2,
        "best_of_n_prompts": 4, "best_of_n_max": 4, "sample_max_new_tokens": 32, "learning_rate": 3.0e-3,
        "per_device_train_batch_size": 16, "per_device_eval_batch_size": 64, "max_steps": 10, "logging_steps": 5,
        "eval_strategy": "no", "save_steps": 10, "seed": 3, "use_cpu": True, "bf16": False, "dataloader_num_workers": 0,
        "disable_tqdm": True,
    })
    write_recipe(recipes / "ppo.yaml", {
        **TINY_PPO, **WORLD, **FRONTIER, "output_dir": str(runs / "ppo"), "model_name_or_path": str(runs / "sft"),
        "reward": "model", "reward_model_path": str(runs / "reward"), "max_steps": 2, "toy_prompts": 64, "num_eval_prompts": 8,
        "eval_batch_size": 8, "response_length": 32, "save_steps": 2,
    })
    write_recipe(recipes / "dpo.yaml", {
        **TINY_DPO, **WORLD, **FRONTIER, "output_dir": str(runs / "dpo"), "model_name_or_path": str(runs / "sft"),
        "reward_model_path": str(runs / "reward"), "max_steps": 4, "save_steps": 4, "eval_steps": 4, "sample_max_new_tokens": 32,
        "max_length": 64,
    })
    result = run_module("pipeline", "run", str(recipes), "--no-report", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return runs


def metrics(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "metrics.json").read_text())


@pytest.mark.slow
def test_the_scenario_reaches_every_stage_and_sft_learns_the_habit(flawed_chain):
    for name in ("sft", "reward", "ppo", "dpo"):
        world = metrics(flawed_chain, name)["toy_world"]
        assert world["scenario"] == "flawed_demos" and world["flaw_rate"] == 1.0, name
    sft = metrics(flawed_chain, "sft")
    # The pretrained model never wraps its answers; after SFT on demonstrations that always do, it does.
    assert sft["traits_before"]["demo_flaw"]["greedy"] == 0.0
    assert sft["traits_after"]["demo_flaw"]["greedy"] > 0.5


@pytest.mark.slow
def test_every_stage_counts_the_habit_where_it_judges_a_policy(flawed_chain):
    reward = metrics(flawed_chain, "reward")
    assert all(0.0 <= row["demo_flaw"] <= 1.0 for row in reward["best_of_n"].values())
    assert all("demo_flaw" in point for point in reward["sharpening"])
    for name in ("ppo", "dpo"):
        m = metrics(flawed_chain, name)
        for when in ("before", "after"):
            assert set(m[f"demo_flaw_{when}"]) == {"greedy", "sampled"}
        # "before" is the SFT model on the same prompts: what SFT's own measurement saw, up to the prompts drawn.
        assert m["demo_flaw_before"]["greedy"] > 0.5
        assert all("demo_flaw" in point for point in m["sharpening"])
    report = run_module("eval.report", str(flawed_chain), "--no-studies")
    assert report.returncode == 0, report.stderr[-3000:]
    text = (flawed_chain / "report.md").read_text()
    assert "scenario **flawed_demos**" in text and "trait 'demo_flaw'" in text
