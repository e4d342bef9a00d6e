"""The DPO stage and the policy evaluation on tiny models: it learns, the reference is the SFT model (with and
without LoRA), the loss types are the ones asked for, and bad preference data is a clear error."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_process, write_recipe
from transformers import AutoModelForCausalLM, GPT2Config, GPT2ForSequenceClassification

from pipeline import dpo
from pipeline.contract import read_manifest
from pipeline.data.toy_world import ToyWorld
from pipeline.errors import DataError, RecipeError
from pipeline.models import load_model, load_tokenizer
from pipeline.policy_eval import evaluate_policy, toy_gold_scorer, win_rate
from pipeline.recipes import parse_recipe
from pipeline.tokenization import train_tokenizer

torch.set_num_threads(1)

# 12 steps of DPO on 16 toy pairs (6 epochs) with a 1-layer, 32-wide model: seconds on one core.
TINY_DPO = {
    "stage": "dpo",
    "dataset": "toy",
    "toy_pairs": 16,
    "toy_eval_pairs": 16,
    "num_eval_prompts": 8,
    "sample_max_new_tokens": 12,
    "generation_batch_size": 8,
    "max_length": 96,
    "beta": 0.1,
    "learning_rate": 3.0e-3,
    "warmup_steps": 0,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "max_steps": 12,
    "logging_steps": 2,
    "eval_steps": 6,
    "save_steps": 6,
    "seed": 7,
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    """A stand-in for the SFT model: a tiny random GPT-2 with the toy world's char tokenizer, saved like a stage
    output."""
    directory = tmp_path_factory.mktemp("sft")
    tokenizer = train_tokenizer(ToyWorld(seed=0).pretraining_corpus(300), kind="char")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def recipe(root: Path, sft_dir: Path, name: str = "dpo", **overrides) -> Path:
    values = {**TINY_DPO, "model_name_or_path": str(sft_dir), "output_dir": str(root / "runs" / name), **overrides}
    return write_recipe(root / f"{name}.yaml", values)


def parse(path: Path):
    return parse_recipe(dpo.RECIPE_TYPES, ["--config", str(path)], "dpo")


def trainer_for(path: Path):
    """The stage's DPOTrainer, built as main() builds it, for tests that look inside."""
    args, model_args, training_args, _ = parse(path)
    train_set, held_out, _ = dpo.load_pairs(args, training_args.seed)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    return dpo.build_trainer(model_args, training_args, train_set, held_out, tokenizer), model_args, tokenizer


def response_logps(model, batch) -> torch.Tensor:
    """Sum of log π(response token) per sequence, by hand, from ordinary logits (not TRL's fused head)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


# --- a whole run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sft_dir):
    root = tmp_path_factory.mktemp("dpo_full")
    path = recipe(root, sft_dir)
    dpo.main(["--config", str(path)])
    out = root / "runs" / "dpo"
    return path, out, json.loads((out / "metrics.json").read_text())


def test_loss_falls_and_the_policy_moves_away_from_sft(full_run):
    _, out, metrics = full_run
    history = json.loads((out / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert history[0]["step"] == 0 and history[0]["eval_rewards/margins"] == 0.0  # the held-out point before training
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # policy = reference at the start: −log σ(0)
    assert sum(losses[-2:]) / 2 < losses[0] - 0.2, losses
    # The held-out implicit reward is exactly 0 before training (the reference is the starting policy) and moves after.
    assert metrics["held_out_before"]["implicit_reward_margin"] == 0.0
    assert metrics["held_out_before"]["implicit_reward_accuracy"] == 0.5  # every pair a tie, not every pair wrong
    assert metrics["held_out_before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # It learns its training pairs (the held-out pairs ask new questions, which 12 steps on 16 pairs need not reach).
    train = [entry for entry in history if "rewards/margins" in entry]
    assert train[-1]["rewards/margins"] > 0.05 and train[-1]["rewards/accuracies"] > 0.5
    assert math.isfinite(metrics["implicit_reward_margin"]) and 0.0 <= metrics["implicit_reward_accuracy"] <= 1.0
    assert metrics["chosen_logp_fell"] == (
        metrics["held_out_after"]["logp_chosen"] < metrics["held_out_before"]["logp_chosen"]
    )
    kl = metrics["kl_to_sft"]
    assert set(kl) == {"k1", "k2", "k3", "exact"} and kl["exact"] > 0.0 and kl["k3"] >= 0.0 and kl["k2"] >= 0.0
    for when in ("gold_reward_before", "gold_reward_after"):
        assert set(metrics[when]) == {"greedy", "sampled"} and all(0.0 <= v <= 1.0 for v in metrics[when].values())
    assert set(metrics["win_rate_vs_sft"]["gold_reward"]) == {"greedy", "sampled"}
    assert metrics["gold_reward_gain"]["sampled"] == pytest.approx(
        metrics["gold_reward_after"]["sampled"] - metrics["gold_reward_before"]["sampled"], abs=1e-3
    )
    assert metrics["mode"] == "full" and metrics["reference"] == "frozen copy of the SFT model"


def test_dpo_can_train_on_comparisons_of_the_sft_models_own_samples(tmp_path, sft_dir):
    from pipeline.data.toy_world import gold_reward

    path = recipe(
        tmp_path,
        sft_dir,
        toy_pairs=0,
        toy_policy_prompts=12,
        toy_policy_samples=8,
        max_steps=2,
        sample_max_new_tokens=32,
    )  # long enough for the random tiny model to stop now and then
    dpo.main(["--config", str(path)])
    metrics = json.loads((tmp_path / "runs" / "dpo" / "metrics.json").read_text())
    comparisons = metrics["data"]["policy_comparisons"]
    assert comparisons["prompts"] == 12 and comparisons["samples"] == 96
    assert metrics["train_pairs"] == comparisons["pairs"] > 0  # toy_pairs: 0 -> only the model's own samples
    assert metrics["eval_pairs"] == 16  # held out: the toy world's hand-made eval pairs, as always
    # Each comparison is labelled by the gold reward: chosen scores higher.
    from transformers import AutoModelForCausalLM

    from pipeline.data.toy_comparisons import policy_comparisons
    from pipeline.models import load_tokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(sft_dir), load_tokenizer(str(sft_dir))
    pairs, _ = policy_comparisons(
        model, tokenizer, ["User: repeat the word: cat\nBot:"] * 6, 8, "temperature_1.0", 32, seed=0
    )
    assert pairs is not None
    assert all(
        gold_reward(p, c) > gold_reward(p, r) for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    )


def test_output_follows_the_stage_contract(full_run, sft_dir):
    path, out, _ = full_run
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "recipe.yaml",
        "samples.json",
        "dpo_curves.png",
        "loss_curve.png",
    ):
        assert (out / name).is_file(), name
    manifest = read_manifest(out)
    assert manifest["stage"] == "dpo" and manifest["inputs"] == {"model_name_or_path": str(sft_dir), "dataset": "toy"}
    samples = json.loads((out / "samples.json").read_text())
    assert {(s["model"], s["strategy"]) for s in samples} == {
        (m, s) for m in ("policy", "reference") for s in ("greedy", "sampled")
    }
    # The saved policy differs from the SFT model it started from, which is left untouched.
    policy = AutoModelForCausalLM.from_pretrained(out)
    sft = AutoModelForCausalLM.from_pretrained(sft_dir)
    assert not torch.equal(policy.transformer.h[0].attn.c_attn.weight, sft.transformer.h[0].attn.c_attn.weight)
    dpo.main(["--config", str(path)])  # a finished run of the same recipe is not run again
    assert read_manifest(out)["started_at"] == manifest["started_at"]


# --- the reference model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_peft", [True, False], ids=["lora", "full"])
def test_the_reference_is_the_sft_model_before_and_after_training(tmp_path, sft_dir, use_peft):
    peft = (
        {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["c_attn", "c_proj", "c_fc"]}
        if use_peft
        else {}
    )
    trainer, model_args, tokenizer = trainer_for(
        recipe(tmp_path, sft_dir, max_steps=4, save_strategy="no", eval_strategy="no", **peft)
    )
    if use_peft:
        # No second model: TRL gets the reference by disabling the adapters of the policy.
        assert trainer.ref_model is None and hasattr(trainer.model, "disable_adapter")
    else:
        # A frozen copy loaded from the SFT model's saved path, distinct from the policy.
        assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
        assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    sft = load_model(model_args, tokenizer).eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    expected = response_logps(sft, batch)

    def reference_logps():
        chosen, rejected = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, batch)
        return torch.cat([chosen, rejected])

    assert torch.allclose(reference_logps(), expected, atol=1e-4)
    trainer.train()
    policy_logps = response_logps(trainer.model.eval(), batch)
    assert (policy_logps - expected).abs().max() > 1e-2  # the policy has moved ...
    assert torch.allclose(reference_logps(), expected, atol=1e-4)  # ... its reference has not


# --- loss types -----------------------------------------------------------------------------------------------

BETA = 0.1


@pytest.mark.parametrize(
    "overrides, loss_at_start",
    [
        ({"loss_type": "sigmoid"}, math.log(2)),  # −log σ(β·0)
        ({"loss_type": "ipo"}, (1 / (2 * BETA)) ** 2),  # (0 − 1/(2τ))²
        ({"loss_type": "hinge"}, 1.0),  # max(0, 1 − β·0)
        ({"loss_type": "robust", "label_smoothing": 0.1}, math.log(2)),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, None),  # DPO + 0.5·NLL(chosen), as in RPO
    ],
    ids=["sigmoid", "ipo", "hinge", "robust", "sigmoid+sft"],
)
def test_loss_types_are_applied_and_trained(tmp_path, sft_dir, overrides, loss_at_start):
    trainer, *_ = trainer_for(
        recipe(tmp_path, sft_dir, beta=BETA, max_steps=3, save_strategy="no", eval_strategy="no", **overrides)
    )
    start = trainer.evaluate(eval_dataset=trainer.train_dataset.select(range(16)))["eval_loss"]
    if loss_at_start is not None:
        assert start == pytest.approx(loss_at_start, rel=1e-4)  # policy = reference: the loss's value at a zero margin
    else:
        assert start > math.log(2) + 0.5 * 2.0  # the NLL of a random 45-letter model is far above 2 nats per sequence
    trainer.train()
    end = trainer.evaluate(eval_dataset=trainer.train_dataset.select(range(16)))["eval_loss"]
    assert math.isfinite(end) and end < start


# --- data -------------------------------------------------------------------------------------------------------

GOOD = {"prompt": "User: what is 1 + 1?\nBot:", "chosen": " 2", "rejected": " 3"}


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ({"prompt": "User: hi\nBot:", "chosen": " 2"}, "missing field 'rejected'"),
        ({"prompt": "User: hi\nBot:", "chosen": 2, "rejected": " 3"}, "field 'chosen' must be a string"),
        ({"prompt": "   ", "chosen": " 2", "rejected": " 3"}, "empty prompt"),
        ({"chosen": " 2", "rejected": " 3"}, "missing field 'prompt'"),
    ],
    ids=["missing-field", "not-a-string", "empty-prompt", "no-prompt"],
)
def test_bad_preference_records_name_file_and_line(tmp_path, sft_dir, bad_line, expected):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad_line) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{data}:2: ") + ".*" + re.escape(expected)):
        dpo.main(["--config", str(recipe(tmp_path, sft_dir, dataset=str(data)))])


def test_pairs_without_any_preference_are_refused_in_one_line(tmp_path, sft_dir):
    data = tmp_path / "ties.jsonl"
    data.write_text("".join(json.dumps({**GOOD, "rejected": GOOD["chosen"]}) + "\n" for _ in range(5)))
    result = run_in_process("pipeline.dpo", "--config", str(recipe(tmp_path, sft_dir, dataset=str(data))))
    assert result.returncode == 2
    assert "error:" in result.stderr and "no preference left to learn" in result.stderr
    assert "Traceback" not in result.stderr


def test_lora_run_on_jsonl_counts_long_pairs_and_scores_with_a_reward_model(tmp_path, sft_dir):
    """Over-long prompts keep their end, pairs over max_length are counted; LoRA saves adapter + merged model;
    win rates by a reward model appear when one is given."""
    world = ToyWorld(seed=3)
    # Short pairs (1 char = 1 token, under 40 tokens each), then 5 over-long prompts and 4 over-long responses.
    records = [
        {"prompt": f"User: what is {i} + 1?\nBot:", "chosen": f" {i + 1}", "rejected": f" {i + 2}"} for i in range(24)
    ]
    for record in records[:5]:  # long prompts: 100 extra characters (1 char = 1 token) before the question
        record["prompt"] = "x" * 100 + record["prompt"]
    for record in records[5:9]:  # long rejected responses: prompt + response > max_length
        record["rejected"] = " " + "la " * 40
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in world.preference_pairs(8, split="validation")))
    reward_dir = tmp_path / "reward"
    tokenizer = load_tokenizer(str(sft_dir))
    classifier = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2ForSequenceClassification(classifier).save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)

    path = recipe(
        tmp_path,
        sft_dir,
        dataset=str(data),
        eval_dataset=str(held_out),
        max_length=80,
        max_prompt_length=48,
        reward_model_path=str(reward_dir),
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        max_steps=4,
        eval_steps=4,
        save_steps=4,
    )
    dpo.main(["--config", str(path)])
    out = tmp_path / "runs" / "dpo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shortened_prompts"] == 5
    assert metrics["truncated_train_pairs"] == 4 and metrics["dropped_train_pairs"] == 0
    assert metrics["data"]["train"]["kept"] == 24 and metrics["train_pairs"] == 24
    assert metrics["mode"] == "lora" and metrics["reference"] == "policy with adapters disabled" and metrics["merged"]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    assert set(metrics["win_rate_vs_sft"]) == {"reward_model"}  # no gold reward outside the toy world
    assert "gold_reward_sampled" not in metrics


def test_qlora_trains_adapters_on_a_4bit_sft_model_and_saves_a_full_precision_merge(tmp_path, sft_dir):
    pytest.importorskip("bitsandbytes")
    path = recipe(
        tmp_path,
        sft_dir,
        use_peft=True,
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        dtype="float32",
        lora_r=4,
        lora_alpha=8,
        max_steps=3,
        save_steps=3,
    )
    dpo.main(["--config", str(path)])
    out = tmp_path / "runs" / "dpo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "qlora" and metrics["merged"] and metrics["reference"] == "policy with adapters disabled"
    assert metrics["trainable_parameters"] < 0.5 * metrics["parameters"]
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain full-precision model, no 4-bit weights
    assert merged.transformer.h[0].attn.c_attn.weight.dtype == torch.float32
    assert math.isfinite(metrics["kl_to_sft"]["exact"])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"loss_type": "dpo"}, "key 'loss_type': unknown loss 'dpo'"),
        (
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]},
            "key 'loss_weights' needs one weight per loss_type",
        ),
        ({"loss_type": "exo_pair"}, "key 'label_smoothing' must be > 0 for loss_type exo_pair"),
        ({"label_smoothing": 0.5}, "key 'label_smoothing' must be in [0, 0.5)"),
        ({"label_smoothing": 0.1}, "key 'label_smoothing' (0.1) has no effect on loss_type ['sigmoid']"),
        ({"beta": 0.0}, "key 'beta' must be > 0"),
        ({"ld_alpha": 1.5}, "key 'ld_alpha' must be in [0, 1]"),
        ({"use_peft": True, "sync_ref_model": True}, "sync_ref_model (TR-DPO) needs a separate reference model"),
        (
            {"reward_model_path": "runs/nowhere/reward"},
            "key 'reward_model_path': path runs/nowhere/reward does not exist",
        ),
        ({"toy_pairs": 0}, "keys 'toy_pairs' and 'toy_policy_prompts' are both 0"),
        ({"toy_policy_prompts": 4, "toy_policy_samples": 1}, "key 'toy_policy_samples' must be >= 2"),
    ],
)
def test_bad_recipes_name_key_and_file(tmp_path, sft_dir, overrides, expected):
    path = recipe(tmp_path, sft_dir, **overrides)
    with pytest.raises(RecipeError) as caught:
        dpo.main(["--config", str(path)])
    assert str(path) in str(caught.value) and expected in str(caught.value)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


# --- policy evaluation ------------------------------------------------------------------------------------------


def test_a_policy_compared_with_itself_has_zero_kl_and_ties(sft_dir):
    tokenizer = load_tokenizer(str(sft_dir))
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    prompts = ToyWorld(seed=0).prompts(6, split="validation")
    result = evaluate_policy(
        model, tokenizer, prompts, reference=model, gold=toy_gold_scorer, max_new_tokens=10, seed=3
    )
    assert all(value["mean"] == pytest.approx(0.0, abs=1e-5) for value in result.summary["kl"].values())
    assert result.summary["win_rate"]["gold_reward"] == {"greedy": 0.5, "sampled": 0.5}
    assert result.summary["policy"] == result.summary["reference"]
    assert len(result.samples) == 4 * len(prompts)


def test_traits_are_counted_for_policy_reference_and_frontier(sft_dir):
    """A trait (here: responses longer than 3 characters) is averaged like a score for every model, strategy and
    frontier point, and reaches metrics.json as <trait>_before / <trait>_after."""
    from pipeline.policy_eval import trait_metrics

    tokenizer = load_tokenizer(str(sft_dir))
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    prompts = ToyWorld(seed=0).prompts(6, split="validation")
    traits = {"long": lambda prompt, response: len(response.strip()) > 3}
    result = evaluate_policy(
        model,
        tokenizer,
        prompts,
        reference=model,
        gold=toy_gold_scorer,
        max_new_tokens=10,
        seed=3,
        sharpening_temperatures=(1.0, 0.5),
        traits=traits,
    )
    greedy = [r for r in result.samples if r["model"] == "policy" and r["strategy"] == "greedy"]
    assert result.summary["policy"]["greedy"]["long"] == pytest.approx(
        np.mean([len(r["text"].strip()) > 3 for r in greedy]), abs=1e-4
    )
    assert all(0.0 <= point["long"] <= 1.0 for point in result.summary["sharpening"])
    assert "long" not in result.summary["win_rate"]  # a trait is counted, not compared
    metrics = trait_metrics(result.summary)
    assert metrics["long_after"]["greedy"] == result.summary["policy"]["greedy"]["long"]
    assert set(metrics) == {"long_before", "long_after"}


def test_a_lora_policy_is_compared_with_its_disabled_adapters(sft_dir):
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(str(sft_dir))
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(sft_dir), LoraConfig(r=4, target_modules=["c_attn"]))
    prompts = ToyWorld(seed=0).prompts(8, split="validation")
    untouched = evaluate_policy(policy, tokenizer, prompts, max_new_tokens=8)  # fresh LoRA: B = 0, policy = base
    assert untouched.summary["kl"]["exact"]["mean"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    moved = evaluate_policy(policy, tokenizer, prompts, max_new_tokens=8)
    assert moved.summary["kl"]["exact"]["mean"] > 0.01 and moved.summary["kl"]["k3"]["mean"] > 0.0
    assert "win_rate" in moved.summary and moved.summary["win_rate"] == {}  # no scorer given: no win rates


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 0.3, 0.5, 0.2], [0.3, 0.3, 0.7, 0.1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_a_max_length_beyond_the_models_context_is_a_recipe_error(tmp_path, sft_dir):
    """The tiny model reads 128 positions: max_length 200 is refused before any data or model is loaded."""
    path = recipe(tmp_path, sft_dir, max_length=200)
    with pytest.raises(RecipeError, match=r"key 'max_length' \(200\) exceeds the context length .* \(128 tokens\)"):
        dpo.main(["--config", str(path)])
    assert not (tmp_path / "runs" / "dpo").exists()
