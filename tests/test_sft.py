"""The SFT stage on tiny real runs: each mode trains and follows the contract, the prompt is masked,
EOS ends each response once, adapters merge and reload, and bad input gets a clear message."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, launch_two_processes, run_in_process, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import sft
from pipeline.contract import read_manifest
from pipeline.data.sft_formats import SIMPLE_CHAT_TEMPLATE
from pipeline.data.toy_world import ToyWorld
from pipeline.errors import DataError, RecipeError, UserError
from pipeline.finetuning import ModelArguments, build_policy
from pipeline.models import load_tokenizer
from pipeline.recipes import parse_recipe

# A recipe small enough for a test: LoRA on the tiny pretrained model, a few dozen steps.
TINY_SFT = {
    "stage": "sft",
    "dataset": "toy",
    "toy_examples": 800,
    "toy_eval_examples": 64,
    "num_eval_prompts": 48,
    "sample_max_new_tokens": 16,
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "max_length": 64,
    "learning_rate": 3.0e-3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_steps": 40,
    "logging_steps": 5,
    "eval_steps": 20,
    "save_steps": 20,
    "seed": 3,
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}


@pytest.fixture(scope="session")
def tiny_base(tiny_pretrained) -> Path:
    """The pretraining stage's tiny model (conftest.TINY_PRETRAIN), trained once per session."""
    return tiny_pretrained


@pytest.fixture
def sft_recipe(tmp_path, tiny_base):
    """A factory: sft_recipe(name, **overrides) -> recipe path training on the tiny base into tmp_path."""

    def make(name: str = "sft", **overrides) -> Path:
        values = {**TINY_SFT, "model_name_or_path": str(tiny_base), "output_dir": str(tmp_path / name), **overrides}
        return write_recipe(tmp_path / f"{name}.yaml", {k: v for k, v in values.items() if v is not ...})

    return make


def run_sft(recipe: Path) -> tuple[Path, dict]:
    """Run the stage in this process, as `python -m pipeline.sft --config recipe` would; (output_dir, metrics)."""
    sft.main(["--config", str(recipe)])
    output_dir = Path(yaml.safe_load(recipe.read_text())["output_dir"])
    return output_dir, json.loads((output_dir / "metrics.json").read_text())


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def logits(model, tokenizer, text: str = "User: what is 12 + 30?\nBot: 42") -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- the modes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("lora")
    recipe = write_recipe(
        root / "sft.yaml", {**TINY_SFT, "model_name_or_path": str(tiny_base), "output_dir": str(root / "out")}
    )
    return run_sft(recipe)


def test_lora_learns_the_demonstrations_and_raises_the_gold_reward(lora_run):
    out, metrics = lora_run
    assert metrics["mode"] == "lora" and metrics["steps"] == 40
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.1, metrics
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-3)
    # Only the adapters train: a small share, counted against the whole model.
    assert 0 < metrics["trainable_parameters"] < 0.5 * metrics["parameters"]
    assert metrics["trainable_share"] == pytest.approx(
        metrics["trainable_parameters"] / metrics["parameters"], abs=1e-5
    )
    assert metrics["peak_memory_mb"] > 50 and metrics["peak_memory_kind"] == "process_max_rss"
    # The demonstrations are short, correct and cleanly ended: sampled responses get better by the truth.
    before, after = metrics["gold_reward_before"], metrics["gold_reward_after"]
    assert set(before) == set(after) == {"greedy", "temperature_1.0"}
    assert after["temperature_1.0"] > before["temperature_1.0"], metrics
    samples = json.loads((out / "samples.json").read_text())
    assert {s["when"] for s in samples} == {"before", "after"} and len(samples) == 2 * 2 * 48
    assert (out / "loss_curve.png").stat().st_size > 1000


def test_lora_output_is_a_plain_causal_lm_plus_the_adapter(lora_run, tiny_base):
    from peft import PeftModel

    out, metrics = lora_run
    assert metrics["merged"] and read_manifest(out)["inputs"] == {
        "model_name_or_path": str(tiny_base),
        "dataset": "toy",
    }
    assert (out / "adapter" / "adapter_config.json").is_file() and (
        out / "adapter" / "adapter_model.safetensors"
    ).is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    merged = AutoModelForCausalLM.from_pretrained(out)  # what the next stage loads, without PEFT
    assert not hasattr(merged, "peft_config")
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert torch.allclose(logits(merged, tokenizer), logits(with_adapter, tokenizer), atol=1e-4)
    assert not torch.allclose(logits(merged, tokenizer), logits(base, tokenizer), atol=1e-3)  # SFT changed it


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(lora_run, tmp_path, tiny_base):
    """Under `accelerate launch` (2 CPU processes, gloo) the stage trains the same model and writes once."""
    _, one = lora_run
    recipe = write_recipe(
        tmp_path / "two.yaml",
        {
            **TINY_SFT,
            "model_name_or_path": str(tiny_base),
            "output_dir": str(tmp_path / "two"),
            "per_device_train_batch_size": 8,
        },
    )
    result = launch_two_processes("-m", "pipeline.sft", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # Same global batches; the losses differ only by how padded batches are split and reduced.
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=0.02) and two["steps"] == one["steps"]
    assert read_manifest(tmp_path / "two")["stage"] == "sft" and result.stderr.count("lora fine-tuning:") == 1
    AutoModelForCausalLM.from_pretrained(tmp_path / "two")


@pytest.mark.slow
def test_qlora_runs_under_two_processes_and_writes_once(tmp_path, tiny_base):
    """QLoRA (4-bit base + adapters) under `accelerate launch` with 2 CPU processes: trains, merges, writes once."""
    pytest.importorskip("bitsandbytes")
    recipe = write_recipe(
        tmp_path / "qlora2.yaml",
        {
            **TINY_SFT,
            "model_name_or_path": str(tiny_base),
            "output_dir": str(tmp_path / "qlora2"),
            "per_device_train_batch_size": 8,
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "max_steps": 8,
            "eval_steps": 8,
            "save_steps": 8,
            "num_eval_prompts": 8,
        },
    )
    result = launch_two_processes("-m", "pipeline.sft", "--config", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "qlora2" / "metrics.json").read_text())
    assert metrics["mode"] == "qlora" and metrics["steps"] == 8 and metrics["eval_loss"] < metrics["eval_loss_before"]
    assert read_manifest(tmp_path / "qlora2")["stage"] == "sft" and result.stderr.count("qlora fine-tuning:") == 1
    assert "quantization_config" not in json.loads((tmp_path / "qlora2" / "config.json").read_text())


def test_full_fine_tune_trains_every_parameter(sft_recipe):
    out, metrics = run_sft(sft_recipe("full", use_peft=False, learning_rate=1e-3, max_steps=20, num_eval_prompts=8))
    assert metrics["mode"] == "full" and metrics["trainable_share"] == 1.0
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert (out / "model.safetensors").is_file() and not (out / "adapter").exists()
    AutoModelForCausalLM.from_pretrained(out)


def test_qlora_trains_adapters_on_a_4bit_base_and_merges_into_full_precision(sft_recipe, tiny_base):
    pytest.importorskip("bitsandbytes")
    recipe = sft_recipe(
        "qlora",
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        use_bnb_nested_quant=True,
        max_steps=8,
        num_eval_prompts=8,
        eval_steps=8,
        save_steps=8,
    )
    out, metrics = run_sft(recipe)
    assert metrics["mode"] == "qlora" and 0 < metrics["trainable_share"] < 0.5
    # 4-bit weights are counted by their logical size, so the totals match the LoRA run's model.
    base_parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_base).parameters())
    assert metrics["parameters"] == base_parameters + metrics["trainable_parameters"]
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # the merged model is full precision
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == TINY_SFT["lora_r"]


def test_without_merge_the_adapter_directory_loads_through_peft(sft_recipe, tiny_base):
    recipe = sft_recipe(
        "nomerge",
        merge_adapters=False,
        lora_target_modules=["c_attn"],
        max_steps=4,
        num_eval_prompts=4,
        eval_steps=4,
        save_steps=4,
    )
    out, metrics = run_sft(recipe)
    assert not metrics["merged"] and not (out / "model.safetensors").exists()
    # A one-item target list stays a list (a bare string would be a regular expression for PEFT).
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    model = AutoModelForCausalLM.from_pretrained(out / "adapter")  # transformers' PEFT integration
    assert hasattr(model, "peft_config")


# --- masking and special tokens -----------------------------------------------------------------------


def build(tiny_base, train_set, dataset_format, **config):
    """The stage's own trainer on a tiny base, as main() builds it."""
    args = {"output_dir": "unused", "use_cpu": True, "max_length": 64, "eval_strategy": "no", **config}
    training_args = sft.SFTTrainingConfig(**args)
    model_args = ModelArguments(model_name_or_path=str(tiny_base), use_peft=True, lora_r=4)
    tokenizer = load_tokenizer(str(tiny_base))
    sft.configure_loss(dataset_format, tokenizer, training_args)
    model = build_policy(model_args, tokenizer, training_args)
    return sft.build_trainer(model, tokenizer, train_set, None, dataset_format, model_args, training_args), tokenizer


def test_prompt_tokens_are_masked_and_eos_ends_each_completion_once(tiny_base):
    import datasets

    pairs = ToyWorld(seed=0).sft_pairs(8)
    trainer, tokenizer = build(tiny_base, datasets.Dataset.from_list(pairs), "prompt_completion")
    eos = tokenizer.eos_token_id
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    prepared = {tuple(row["input_ids"]): row for row in trainer.train_dataset}
    for pair in pairs:
        prompt_ids = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(pair["completion"], add_special_tokens=False)["input_ids"]
        ids = tuple(prompt_ids + completion_ids + [eos])  # no BOS, exactly one EOS
        row = prepared[ids]
        assert row["labels"] == [-100] * len(prompt_ids) + completion_ids + [eos]
    # The collator pads with the pad token (not EOS) and masks the padding; EOS stays a label.
    labels, input_ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert (labels[mask == 0] == -100).all() and (input_ids[mask == 0] == tokenizer.pad_token_id).all()
    assert ((labels == eos).sum(dim=1) == 1).all()


def test_a_completion_that_already_ends_with_eos_gets_no_second_one(tiny_base):
    import datasets

    tokenizer = load_tokenizer(str(tiny_base))
    data = datasets.Dataset.from_list(
        [{"prompt": "User: repeat the word: cat\nBot:", "completion": " cat" + tokenizer.eos_token}] * 4
    )
    trainer, tokenizer = build(tiny_base, data, "prompt_completion")
    assert trainer.train_dataset[0]["input_ids"].count(tokenizer.eos_token_id) == 1


def test_chat_messages_train_on_assistant_turns_only(tiny_base):
    import datasets

    conversations = [
        [
            {"role": "user", "content": "what is 1 + 2?"},
            {"role": "assistant", "content": "3"},
            {"role": "user", "content": "repeat the word: cat"},
            {"role": "assistant", "content": "cat"},
        ]
    ] * 4
    trainer, tokenizer = build(tiny_base, datasets.Dataset.from_dict({"messages": conversations}), "messages")
    assert tokenizer.chat_template == SIMPLE_CHAT_TEMPLATE and trainer.args.assistant_only_loss
    row = trainer.train_dataset[0]
    assert (
        tokenizer.decode(row["input_ids"])
        == "User: what is 1 + 2?\nBot: 3<|endoftext|>User: repeat the word: cat\nBot: cat<|endoftext|>"
    )
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert trained == " 3<|endoftext|> cat<|endoftext|>"


def test_chat_messages_file_runs_end_to_end(sft_recipe, tmp_path):
    tasks = ToyWorld(seed=1).tasks(200)
    records = [
        {"messages": [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]}
        for t in tasks
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    out, metrics = run_sft(
        sft_recipe("chat", dataset=str(data), max_steps=6, eval_steps=6, save_steps=6, num_samples=4)
    )
    assert metrics["dataset_format"] == "messages" and metrics["eval_loss"] < metrics["eval_loss_before"]
    assert AutoTokenizer.from_pretrained(out).chat_template == SIMPLE_CHAT_TEMPLATE  # saved for the next stages
    samples = json.loads((out / "samples.json").read_text())
    assert samples[0]["prompt"].startswith("User: ") and samples[0]["prompt"].endswith("\nBot:")


# --- bad input ----------------------------------------------------------------------------------------


def test_over_long_sequences_are_truncated_and_counted_not_dropped(sft_recipe, tmp_path, caplog):
    long_completion = " " + "ab" * 60  # 121 characters = tokens of the char tokenizer
    records = [{"prompt": "User: repeat the word: cat\nBot:", "completion": " cat"}] * 20
    records += [{"prompt": "User: repeat the word: dog\nBot:", "completion": long_completion}] * 7
    records += [
        {"prompt": "User: " + "a" * 70 + "\nBot:", "completion": " cat"}
    ] * 3  # the prompt alone fills max_length
    data = write_jsonl(tmp_path / "long.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="pipeline.sft"):
        _, metrics = run_sft(
            sft_recipe(
                "long", dataset=str(data), eval_fraction=0.1, max_steps=2, eval_steps=2, save_steps=2, num_samples=2
            )
        )
    train_examples = 27  # 30 - 10% held out
    assert metrics["truncated_train_examples"] + metrics["truncated_eval_examples"] == 10
    assert metrics["dropped_train_examples"] >= 1 and metrics["longest_train_sequence"] > 64
    # Truncated examples are trained on; only the prompt-only ones are left out, and that is said.
    assert metrics["train_examples"] == train_examples - metrics["dropped_train_examples"]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert (
        f"{metrics['truncated_train_examples']} of {train_examples} examples are longer than max_length=64" in messages
    )
    assert "left out of training" in messages


@pytest.mark.parametrize(
    "lines, expected",
    [
        (
            [{"prompt": "User: a\nBot:", "completion": " a"}, {"prompt": "User: b\nBot:"}],
            ":2: missing column 'completion'",
        ),
        ([], "holds no records"),
        (
            [{"prompt": "User: a\nBot:", "completion": " a"}, "", '{"prompt": "x", "completion": '],
            ":3: malformed JSON",
        ),
        ([{"prompt": "User: a\nBot:", "completion": 5}], ":1: column 'completion' must be a string"),
        ([{"text": "hello"}], "cannot tell the SFT format from the columns (text)"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "no example has a non-empty response"),
        ([{"messages": [{"role": "bot", "content": "hi"}]}], ":1: message 0 has role 'bot'"),
        ([{"instruction": "say hi", "input": 3, "output": "hi"}], ":1: column 'input' must be a string"),
    ],
)
def test_bad_data_files_name_file_and_line(sft_recipe, tmp_path, lines, expected):
    data = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError) as caught:
        run_sft(sft_recipe("bad", dataset=str(data)))
    assert expected in str(caught.value) and str(data) in str(caught.value)


def test_lora_targets_missing_from_the_model_list_its_linear_modules(sft_recipe):
    with pytest.raises(RecipeError) as caught:
        run_sft(sft_recipe("targets", lora_target_modules=["q_proj", "v_proj"]))
    message = str(caught.value)
    assert "q_proj, v_proj not in the model" in message and "c_attn, c_fc, c_proj, lm_head" in message


def test_qlora_without_use_peft_is_a_recipe_error_before_loading(sft_recipe):
    recipe = sft_recipe("nopeft", use_peft=False, load_in_4bit=True)
    with pytest.raises(RecipeError, match="set use_peft: true") as caught:
        run_sft(recipe)
    assert str(recipe) in str(caught.value)


def test_qlora_where_bitsandbytes_cannot_load_is_a_clear_error(sft_recipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(UserError, match="QLoRA needs bitsandbytes, which cannot be loaded here"):
        run_sft(sft_recipe("nobnb", load_in_4bit=True))


def test_bad_input_on_the_command_line_is_one_message_and_exit_status_2(sft_recipe, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": " b"}, "{not json"])
    result = run_in_process("pipeline.sft", "--config", str(sft_recipe("cli", dataset=str(data))))
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {data}:2: malformed JSON" in result.stderr and "Traceback" not in result.stderr


# --- recipes and the chain ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["toy/sft.yaml", "toy/sft_qlora.yaml", "gpt2/sft_lora.yaml", "gpt2/sft_qlora.yaml"])
def test_shipped_recipes_parse(name):
    path = REPO / "recipes" / name
    gpu = name.startswith("gpt2/")
    # transformers refuses bf16 on a machine without a GPU, so the GPU recipes are parsed with it off;
    # the model of recipes/toy may not exist yet (require_paths=False).
    extra = ["--bf16", "false"] if gpu and not torch.cuda.is_available() else []
    args, model_args, training, recipe = parse_recipe(
        sft.RECIPE_TYPES, ["--config", str(path), *extra], "sft", require_paths=False
    )
    assert recipe.stage == "sft" and model_args.use_peft
    assert model_args.load_in_4bit == ("qlora" in name)
    if gpu:
        assert yaml.safe_load(path.read_text())["bf16"] is True and model_args.model_name_or_path.startswith("gpt2-")
        assert args.dataset_format == "alpaca"
    else:
        assert training.use_cpu and not training.bf16 and not training.gradient_checkpointing


def test_the_chain_runs_sft_after_pretraining(tmp_path):
    import shutil

    from pipeline.chain import plan

    for name in ("sft_qlora.yaml", "sft.yaml", "pretrain.yaml"):  # the chain orders them, not the file names
        shutil.copy(REPO / "recipes" / "toy" / name, tmp_path / name)
    order = plan(tmp_path, force=True)
    stages = {stage.name: stage for stage in order}
    assert stages["sft"].depends_on == ["pretrain"] and stages["sft_qlora"].depends_on == ["pretrain"]
    assert order[0].name == "pretrain" and all(stage.action == "run" for stage in order)


def test_alpaca_records_become_prompt_completion_with_the_alpaca_prompt(tmp_path, caplog):
    from pipeline.data.sft_formats import load_sft_dataset

    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hello.", "input": "", "output": "Hello!"},
        {"instruction": "Say nothing.", "input": "", "output": " "},
    ]
    path = write_jsonl(tmp_path / "alpaca.jsonl", records)
    with caplog.at_level(logging.WARNING):
        dataset, dataset_format = load_sft_dataset(str(path))
    assert dataset_format == "alpaca" and dataset.column_names == ["prompt", "completion"]
    # An empty response leaves nothing to learn: left out, and said so with its line.
    assert (
        len(dataset) == 2
        and f"1 of 3 examples have an empty response and are left out (first at {path}:3)" in caplog.text
    )
    assert dataset[0]["prompt"].endswith(
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
    )
    assert "### Input:" not in dataset[1]["prompt"] and dataset[1]["completion"] == "Hello!"
    # Stanford Alpaca's own alpaca_data.json is one JSON array, not JSON Lines.
    array = tmp_path / "alpaca_data.json"
    array.write_text(json.dumps(records[:2], indent=2))
    from_array, array_format = load_sft_dataset(str(array))
    assert array_format == "alpaca" and from_array.to_list() == dataset.to_list()


def test_the_shared_alpaca_subset_loads(tmp_path):
    from conftest import SHARED_DATA

    from pipeline.data.sft_formats import load_sft_dataset

    path = SHARED_DATA / "alpaca" / "train.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    dataset, dataset_format = load_sft_dataset(str(path))
    assert dataset_format == "alpaca" and 4990 <= len(dataset) < 5000  # a few records have an empty output
    assert all(prompt.endswith("### Response:\n") for prompt in dataset["prompt"][:50])
