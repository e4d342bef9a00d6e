"""Reward modelling stage: the reward is read at the last real token, over-long pairs are cut from the
left of the prompt and counted, a tiny reward model learns, and bad inputs fail with one clear message."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, run_in_process, save_tiny_gpt2, write_recipe

from pipeline.errors import DataError, RecipeError

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


def reward_recipe(tmp_path: Path, model: Path, **overrides) -> Path:
    values = {
        "stage": "reward",
        "output_dir": str(tmp_path / "reward"),
        "model_name_or_path": str(model),
        "dataset": "toy",
        "toy_pairs": 600,
        "toy_eval_pairs": 150,
        "learning_rate": 3.0e-3,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 64,
        "max_steps": 40,
        "logging_steps": 5,
        "eval_strategy": "no",
        "save_steps": 20,
        "save_total_limit": 1,
        "seed": 3,
        "use_cpu": True,
        "bf16": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        **overrides,
    }
    return write_recipe(tmp_path / "reward.yaml", values)


def load_tiny_reward_model(path: Path):
    from trl import ModelConfig

    from pipeline.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(path))
    torch.manual_seed(1)
    model = load_model(ModelConfig(model_name_or_path=str(path)), tokenizer, head="sequence_classification")
    return model.eval(), tokenizer


# --- the reward is read at the last real token ------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_reward_is_read_at_the_last_real_token_whatever_the_padding(tiny_gpt2, padding_side):
    from pipeline.reward_model import encode, score

    model, tokenizer = load_tiny_reward_model(tiny_gpt2)
    prompts = ["User: what is 3 + 4?\nBot:", "User: reverse the word: cat\nBot:", "User: what colour is a frog?\nBot:"]
    responses = [" 7", " tac, i think. or maybe not, who knows really.", " green"]
    alone = [score(model, tokenizer, [p], [r], batch_size=1)[0] for p, r in zip(prompts, responses)]
    batched = score(model, tokenizer, prompts, responses, batch_size=3, padding_side=padding_side)
    assert batched == pytest.approx(alone, abs=1e-5)

    # The same number by hand: the score head applied to the hidden state of the last token (EOS).
    sequences = encode(tokenizer, prompts, responses)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in sequences)
    with torch.no_grad():
        by_hand = [
            model.score(model.transformer(torch.tensor([ids])).last_hidden_state[0, -1]).item() for ids in sequences
        ]
    assert alone == pytest.approx(by_hand, abs=1e-5)
    # ...and the two classic mistakes give other numbers for the padded (shortest) row 0.
    from pipeline.reward_model import pad_batch

    padded = pad_batch(sequences, tokenizer.pad_token_id, padding_side)
    with torch.no_grad():
        if padding_side == "right":  # reading the last column reads the short row at padding
            hidden = model.transformer(
                input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]
            ).last_hidden_state
            wrong = model.score(hidden[0, -1]).item()
        else:  # left padding without position ids from the mask shifts the short row's positions
            wrong = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[0, 0].item()
    assert len(sequences[0]) < max(len(s) for s in sequences)
    assert abs(wrong - alone[0]) > 1e-3


def test_training_batches_read_the_reward_where_scoring_does(tiny_gpt2):
    """TRL's collator pads on the right; the rewards of its batch are those of the sequences scored alone."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from pipeline.reward_model import encode_pairs, score_token_ids

    model, tokenizer = load_tiny_reward_model(tiny_gpt2)
    chosen, rejected, _ = encode_pairs(
        tokenizer, ["User: what is 1 + 1?\nBot:"] * 2, [" 2", " 2"], [" 3, i guess.", " 11"], 128
    )
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(chosen, rejected)]
    )
    with torch.no_grad():
        in_training = model(**batch).logits[:, 0].tolist()
    alone = [score_token_ids(model, [ids])[0] for ids in chosen + rejected]
    assert in_training == pytest.approx(alone, abs=1e-5)


def test_score_encodes_responses_as_the_model_was_trained(tiny_gpt2):
    """EOS is appended to finished responses only, and not at all for a model trained without it."""
    from pipeline.reward_model import encode, score, score_token_ids

    model, tokenizer = load_tiny_reward_model(tiny_gpt2)
    prompts, responses = ["User: what is 3 + 4?\nBot:"] * 2, [" 7", " 7, i think"]
    with_eos = encode(tokenizer, prompts, responses)
    without = encode(tokenizer, prompts, responses, append_eos=False)
    assert [ids[-1] for ids in with_eos] == [tokenizer.eos_token_id] * 2 and [ids[:-1] for ids in with_eos] == without
    assert score(model, tokenizer, prompts, responses) == pytest.approx(score_token_ids(model, with_eos), abs=1e-6)
    cut = score(model, tokenizer, prompts, responses, finished=[True, False])
    assert cut == pytest.approx(score_token_ids(model, [with_eos[0], without[1]]), abs=1e-6)
    model.config.reward_append_eos = False
    assert score(model, tokenizer, prompts, responses) == pytest.approx(score_token_ids(model, without), abs=1e-6)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_sum_pooling_adds_the_head_over_every_real_token_and_the_prompt_cancels(tiny_gpt2, tmp_path, padding_side):
    from pipeline.reward_model import encode, load_reward_model, score, set_pooling

    model, tokenizer = load_tiny_reward_model(tiny_gpt2)
    set_pooling(model, "sum")
    prompt = "User: reverse the word: cat\nBot:"
    responses = [" tac", " tca, i think. or maybe not."]
    alone = [score(model, tokenizer, [prompt], [r], batch_size=1)[0] for r in responses]
    assert score(model, tokenizer, [prompt] * 2, responses, batch_size=2, padding_side=padding_side) == pytest.approx(
        alone, abs=1e-4
    )

    # By hand: the score head on every token's hidden state, added up.
    sequences = encode(tokenizer, [prompt] * 2, responses)
    with torch.no_grad():
        per_token = [
            model.score(model.transformer(torch.tensor([ids])).last_hidden_state[0]).squeeze(-1) for ids in sequences
        ]
    # The prompt's tokens see no response, so their share is the same for both responses, and `score`
    # leaves it out: the reward is the response tokens' share, EOS included.
    prompt_length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert torch.allclose(per_token[0][:prompt_length], per_token[1][:prompt_length], atol=1e-5)
    assert alone == pytest.approx([t[prompt_length:].sum().item() for t in per_token], abs=1e-4)
    # Training reads whole sequences (TRL's collator); the prompt's share cancels in the comparison.
    with torch.no_grad():
        whole = [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in sequences]
    assert whole == pytest.approx([t.sum().item() for t in per_token], abs=1e-4)
    assert whole[0] - whole[1] == pytest.approx(alone[0] - alone[1], abs=1e-4)

    # The pooling is saved with the model and restored on loading; the last-token reading is another number.
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reloaded, _ = load_reward_model(tmp_path / "rm")
    assert reloaded.config.reward_pooling == "sum"
    assert score(reloaded, tokenizer, [prompt] * 2, responses) == pytest.approx(alone, abs=1e-4)
    set_pooling(reloaded, "last")
    assert abs(score(reloaded, tokenizer, [prompt], responses[:1])[0] - alone[0]) > 1e-3


# --- encoding and over-long pairs ------------------------------------------------------------------


def test_over_long_pairs_lose_the_left_of_their_prompt_and_are_counted(tiny_gpt2):
    from pipeline.models import load_tokenizer
    from pipeline.reward_model import encode_pairs

    tokenizer = load_tokenizer(str(tiny_gpt2))
    eos = tokenizer.eos_token_id
    prompts = ["User: what is 12 + 30?\nBot:", "User: repeat the word: apple\nBot:", "User: hi\nBot:"]
    chosen = [" 42", " apple", " " + "a" * 40]
    rejected = [" 41, i think. or maybe not.", " elppa", " b"]
    chosen_ids, rejected_ids, stats = encode_pairs(tokenizer, prompts, chosen, rejected, max_length=30)

    assert stats.pairs == stats.truncated == 3 and stats.prompt_truncated == 3 and stats.response_truncated == 1
    assert all(len(ids) <= 30 for ids in chosen_ids + rejected_ids)
    # First pair: both responses intact with their EOS, the prompt keeps its END ("...\nBot:").
    full_prompt = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    response = tokenizer(rejected[0], add_special_tokens=False)["input_ids"] + [eos]
    assert rejected_ids[0][-len(response) :] == response
    kept = rejected_ids[0][: -len(response)]
    assert kept == full_prompt[-len(kept) :] and len(kept) == 30 - len(response)
    # Both responses see the same (cut) prompt, so the pair still compares like with like.
    assert chosen_ids[0] == kept + tokenizer(" 42", add_special_tokens=False)["input_ids"] + [eos]
    assert chosen_ids[0][-1] == eos and chosen_ids[1][-1] == eos
    # Third pair: the chosen response alone is too long; it keeps one prompt token and its start.
    assert tokenizer.decode(chosen_ids[2][:1]) == ":" and chosen_ids[2][-1] != eos


def test_over_long_real_hh_pairs_are_kept_and_counted(tiny_gpt2):
    path = SHARED_DATA / "hh_rlhf" / "test.jsonl.gz"
    if not path.is_file():
        pytest.skip("shared data absent")
    from pipeline.data.preferences import load_preferences
    from pipeline.models import load_tokenizer
    from pipeline.rm.pairs import tokenize_pairs

    pairs, stats = load_preferences(str(path))
    pairs = pairs.select(range(100))
    tokenizer = load_tokenizer(str(tiny_gpt2))
    max_length = 256
    encoded, truncation = tokenize_pairs(pairs, tokenizer, max_length, None, "test")
    assert len(encoded) == 100 == truncation.pairs  # nothing dropped
    assert truncation.prompt_truncated > 50 and truncation.longest > max_length
    assert max(len(ids) for ids in list(encoded["chosen_ids"]) + list(encoded["rejected_ids"])) <= max_length
    assert truncation.truncated <= 100 and truncation.prompt_truncated <= truncation.truncated
    # Where the responses fit, each sequence = the END of the prompt + the whole response + EOS.
    checked = 0
    for prompt, chosen, rejected, ids in zip(
        pairs["prompt"], pairs["chosen"], pairs["rejected"], encoded["chosen_ids"]
    ):
        response = tokenizer(chosen, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        other = len(tokenizer(rejected, add_special_tokens=False)["input_ids"]) + 1
        if max(len(response), other) < max_length:
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            kept = len(ids) - len(response)
            assert ids[kept:] == response and ids[:kept] == prompt_ids[len(prompt_ids) - kept :]
            checked += 1
    assert checked > 30


def test_held_out_split_never_shares_a_prompt_with_training():
    import datasets

    from pipeline.rm.pairs import split_by_prompt

    pairs = datasets.Dataset.from_dict(
        {
            "prompt": [f"q{i % 20}" for i in range(100)],
            "chosen": [f"a{i}" for i in range(100)],
            "rejected": ["b"] * 100,
        }
    )
    train, held_out = split_by_prompt(pairs, 0.2, seed=0, source="x")
    assert len(train) + len(held_out) == 100 and len(held_out) == 20
    assert not set(train["prompt"]) & set(held_out["prompt"])


# --- a tiny reward model learns -------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_reward_model_learns_and_scores_as_it_was_evaluated(tiny_pretrained, tmp_path):
    from pipeline.data.preferences import load_preferences
    from pipeline.reward import main
    from pipeline.reward_model import load_reward_model, pairwise_metrics, score

    recipe = reward_recipe(
        tmp_path,
        tiny_pretrained,
        best_of_n_prompts=2,
        best_of_n_max=4,
        sample_max_new_tokens=8,
        train_sampling_strategy="group_by_length",
    )
    main(["--config", str(recipe)])
    out = tmp_path / "reward"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "manifest.json").is_file()
    for name in ("model.safetensors", "tokenizer.json", "reward_histogram.png", "calibration.png", "best_of_n.png"):
        assert (out / name).is_file(), name

    assert metrics["last_logged_loss"] < metrics["first_logged_loss"]
    assert metrics["heldout_accuracy"] >= 0.6 and metrics["heldout_accuracy"] > metrics["heldout_accuracy_before"]
    assert metrics["heldout_accuracy_by_kind"]["right > right rambling"]["accuracy"] >= 0.8
    assert metrics["heldout_calibration"]["pairs"] == metrics["heldout_pairs"]
    assert set(metrics["targets"]) == {"heldout_accuracy"}  # no Best-of-16 target: N stops at 4 here
    table = json.loads((out / "best_of_n.json").read_text())["table"]
    assert [row["n"] for row in table] == [1, 2, 4]

    # The saved model, scoring text with the shared helper, reproduces the stage's held-out accuracy.
    model, tokenizer = load_reward_model(out)
    # Held out means the test split; the validation split's accuracy, to choose recipes by, sits beside it.
    for split, key in (("test", "heldout_accuracy"), ("validation", "validation_accuracy")):
        pairs, _ = load_preferences("toy", split, toy_pairs=150)
        chosen = score(model, tokenizer, pairs["prompt"], pairs["chosen"])
        rejected = score(model, tokenizer, pairs["prompt"], pairs["rejected"])
        assert pairwise_metrics(chosen, rejected)["accuracy"] == pytest.approx(metrics[key], abs=1e-4)
    assert metrics["heldout_split"] == "test"


@pytest.mark.slow
def test_lora_reward_model_trains_its_head_and_merges(tiny_gpt2, tmp_path):
    from safetensors.torch import load_file
    from transformers import set_seed

    from pipeline.models import load_tokenizer
    from pipeline.reward import RewardModelArguments, build_model, main

    recipe = reward_recipe(
        tmp_path,
        tiny_gpt2,
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        max_steps=6,
        toy_pairs=200,
        toy_eval_pairs=40,
        margin_column="gold_gap",
        center_rewards_coefficient=0.01,
        toy_policy_prompts=6,
        toy_policy_samples=3,
        reward_pooling="sum",
    )
    main(["--config", str(recipe)])
    out = tmp_path / "reward"
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "lora" and metrics["trainable_share"] < 0.5 and metrics["margins"] == "gold_gap"
    # The random policy's samples differ in gold reward: they become extra comparisons.
    comparisons = metrics["data"]["policy_comparisons"]
    assert comparisons["prompts"] == 6 and comparisons["samples"] == 18 and 0 <= comparisons["pairs"] <= 6
    merged = load_file(str(out / "model.safetensors"))
    assert "score.weight" in merged and not any("lora" in key for key in merged)
    # The merged head is the trained head saved with the adapter, not the base's random one.
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    trained_head = [value for key, value in adapter.items() if "score" in key]
    assert len(trained_head) == 1 and torch.equal(merged["score.weight"], trained_head[0])
    set_seed(3)  # the recipe's seed: the head the stage started from
    initial = build_model(
        RewardModelArguments(model_name_or_path=str(tiny_gpt2)), load_tokenizer(str(tiny_gpt2)), False
    )
    assert not torch.allclose(merged["score.weight"], initial.score.weight.detach())
    # The merged model keeps the token-sum pooling it was trained with.
    from pipeline.reward_model import load_reward_model

    assert metrics["reward_pooling"] == "sum" and load_reward_model(out)[0].config.reward_pooling == "sum"


def test_extra_layers_start_as_the_identity_and_save_as_a_plain_model(tiny_gpt2, tmp_path):
    from transformers import AutoModelForSequenceClassification, set_seed

    from pipeline.models import load_tokenizer
    from pipeline.reward import RewardModelArguments, build_model
    from pipeline.reward_model import score

    tokenizer = load_tokenizer(str(tiny_gpt2))
    set_seed(0)
    plain = build_model(RewardModelArguments(model_name_or_path=str(tiny_gpt2)), tokenizer, False).eval()
    set_seed(0)
    deeper = build_model(
        RewardModelArguments(model_name_or_path=str(tiny_gpt2)), tokenizer, False, extra_layers=2
    ).eval()
    assert deeper.config.n_layer == plain.config.n_layer + 2 == len(deeper.transformer.h)
    prompts, responses = (
        ["User: repeat the word: cat\nBot:", "User: what colour is a frog?\nBot:"],
        [" cat", " green, i think."],
    )
    assert score(deeper, tokenizer, prompts, responses) == pytest.approx(
        score(plain, tokenizer, prompts, responses), abs=1e-5
    )
    # The new blocks learn: their zeroed output projections get gradients.
    deeper.train()
    batch = tokenizer(["User: repeat the word: cat\nBot: cat"], return_tensors="pt")
    deeper(**batch).logits.sum().backward()
    assert deeper.transformer.h[-1].mlp.c_proj.weight.grad.abs().sum() > 0
    deeper.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert reloaded.config.n_layer == deeper.config.n_layer
    assert score(reloaded, tokenizer, prompts, responses) == pytest.approx(
        score(plain, tokenizer, prompts, responses), abs=1e-5
    )


# --- bad input -------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"prompt": "User: hi\nBot:", "chosen": " hello", "rejected": " go away"}


@pytest.mark.parametrize(
    "records, message",
    [
        ([GOOD, {"prompt": "q", "chosen": "a"}], r"p.jsonl:2: missing field 'rejected'"),
        (
            [GOOD, {"prompt": "q", "chosen": ["a"], "rejected": "b"}],
            r"p.jsonl:2: field 'chosen' must be a string, got list",
        ),
        ([{"prompt": "", "chosen": "a", "rejected": "b"}, GOOD], r"p.jsonl:1: empty prompt"),
        ([GOOD] * 5, r"only 1 distinct pair\(s\) to train on after removing 4 duplicates.*every pair is the same"),
        ([{"prompt": "q", "chosen": "same", "rejected": "same"}] * 3, r"all 3 pairs were dropped"),
        (
            [{**GOOD, "margin": 1.0}, {**GOOD, "chosen": " hey", "margin": "big"}],
            r"p.jsonl:2: margin column 'margin' must be a number",
        ),
    ],
)
def test_bad_preference_data_is_one_clear_error(tiny_gpt2, tmp_path, records, message):
    from pipeline.reward import main

    data = write_jsonl(tmp_path / "p.jsonl", records)
    recipe = reward_recipe(tmp_path, tiny_gpt2, dataset=str(data), eval_dataset=str(data), margin_column="margin")
    with pytest.raises(DataError, match=message):
        main(["--config", str(recipe)])
    assert not (tmp_path / "reward" / "manifest.json").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"best_of_n_max": 48}, "key 'best_of_n_max' must be a power of 2"),
        ({"margin_column": "gold_gap", "dataset": "DATA"}, "'gold_gap' needs the toy world's gold reward"),
        ({"max_length": 4096}, "key 'max_length' \\(4096\\) exceeds the model's context length \\(128\\)"),
        ({"load_in_4bit": True, "use_peft": True}, "quantized reward models are not supported"),
        ({"best_of_n_strategy": "nucleus"}, "unknown strategy 'nucleus'"),
        ({"extra_layers": 2, "use_peft": True}, "key 'extra_layers' needs full fine-tuning"),
        ({"reward_pooling": "mean"}, "key 'reward_pooling': unknown pooling 'mean'; choose from last, sum"),
    ],
)
def test_bad_recipe_values_name_the_key(tiny_gpt2, tmp_path, overrides, message):
    from pipeline.reward import main

    data = write_jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "chosen": " hey"}])
    overrides = {key: str(data) if value == "DATA" else value for key, value in overrides.items()}
    recipe = reward_recipe(tmp_path, tiny_gpt2, **overrides)
    with pytest.raises(RecipeError, match=message):
        main(["--config", str(recipe)])


def test_command_line_reports_bad_data_in_one_line(tiny_gpt2, tmp_path):
    data = tmp_path / "p.jsonl.gz"
    with gzip.open(data, "wt") as handle:
        handle.write(json.dumps(GOOD) + "\n" + json.dumps({"prompt": "q", "chosen": 3, "rejected": "b"}) + "\n")
    recipe = reward_recipe(tmp_path, tiny_gpt2, dataset=str(data))
    result = run_in_process("pipeline.reward", "--config", str(recipe))
    assert result.returncode == 2
    assert f"error: {data}:2: field 'chosen' must be a string, got int" in result.stderr
    assert "Traceback" not in result.stderr


def test_margins_and_hh_transcripts_from_a_file(tiny_gpt2, tmp_path):
    """HH transcripts with a margin column: the margin reaches the pairs RewardTrainer trains on."""
    from pipeline.models import load_tokenizer
    from pipeline.reward import RewardArguments, load_pairs
    from pipeline.rm.pairs import margins_for, tokenize_pairs

    records = [
        {
            "chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello {i}",
            "rejected": f"\n\nHuman: hi {i}\n\nAssistant: no",
            "margin": i / 10,
        }
        for i in range(30)
    ]
    data = write_jsonl(tmp_path / "hh.jsonl", records)
    args = RewardArguments(dataset=str(data), margin_column="margin", eval_fraction=0.2)
    train, held_out, stats = load_pairs(args, seed=0)
    assert len(train) + len(held_out) == 30 and len(held_out) == 6 and stats["train"]["format"] == "jsonl"
    assert all(prompt.endswith("\n\nAssistant:") for prompt in train["prompt"])
    margins = margins_for(train, args, args.dataset, "train")
    expected = [int(prompt.split("hi ")[1].split("\n")[0]) / 10 for prompt in train["prompt"]]
    assert margins == pytest.approx(expected)
    encoded, _ = tokenize_pairs(train, load_tokenizer(str(tiny_gpt2)), 128, margins, "train")
    assert list(encoded["margin"]) == pytest.approx(expected)
