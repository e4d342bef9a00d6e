"""The PPO stage end to end on tiny models: the gold reward rises, the outputs follow the stage contract,
a killed run resumes where it stopped, LoRA uses the adapter-less policy as reference, and bad input
fails with one clear message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, launch_two_processes, run_in_process, run_module, write_recipe

from pipeline.errors import DataError, RecipeError

torch.set_num_threads(1)

# A PPO recipe small enough for a test: the gold reward of the toy world, a few steps on 32 prompts.
TINY_PPO = {
    "stage": "ppo",
    "dataset": "toy",
    "reward": "gold",
    "value_model": "head",
    "toy_prompts": 512,
    "num_eval_prompts": 64,
    "eval_batch_size": 64,
    "max_steps": 12,
    "per_device_train_batch_size": 32,
    "num_mini_batches": 2,
    "ppo_epochs": 2,
    "learning_rate": 1.0e-3,
    "response_length": 16,
    "temperature": 1.0,
    "missing_eos_penalty": 0.2,
    "kl_coef": 0.01,
    "save_steps": 4,
    "seed": 3,
    "use_cpu": True,
}


@pytest.fixture(scope="session")
def tiny_sft(tiny_pretrained) -> Path:
    """The pretraining stage's tiny model (conftest.TINY_PRETRAIN) stands in for an SFT model."""
    return tiny_pretrained


def ppo_recipe(tmp_path: Path, base: Path, name: str = "ppo", **overrides) -> Path:
    values = {**TINY_PPO, "model_name_or_path": str(base), "output_dir": str(tmp_path / name), **overrides}
    return write_recipe(tmp_path / f"{name}.yaml", {k: v for k, v in values.items() if v is not ...})


def run_ppo(recipe: Path, subprocess: bool = False) -> tuple[Path, dict]:
    """Run the stage in this process, or as a user would (`python -m pipeline.ppo`) with `subprocess=True`."""
    from pipeline import ppo

    if subprocess:
        result = run_module("pipeline.ppo", "--config", str(recipe))
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        ppo.main(["--config", str(recipe)])
    out = Path(yaml.safe_load(recipe.read_text())["output_dir"])
    return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def gold_run(tmp_path_factory, tiny_sft):
    # In a subprocess, like the killed and resumed runs below, so that all use the same number of threads.
    return run_ppo(ppo_recipe(tmp_path_factory.mktemp("gold"), tiny_sft), subprocess=True)


def test_gold_reward_rises_and_every_output_is_written(gold_run):
    out, metrics = gold_run
    assert metrics["gold_reward_after"] > metrics["gold_reward_before"] + 0.05, metrics
    assert metrics["kl_to_reference"]["k3"] > 0 and metrics["kl_to_reference"]["k2"] > 0
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "recipe.yaml",
        "manifest.json",
        "log_history.json",
        "reward_kl.png",
        "samples.json",
    ):
        assert (out / name).is_file(), name
    history = json.loads((out / "log_history.json").read_text())
    assert [entry["step"] for entry in history] == list(range(1, 13))
    for key in (
        "gold_reward",
        "kl_k1",
        "kl_k2",
        "kl_k3",
        "entropy",
        "response_length",
        "policy_clip_fraction",
        "value_loss",
        "explained_variance",
        "tokens_per_second",
    ):
        assert all(key in entry for entry in history), key
    assert history[0]["kl_k1"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference itself


def test_grouped_samples_exact_kl_and_a_critic_warm_up_that_keeps_the_policy_still(tmp_path, tiny_sft):
    recipe = ppo_recipe(
        tmp_path,
        tiny_sft,
        max_steps=4,
        samples_per_prompt=4,
        critic_warmup_steps=2,
        save_steps=100,
        kl_estimator="exact",
        kl_in_loss=True,
        kl_coef=0.1,
    )
    out, metrics = run_ppo(recipe)
    history = json.loads((out / "log_history.json").read_text())
    assert [entry["kl_exact"] for entry in history[:3]] == pytest.approx(
        [0.0] * 3, abs=1e-5
    )  # steps 1-2 trained only the critic
    assert "kl_loss" not in history[1] and history[3]["kl_loss"] > 0  # the direct KL term once the policy trains
    assert history[-1]["kl_k1"] != pytest.approx(0.0, abs=1e-4) and metrics["kl_to_reference"]["k3"] > 0


def test_the_saved_policy_is_a_full_model_that_loads_and_generates(gold_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.decoding import generate

    out, _ = gold_run
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert generate(model, tokenizer, ["User: what is 2 + 3?\nBot:"], max_new_tokens=8)[0].token_ids


def test_lora_policy_uses_itself_without_adapters_as_reference_with_ptx_and_saves_a_merged_model(tmp_path, tiny_sft):
    recipe = ppo_recipe(
        tmp_path,
        tiny_sft,
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["c_attn"],
        max_steps=3,
        learning_rate=1.0e-2,
        value_model="separate",
        ptx_coef=0.5,
        ptx_dataset="toy",
        ptx_batch_size=4,
    )
    out, metrics = run_ppo(recipe)
    assert 0 < metrics["trainable_share"] < 0.6  # adapters + the separate critic, not the policy's weights
    assert metrics["kl_to_reference"]["k3"] > 0  # the adapters moved the policy away from its adapter-less self
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    history = json.loads((out / "log_history.json").read_text())
    assert all(entry["ptx_loss"] > 0 for entry in history)  # PPO-ptx: −mean log π on toy pretraining text


def test_killed_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path, tiny_sft, gold_run):
    recipe = ppo_recipe(tmp_path, tiny_sft)
    out = tmp_path / "ppo"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ppo", "--config", str(recipe)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not (out / "checkpoint-8" / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()

    result = run_module("pipeline.ppo", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-8")
    history = json.loads((out / "log_history.json").read_text())
    reference = json.loads((gold_run[0] / "log_history.json").read_text())
    assert [entry["step"] for entry in history] == list(range(1, 13))
    # Same seed and recipe: the resumed run samples and learns exactly as the uninterrupted one did.
    for mine, theirs in zip(history[8:], reference[8:]):
        assert mine["gold_reward"] == pytest.approx(theirs["gold_reward"], abs=1e-6)
        assert mine["kl_k1"] == pytest.approx(theirs["kl_k1"], abs=1e-3)
    assert metrics["gold_reward_after"] == pytest.approx(gold_run[1]["gold_reward_after"], abs=0.02)


def test_a_reward_model_with_another_tokenizer_scores_the_decoded_text(tmp_path, tiny_sft):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from pipeline.data.toy_world import ToyWorld
    from pipeline.tokenization import train_tokenizer

    tokenizer = train_tokenizer(ToyWorld(seed=1).pretraining_corpus(500), kind="bpe", vocab_size=300)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    out, metrics = run_ppo(
        ppo_recipe(
            tmp_path,
            tiny_sft,
            reward="model",
            reward_model_path=str(tmp_path / "rm"),
            max_steps=2,
            value_model="separate",
        )
    )
    history = json.loads((out / "log_history.json").read_text())
    assert all(entry["rm_reward"] is not None and entry["gold_reward"] is not None for entry in history)
    assert "rm_reward_after" in metrics and "gold_reward_after" in metrics


def test_a_tokenizer_with_pad_equal_to_eos_gets_its_own_pad_and_responses_still_stop(tmp_path, tiny_sft):
    import shutil

    from transformers import AutoTokenizer

    base = tmp_path / "pad_is_eos"
    shutil.copytree(tiny_sft, base, ignore=shutil.ignore_patterns("checkpoint-*", "manifest.json"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(base)
    out, metrics = run_ppo(ppo_recipe(tmp_path, base, max_steps=1))
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.pad_token_id != saved.eos_token_id
    assert metrics["finished_fraction_after"] > 0  # EOS is still a token the policy can produce and is credited for


@pytest.mark.parametrize(
    "changes, error, fragment",
    [
        ({"kl_coef": -0.1}, RecipeError, "key 'kl_coef' must be >= 0"),
        ({"reward": "model"}, RecipeError, "reward_model_path"),
        ({"reward_model_path": "runs/nowhere/reward", "reward": "model"}, RecipeError, "does not exist"),
        ({"per_device_train_batch_size": 30, "num_mini_batches": 4}, RecipeError, "must split into num_mini_batches"),
        ({"kl_estimator": "k4"}, RecipeError, "expects one of 'k1', 'k2', 'k3'"),
        ({"algorithm": "reinforce"}, RecipeError, "expects one of 'ppo', 'grpo', 'rloo'"),
        ({"max_prompt_length": 5}, DataError, "no prompt fits in 5 tokens"),
        ({"response_length": 200}, RecipeError, "leaves no room for a prompt"),
        ({"ptx_coef": 0.1}, RecipeError, "'ptx_dataset' is not set"),
        (
            {"kl_in_loss": True},
            RecipeError,
            "key 'kl_in_loss' differentiates the exact per-state KL: set kl_estimator: exact",
        ),
        ({"samples_per_prompt": 3}, RecipeError, "must be a multiple of samples_per_prompt (3)"),
        ({"critic_warmup_steps": 12}, RecipeError, "key 'critic_warmup_steps' (12) must be below max_steps (12)"),
        ({"final_norm_learning_rate": 0.0}, RecipeError, "final_norm_learning_rate"),
        (
            {"final_norm_learning_rate": 1e-2, "use_peft": True},
            RecipeError,
            "key 'final_norm_learning_rate' needs full fine-tuning",
        ),
    ],
)
def test_bad_input_fails_with_one_clear_message(tmp_path, tiny_sft, changes, error, fragment):
    from pipeline import ppo

    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ppo.main(["--config", str(ppo_recipe(tmp_path, tiny_sft, **changes))])


def test_prompts_over_the_limit_are_left_out_and_counted(tmp_path, tiny_sft):
    # Toy prompts are 24 to 40 characters: a limit of 30 keeps some and drops the rest.
    out, metrics = run_ppo(ppo_recipe(tmp_path, tiny_sft, max_prompt_length=30, max_steps=1))
    assert metrics["prompts_too_long"] > 0 and metrics["train_prompts"] > 0


def test_command_line_error_is_one_line_without_traceback(tmp_path, tiny_sft):
    result = run_in_process("pipeline.ppo", "--config", str(ppo_recipe(tmp_path, tiny_sft, kl_coef=-1)))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "kl_coef" in result.stderr


@pytest.mark.slow
def test_two_processes_share_the_rollouts_and_write_once(tmp_path, tiny_sft):
    """`accelerate launch` with two CPU processes: each samples its share, statistics are global."""
    recipe = ppo_recipe(
        tmp_path, tiny_sft, max_steps=2, per_device_train_batch_size=16, gradient_accumulation_steps=2, save_steps=1
    )
    result = launch_two_processes("-m", "pipeline.ppo", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ppo" / "metrics.json").read_text())
    assert metrics["episodes"] == 2 * 2 * 16 and metrics["eval_prompts"] == TINY_PPO["num_eval_prompts"]
    assert result.stderr.count("step 2/2:") == 1  # the story is logged once
    assert (tmp_path / "ppo" / "checkpoint-2" / "trainer_state.json").is_file()


@pytest.mark.parametrize("algorithm, final_norm_learning_rate", [("grpo", 1e-2), ("rloo", None)])
def test_trl_grpo_and_rloo_run_through_the_same_stage_with_the_same_reward(
    tmp_path, tiny_sft, algorithm, final_norm_learning_rate
):
    from safetensors.torch import load_file

    out, metrics = run_ppo(
        ppo_recipe(
            tmp_path,
            tiny_sft,
            algorithm=algorithm,
            num_generations=4,
            per_device_train_batch_size=16,
            max_steps=2,
            ppo_epochs=1,
            num_eval_prompts=16,
            learning_rate=1e-5,
            final_norm_learning_rate=final_norm_learning_rate or ...,
        )
    )
    assert metrics["algorithm"] == algorithm and metrics["steps"] == 2 and metrics["episodes"] == 32
    assert {"gold_reward_before", "gold_reward_after", "kl_to_reference"} <= set(metrics)
    history = json.loads((out / "log_history.json").read_text())
    assert any(
        "gold_reward" in entry and "rewards/gold/mean" in entry for entry in history
    )  # our reward function, logged by TRL
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    before, after = load_file(tiny_sft / "model.safetensors"), load_file(out / "model.safetensors")
    moved = {name: (after[name] - before[name]).abs().max().item() for name in after if name in before}
    final_norm = max(moved["transformer.ln_f.weight"], moved["transformer.ln_f.bias"])
    rest = max(value for name, value in moved.items() if not name.startswith("transformer.ln_f"))
    if final_norm_learning_rate:  # the final norm trained at its own, 1000 x larger rate
        assert final_norm > 10 * rest > 0, (final_norm, rest)
    else:
        assert final_norm < 10 * rest, (final_norm, rest)


def test_grpo_needs_whole_groups(tmp_path, tiny_sft):
    from pipeline import ppo

    with pytest.raises(RecipeError, match="multiple of num_generations"):
        ppo.main(
            [
                "--config",
                str(
                    ppo_recipe(tmp_path, tiny_sft, algorithm="grpo", num_generations=6, per_device_train_batch_size=16)
                ),
            ]
        )


def test_report_to_tensorboard_logs_every_step_under_the_output_dir(tmp_path, tiny_sft):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = run_ppo(ppo_recipe(tmp_path, tiny_sft, max_steps=3, num_eval_prompts=8, report_to=["tensorboard"]))
    events = [path.parent for path in out.rglob("events.out.tfevents.*")]
    assert events, sorted(p.name for p in out.iterdir())
    accumulator = EventAccumulator(str(events[0])).Reload()
    assert [event.step for event in accumulator.Scalars("gold_reward")] == [1, 2, 3]
    assert "kl_k3" in accumulator.Tags()["scalars"]


def test_a_tracker_that_is_unknown_or_not_installed_is_refused_before_any_model_loads(tmp_path, tiny_sft):
    with pytest.raises(RecipeError, match="report_to.*unknown tracker 'tensorbored'"):
        run_ppo(ppo_recipe(tmp_path, tiny_sft, report_to="tensorbored"))
    assert not (tmp_path / "ppo").exists()


def test_a_tracker_that_is_not_installed_names_the_package_to_install(monkeypatch):
    from pipeline import tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"report_to': wandb is not installed \(pip install wandb"):
        tracking.tracker_names(["wandb"])
    assert tracking.tracker_names("none") == [] and tracking.tracker_names(["all"]) == []
