"""Supervised fine-tuning: full, LoRA or QLoRA, on demonstrations, with the loss on the responses only.

    python -m pipeline.sft --config recipes/toy/sft.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.sft --config recipes/gpt2/sft_lora.yaml

Outputs and metrics: docs/stages/sft.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel
from trl import SFTTrainer
from trl.trainer.utils import get_peft_config

from pipeline.contract import write_json
from pipeline.data.toy_world import ToyWorld
from pipeline.errors import run_cli
from pipeline.finetuning import (
    ModelArguments,
    build_policy,
    keep_adapters_in_fp32,
    merge_into_base,
    mode_name,
    save_fine_tuned,
)
from pipeline.models import load_tokenizer, parameter_counts
from pipeline.plots import plot_loss_curves
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.supervised.config import RECIPE_TYPES, SFTArguments, SFTTrainingConfig
from pipeline.supervised.data import check_special_tokens, configure_loss, count_long_sequences, load_data
from pipeline.supervised.samples import generation_prompts, sample_and_score
from pipeline.training import GracefulInterrupt, open_trainer_run, quiet_small_data_bars, training_figures

logger = logging.getLogger("pipeline.sft")

# --- model --------------------------------------------------------------------------------------------


def build_trainer(
    model: PreTrainedModel,
    tokenizer,
    train_set: datasets.Dataset,
    eval_set: datasets.Dataset | None,
    dataset_format: str,
    model_args: ModelArguments,
    training_args: SFTTrainingConfig,
    callbacks: Sequence = (),
) -> SFTTrainer:
    """TRL's SFTTrainer, which tokenizes, masks the prompts, appends EOS, truncates and wraps the model
    with LoRA (`peft_config`); plus the two things the stage adds: fp32 adapters on a CPU, and a check of
    the special tokens in the sequences it will train on."""
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
    )
    if trainer.args.device.type == "cpu":
        keep_adapters_in_fp32(trainer.model)
    check_special_tokens(trainer.train_dataset, tokenizer, dataset_format, training_args.max_length)
    return trainer


# --- the stage ----------------------------------------------------------------------------------------


def sft_metrics(
    args: SFTArguments,
    model_args: ModelArguments,
    trainer: SFTTrainer,
    dataset_format: str,
    losses: dict[str, dict[str, float]],
    lengths: dict[str, dict[str, int]],
    training: dict[str, Any],
    gold: dict[str, dict[str, float]],
    traits: dict[str, dict],
) -> dict[str, Any]:
    """metrics.json: held-out loss before/after, what the data lost to max_length, speed, and on the toy world
    the gold reward and the world's traits before and after."""
    before, after = losses["before"]["eval_before_loss"], losses["after"]["eval_loss"]
    metrics = {
        "mode": mode_name(model_args),
        "dataset_format": dataset_format,
        "train_loss": training["train_loss"],
        "eval_loss_before": round(before, 4),
        "eval_loss": round(after, 4),
        "perplexity_before": round(math.exp(before), 4),
        "perplexity": round(math.exp(after), 4),
        "steps": training["steps"],
        **parameter_counts(trainer.model),
        "train_examples": len(trainer.train_dataset),
        "eval_examples": len(trainer.eval_dataset),
        "truncated_train_examples": lengths["train"]["truncated"],
        "dropped_train_examples": lengths["train"]["dropped"],
        "truncated_eval_examples": lengths["eval"]["truncated"],
        "longest_train_sequence": lengths["train"]["longest"],
        "train_seconds": training["train_seconds"],
        "seconds_per_step": training["seconds_per_step"],
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / training["train_seconds"], 1)
        if training["train_seconds"] > 0
        else None,
        "merged": bool(model_args.use_peft and args.merge_adapters),
        "resumed_from": training["resumed_from"],
    }
    if gold["after"]:
        metrics["gold_reward_before"], metrics["gold_reward_after"] = gold["before"], gold["after"]
        metrics["gold_reward_greedy"] = gold["after"].get("greedy")
        metrics["gold_reward_sampled"] = gold["after"].get("temperature_1.0")
        metrics["toy_world"] = ToyWorld.from_recipe(args).describe()
    if traits["after"]:
        metrics["traits_before"], metrics["traits_after"] = traits["before"], traits["after"]
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "sft", __doc__)
    opened = open_trainer_run(recipe, "sft", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Data, and what max_length does to it
    train_set, eval_set, dataset_format = load_data(args, training_args.seed)
    quiet_small_data_bars(train_set, eval_set)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    configure_loss(dataset_format, tokenizer, training_args)
    lengths = {
        name: count_long_sequences(split, tokenizer, training_args.max_length, name)
        for name, split in (("train", train_set), ("eval", eval_set))
    }

    # Model, and its samples before training
    model = build_policy(model_args, tokenizer, training_args)
    prompts = generation_prompts(args, eval_set, tokenizer)
    before = ([], {}, {})
    if training_args.should_save:
        before = sample_and_score(model, tokenizer, prompts, args, training_args.seed, "before")

    # Training
    interrupt = GracefulInterrupt()
    callbacks = [interrupt, MemoryCheck(training_args.max_length)]
    trainer = build_trainer(
        model, tokenizer, train_set, eval_set, dataset_format, model_args, training_args, callbacks
    )
    log_training_plan(trainer, model_args, dataset_format)
    losses = {"before": trainer.evaluate(metric_key_prefix="eval_before")}
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    losses["after"] = trainer.evaluate()
    merge = merge_into_base(model_args, tokenizer, output_dir, training_args.trust_remote_code)
    final_model = save_fine_tuned(
        trainer, model_args.use_peft, tokenizer, output_dir, merge if args.merge_adapters else None
    )
    if final_model is None:  # not the main process
        return

    # Samples after training, curves, metrics
    after = sample_and_score(final_model, tokenizer, prompts, args, training_args.seed, "after")
    write_json(output_dir / "samples.json", before[0] + after[0])
    plot_loss_curves(
        trainer.state.log_history, output_dir / "loss_curve.png", f"SFT ({mode_name(model_args)}): {recipe.path}"
    )
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    training = training_figures(trainer, train_result, train_seconds, checkpoint)
    gold, traits = {"before": before[1], "after": after[1]}, {"before": before[2], "after": after[2]}
    metrics = sft_metrics(args, model_args, trainer, dataset_format, losses, lengths, training, gold, traits)
    run.finish(resolved_recipe("sft", args, model_args, training_args), metrics)
    log_results(metrics, gold, output_dir)


def log_training_plan(trainer: SFTTrainer, model_args: ModelArguments, dataset_format: str) -> None:
    counts = parameter_counts(trainer.model)
    logger.info(
        "%s fine-tuning: %d of %d parameters trainable (%.2f%%); %d train / %d eval examples (%s)",
        mode_name(model_args),
        counts["trainable_parameters"],
        counts["parameters"],
        100 * counts["trainable_share"],
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
        dataset_format,
    )


def log_results(metrics: dict[str, Any], gold: dict[str, dict[str, float]], output_dir: Path) -> None:
    logger.info(
        "eval loss %.4f -> %.4f (perplexity %.3f); gold reward greedy %s -> %s, sampled %s -> %s; outputs in %s",
        metrics["eval_loss_before"],
        metrics["eval_loss"],
        metrics["perplexity"],
        gold["before"].get("greedy"),
        gold["after"].get("greedy"),
        gold["before"].get("temperature_1.0"),
        gold["after"].get("temperature_1.0"),
        output_dir,
    )


if __name__ == "__main__":
    run_cli(main)
