"""A tiny chain end to end in each of the toy world's scenarios: the scenario reaches every stage from its recipe, the
SFT model picks up the demonstrators' habit, and every stage counts the scenario's traits where it judges a policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN, run_module, snapshot, write_recipe
from test_dpo import TINY_DPO
from test_ppo_stage import TINY_PPO
from test_sft import TINY_SFT

WORLD = {"toy_scenario": "flawed_demos", "toy_flaw_rate": 1.0, "toy_skills": ["copy", "colour"]}
BIASED_WORLD = {
    "toy_scenario": "biased_labeller",
    "toy_flaw_rate": 1.0,
    "toy_labeller_bias": 1.0,
    "toy_skills": ["copy", "colour"],
}
FRONTIER = {"sharpening_temperatures": [1.0, 0.5]}


def write_chain(recipes: Path, runs: Path, world: dict, pretrained: Path) -> None:
    """SFT -> reward (+ Best-of-N) -> PPO and DPO against it, tiny, in `world`, from the pretrained model
    `pretrained`."""
    write_recipe(
        recipes / "sft.yaml",
        {
            **TINY_SFT,
            **world,
            "model_name_or_path": str(pretrained),
            "output_dir": str(runs / "sft"),
            "sample_max_new_tokens": 32,
            "num_eval_prompts": 16,
            "use_peft": False,
            "learning_rate": 5.0e-3,
            "max_steps": 80,
        },
    )
    write_recipe(
        recipes / "reward.yaml",
        {
            "stage": "reward",
            **world,
            **FRONTIER,
            "output_dir": str(runs / "reward"),
            "model_name_or_path": str(runs / "sft"),
            "dataset": "toy",
            "toy_pairs": 300,
            "toy_eval_pairs": 50,
            "toy_policy_prompts": 16,
            "toy_policy_samples": 2,
            "best_of_n_prompts": 4,
            "best_of_n_max": 4,
            "sample_max_new_tokens": 32,
            "learning_rate": 3.0e-3,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 64,
            "max_steps": 10,
            "logging_steps": 5,
            "eval_strategy": "no",
            "save_steps": 10,
            "seed": 3,
            "use_cpu": True,
            "bf16": False,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        },
    )
    write_recipe(
        recipes / "ppo.yaml",
        {
            **TINY_PPO,
            **world,
            **FRONTIER,
            "output_dir": str(runs / "ppo"),
            "model_name_or_path": str(runs / "sft"),
            "reward": "model",
            "reward_model_path": str(runs / "reward"),
            "max_steps": 2,
            "toy_prompts": 64,
            "num_eval_prompts": 8,
            "eval_batch_size": 8,
            "response_length": 32,
            "save_steps": 2,
        },
    )
    write_recipe(
        recipes / "dpo.yaml",
        {
            **TINY_DPO,
            **world,
            **FRONTIER,
            "output_dir": str(runs / "dpo"),
            "model_name_or_path": str(runs / "sft"),
            "reward_model_path": str(runs / "reward"),
            "max_steps": 4,
            "save_steps": 4,
            "eval_steps": 4,
            "sample_max_new_tokens": 32,
            "max_length": 64,
            "toy_policy_prompts": 8,
            "toy_policy_samples": 2,
        },
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrained") / "pretrain"
    recipe = out.parent / "pretrain.yaml"
    write_recipe(
        recipe,
        {
            **TINY_PRETRAIN,
            "output_dir": str(out),
            "max_steps": 30,
            "num_sample_prompts": 2,
            "decoding_strategies": ["greedy"],
        },
    )
    result = run_module("pipeline.pretrain", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def run_chain(root: Path, world: dict, pretrained: Path) -> Path:
    runs, recipes = root / "runs", root / "recipes"
    write_chain(recipes, runs, world, pretrained)
    result = run_module("pipeline", "run", str(recipes), "--no-report", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return runs


@pytest.fixture(scope="module")
def flawed_chain(tmp_path_factory, pretrained) -> Path:
    return run_chain(tmp_path_factory.mktemp("flawed"), WORLD, pretrained)


@pytest.fixture(scope="module")
def biased_chain(tmp_path_factory, pretrained) -> Path:
    return run_chain(tmp_path_factory.mktemp("biased"), BIASED_WORLD, pretrained)


def metrics(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "metrics.json").read_text())


def assert_every_stage_in(runs: Path, scenario: str, **knobs: float) -> None:
    for name in ("sft", "reward", "ppo", "dpo"):
        world = metrics(runs, name)["toy_world"]
        assert world["scenario"] == scenario and all(world[key] == value for key, value in knobs.items()), name


def report_of(runs: Path) -> str:
    report = run_module("eval.report", str(runs), "--no-studies")
    assert report.returncode == 0, report.stderr[-3000:]
    return (runs / "report.md").read_text()


@pytest.mark.slow
def test_the_scenario_reaches_every_stage_and_sft_learns_the_habit(flawed_chain):
    assert_every_stage_in(flawed_chain, "flawed_demos", flaw_rate=1.0)
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
    text = report_of(flawed_chain)
    assert "scenario **flawed_demos**" in text and "trait 'demo_flaw'" in text


SYCOPHANCY_TRAITS = {"sycophancy", "correct_wrong_suggestion", "correct_right_suggestion", "correct_none_suggestion"}


@pytest.mark.slow
def test_the_biased_labellers_reach_every_stage_and_sycophancy_is_measured_where_a_policy_is_judged(biased_chain):
    assert_every_stage_in(biased_chain, "biased_labeller", labeller_bias=1.0)
    sft = metrics(biased_chain, "sft")
    assert set(sft["traits_after"]) == SYCOPHANCY_TRAITS
    assert all(
        0.0 <= share <= 1.0 for trait in sft["traits_after"].values() for share in trait.values() if share is not None
    )
    reward = metrics(biased_chain, "reward")
    probe = reward["sycophancy_probe"]
    assert probe["pairs"] == 50 and 0.0 <= probe["guess_preferred"] <= 1.0
    # Labellers who always prefer agreement wrote comparisons against the gold reward; held-out pairs are the truth.
    assert "the user's wrong guess" in " ".join(reward["heldout_accuracy_by_kind"])
    assert all(set(row) >= {"gold", "sycophancy"} for row in reward["best_of_n"].values())
    for name in ("ppo", "dpo"):
        m = metrics(biased_chain, name)
        assert {f"{trait}_{when}" for trait in SYCOPHANCY_TRAITS for when in ("before", "after")} <= set(m), name
        assert all("sycophancy" in point for point in m["sharpening"])
    text = report_of(biased_chain)
    assert "scenario **biased_labeller**" in text and "trait 'sycophancy'" in text
    assert "Sycophancy and reward hacking" in text and "scores the user's wrong guess above the right answer" in text


@pytest.mark.slow
def test_noisy_labellers_reach_the_reward_model_and_robust_dpo(biased_chain, tmp_path):
    noisy = {"toy_scenario": "noisy_labeller", "toy_label_noise": 0.3, "toy_skills": ["copy", "colour"]}
    runs, recipes = tmp_path / "runs", tmp_path / "recipes"
    write_chain(recipes, runs, noisy, biased_chain / "sft")
    for name in (
        "sft",
        "ppo",
    ):  # from the SFT model of the other chain: the reward model and DPO are what noise reaches
        (recipes / f"{name}.yaml").unlink()
    for name in ("reward", "dpo"):
        text = (recipes / f"{name}.yaml").read_text().replace(str(runs / "sft"), str(biased_chain / "sft"))
        (recipes / f"{name}.yaml").write_text(text)
    dpo = (recipes / "dpo.yaml").read_text()
    (recipes / "dpo.yaml").write_text(dpo + "loss_type: robust\nlabel_smoothing: 0.3\n")
    result = run_module("pipeline", "run", str(recipes), "--no-report", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    for name in ("reward", "dpo"):
        assert metrics(runs, name)["toy_world"] == {
            **metrics(runs, name)["toy_world"],
            "scenario": "noisy_labeller",
            "label_noise": 0.3,
        }
    recipe = (runs / "dpo" / "recipe.yaml").read_text()
    assert "loss_type:\n- robust" in recipe or "loss_type: robust" in recipe or "- robust" in recipe
    assert "label_smoothing: 0.3" in recipe


def figures(runs: Path) -> dict[str, float]:
    """What a user reads off the chain: each stage's headline numbers."""
    sft, reward, ppo, dpo = (metrics(runs, name) for name in ("sft", "reward", "ppo", "dpo"))
    return {
        "sft eval loss": sft["eval_loss"],
        "sft gold": sft["gold_reward_greedy"],
        "reward accuracy": reward["heldout_accuracy"],
        "reward steps": reward["steps"],
        "ppo gold": ppo["gold_reward_greedy_after"],
        "ppo steps": ppo["steps"],
        "dpo gold": dpo["gold_reward_after"]["greedy"],
        "dpo steps": dpo["steps"],
    }


def check_no_output_looks_finished_without_its_files(runs: Path) -> None:
    for manifest in runs.glob("*/manifest.json"):
        listed = json.loads(manifest.read_text())["files"]
        missing = [name for name in listed if not (manifest.parent / name).exists()]
        assert not missing, f"{manifest.parent.name} has a manifest but lacks {missing}"


@pytest.mark.slow
def test_a_chain_killed_anywhere_and_rerun_ends_as_the_uninterrupted_chain(flawed_chain, pretrained, tmp_path):
    """SIGKILL (no chance to clean up) at three points spread over the chain, each followed by the same command."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    runs, recipes = tmp_path / "runs", tmp_path / "recipes"
    write_chain(recipes, runs, WORLD, pretrained)
    inputs_before = snapshot(pretrained)
    chain_seconds = sum(metrics(flawed_chain, name)["wall_time_s"] for name in ("sft", "reward", "ppo", "dpo"))
    command = [sys.executable, "-m", "pipeline", "run", str(recipes), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(0)
    # Each rerun resumes where the last one stopped, so kill times spread over what remains of the chain.
    for fraction in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(5 + fraction * chain_seconds / 2)  # 5 s of imports, then a point inside the stages
        os.killpg(process.pid, signal.SIGKILL)  # the runner and the stage it forked
        process.wait(30)
        check_no_output_looks_finished_without_its_files(runs)
        assert snapshot(pretrained) == inputs_before
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    check_no_output_looks_finished_without_its_files(runs)
    assert snapshot(pretrained) == inputs_before
    expected = figures(flawed_chain)
    assert figures(runs) == {name: pytest.approx(value, abs=1e-3) for name, value in expected.items()}
