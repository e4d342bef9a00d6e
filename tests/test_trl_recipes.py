"""TRL users' recipes run unchanged: TRL's own example commands for SFT, DPO and reward modelling, and a GRPO
recipe in TRL's key names (tests/fixtures/trl_recipes, origins noted there), through `gpt-pipeline train`.

The command line points each recipe at a tiny local model and data set, as a user points it at theirs, and
shortens it to two steps; every other key is the recipe's own. What a user checks: the stage ran to the end,
and the run recorded TRL's values under this project's names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, save_tiny_gpt2

from pipeline.__main__ import main
from pipeline.contract import read_manifest
from pipeline.data.toy_world import ToyWorld

FIXTURES = REPO / "tests" / "fixtures" / "trl_recipes"
# A tiny model on a 2-core CPU: two steps, no hub, and the model's own end-of-text token instead of Qwen's.
QUICK = ["--max_steps", "2", "--use_cpu", "true"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world_data(tmp_path_factory) -> dict[str, Path]:
    """The toy world's data in the formats of the hub data sets the recipes name: Capybara-style messages,
    preference pairs (prompt / chosen / rejected) and prompts."""
    root = tmp_path_factory.mktemp("trl_recipes")
    world = ToyWorld(seed=0)
    pairs = world.preference_pairs(64, split="train")
    question = lambda prompt: prompt.removeprefix("User: ").removesuffix("\nBot:")  # noqa: E731
    return {
        "model": save_tiny_gpt2(root / "model", n_positions=256),
        "messages": write_jsonl(
            root / "capybara.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": question(pair["prompt"])},
                        {"role": "assistant", "content": pair["chosen"].strip()},
                    ]
                }
                for pair in pairs
            ],
        ),
        "pairs": write_jsonl(root / "pairs.jsonl", pairs),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in world.prompts(64, split="train")]),
        "root": root,
    }


def run(stage: str, data: dict[str, Path], dataset: str, *extra: str) -> dict:
    output_dir = data["root"] / stage
    recipe = FIXTURES / f"{stage}.yaml"
    main(
        [
            "train",
            "--stage",
            stage,
            str(recipe),
            "--model_name_or_path",
            str(data["model"]),
            "--dataset_name",
            str(data[dataset]),
            "--output_dir",
            str(output_dir),
            *QUICK,
            *extra,
        ]
    )
    manifest = read_manifest(output_dir)
    assert manifest is not None and "metrics.json" in manifest["files"], stage  # written last, when finished
    return manifest


def test_trls_sft_example_runs_unchanged(world_data):
    manifest = run("sft", world_data, "messages", "--eos_token", "<|endoftext|>", "--push_to_hub", "false")
    values = manifest["recipe_values"]
    assert values["dataset"] == str(world_data["messages"]) and "dataset_name" not in values
    assert values["use_peft"] is True and values["lora_r"] == 32 and values["packing"] is True


def test_trls_dpo_and_reward_examples_run_unchanged(world_data):
    dpo = run("dpo", world_data, "pairs")
    assert dpo["recipe_values"]["remove_unused_columns"] is False and dpo["recipe_values"]["lora_alpha"] == 16
    reward = run("reward", world_data, "pairs", "--max_length", "256")
    assert reward["recipe_values"]["gradient_checkpointing"] is True


def test_a_grpo_recipe_in_trls_names_runs_as_the_ppo_stage(world_data):
    if read_manifest(world_data["root"] / "reward") is None:
        run("reward", world_data, "pairs", "--max_length", "256")
    manifest = run(
        "grpo",
        world_data,
        "prompts",
        "--reward_model_name_or_path",
        str(world_data["root"] / "reward"),
        "--max_completion_length",
        "8",
        "--num_eval_prompts",
        "8",
    )
    values = manifest["recipe_values"]
    assert manifest["stage"] == "ppo" and values["algorithm"] == "grpo"
    assert values["kl_coef"] == 0.04 and values["ppo_epochs"] == 1 and values["cliprange"] == 0.2
    assert values["response_length"] == 8 and values["reward_model_path"] == str(world_data["root"] / "reward")


def test_trls_datasets_mixture_joins_its_entries(world_data, tmp_path):
    """TRL's `datasets:` block (DatasetMixtureConfig): the SFT stage trains on the rows of every entry, and the
    preference stages read the same pairs from a mixture as from the file itself."""
    from conftest import write_recipe

    from pipeline.data.preferences import load_preferences
    from pipeline.errors import DataError

    extra = write_jsonl(
        tmp_path / "more.jsonl",
        [{"prompt": "User: repeat the word: kip\nBot:", "completion": " kip"}] * 3
        + [{"prompt": "User: reverse the word: ab\nBot:", "completion": " ba"}],
    )
    recipe = write_recipe(
        tmp_path / "sft.yaml",
        {
            "model_name_or_path": str(world_data["model"]),
            "datasets": [
                {"path": "json", "data_files": str(world_data["messages"]), "split": "train"},
                {"path": "json", "data_files": str(extra), "split": "train", "columns": ["prompt", "completion"]},
            ],
            "dataset_format": "prompt_completion",
            "output_dir": str(tmp_path / "sft"),
        },
    )
    with pytest.raises(DataError, match="row 0: column 'prompt' must be a string"):  # chats mixed with completions
        main(["train", "--stage", "sft", str(recipe), *QUICK])
    recipe.write_text(recipe.read_text().replace(str(world_data["messages"]), str(extra)))
    main(["train", "--stage", "sft", str(recipe), *QUICK])
    metrics = json.loads((tmp_path / "sft" / "metrics.json").read_text())
    assert metrics["train_examples"] + metrics["eval_examples"] == 8  # both entries' rows, one held out

    mixture = [{"path": "json", "data_files": str(world_data["pairs"])}]
    from_mixture, stats = load_preferences(mixture)
    from_file, _ = load_preferences(str(world_data["pairs"]))
    assert from_mixture.to_list() == from_file.to_list() and stats.format == "mixture"
    with pytest.raises(DataError, match="key 'datasets'"):
        load_preferences([{"path": "json", "data_files": str(tmp_path / "absent.jsonl")}])


def test_prompt_only_data_sets_feed_the_online_stages(world_data, tmp_path):
    """TRL's prompt-only format (a `prompt` column, as the GRPO data sets) read through `datasets` (here a
    mixture, as a hub data set is read): the same prompts as the file; chat-message prompts are refused."""
    from pipeline.errors import DataError
    from pipeline.rl.prompts import read_prompts

    mixture = [{"path": "json", "data_files": str(world_data["prompts"])}]
    assert read_prompts(mixture) == read_prompts(str(world_data["prompts"])) and len(read_prompts(mixture)) > 8
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"\[0\]: field 'prompt' is a list of chat messages"):
        read_prompts([{"path": "json", "data_files": str(chats)}])
