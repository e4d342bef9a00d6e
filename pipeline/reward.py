"""Reward modelling: a scalar head on the SFT model, trained on preference pairs with TRL's RewardTrainer.

    python -m pipeline.reward --config recipes/toy/reward.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.reward --config recipes/gpt2/reward.yaml

Outputs and metrics: docs/stages/reward.md
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel
from trl import RewardTrainer
from trl.trainer.utils import get_peft_config

from pipeline.contract import write_json
from pipeline.data.toy_comparisons import own_sample_comparisons
from pipeline.data.toy_world import ToyWorld, recipe_traits
from pipeline.errors import RecipeError, run_cli
from pipeline.finetuning import save_fine_tuned
from pipeline.models import load_tokenizer, parameter_counts
from pipeline.plots import plot_loss_curves
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.rm.config import RECIPE_TYPES, RewardArguments, RewardModelArguments, RewardTrainingConfig
from pipeline.rm.evaluation import judge_after_training, judge_untrained, targets
from pipeline.rm.model import build_model, load_policy, merge_reward_model
from pipeline.rm.pairs import encode_splits, load_pairs, resolve_max_length
from pipeline.training import GracefulInterrupt, open_trainer_run, quiet_small_data_bars, training_figures

logger = logging.getLogger("pipeline.reward")


def reward_metrics(
    args: RewardArguments,
    model_args: RewardModelArguments,
    training_args: RewardTrainingConfig,
    trainer: RewardTrainer,
    judged: dict[str, Any],
    data: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json: held-out pair accuracy (before and after), calibration, Best-of-N beside the sharpening
    frontier, the sycophancy probe in the biased-labeller world, and what the data and training were."""
    toy = args.dataset == "toy"
    heldout, before, bon = judged["heldout"], judged["before"], judged["best_of_n"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "mode": "lora" if model_args.use_peft else "full",
        "heldout_accuracy": heldout["accuracy"],
        "heldout_mean_margin": heldout["mean_margin"],
        "heldout_loss": heldout["loss"],
        "heldout_pairs": heldout["pairs"],
        "heldout_accuracy_before": before["accuracy"],
        "heldout_split": args.toy_eval_split if toy else "held out",
        "validation_accuracy": judged["validation"],
        "heldout_calibration": heldout["calibration"],
        "train_loss": training["train_loss"],
        "first_logged_loss": round(losses[0], 4) if losses else None,
        "last_logged_loss": round(losses[-1], 4) if losses else None,
        "steps": training["steps"],
        **parameter_counts(trainer.model),
        "max_length": training_args.max_length,
        "margins": args.margin_column,
        "append_eos": args.append_eos,
        "reward_pooling": args.reward_pooling,
        "center_rewards_coefficient": training_args.center_rewards_coefficient,
        "train_truncation": data["truncation"]["train"],
        "eval_truncation": data["truncation"]["eval"],
        "data": data["report"],
        "train_seconds": training["train_seconds"],
        "seconds_per_step": training["seconds_per_step"],
        "resumed_from": training["resumed_from"],
    }
    if "accuracy_by_kind" in heldout:
        metrics["heldout_accuracy_by_kind"] = heldout["accuracy_by_kind"]
    if judged.get("sycophancy_probe") is not None:
        metrics["sycophancy_probe"] = judged["sycophancy_probe"]
    if bon:
        keep = (
            "gold",
            "reward",
            "kl_nats",
            "kl_bound_nats",
            "frontier_gold_at_kl",
            "margin_over_frontier",
            "beats_sharpening",
            *recipe_traits(args),
        )
        metrics["best_of_n"] = {row["n"]: {key: row[key] for key in keep if key in row} for row in bon["table"]}
        if bon.get("sharpening"):
            metrics["sharpening"] = bon["sharpening"]
        for key in (
            "policy_mean_gold",
            "rm_gold_pearson",
            "rm_gold_spearman",
            "rm_gold_spearman_within_prompt",
            "calibration_on_samples",
        ):
            if bon.get(key) is not None:
                metrics[key] = bon[key]
    if toy:
        metrics["targets"] = targets(heldout["accuracy"], bon)
        metrics["toy_world"] = ToyWorld.from_recipe(args).describe()
    return metrics


def prepare_pairs(
    args: RewardArguments,
    model_args: RewardModelArguments,
    training_args: RewardTrainingConfig,
    tokenizer,
    model: PreTrainedModel,
) -> tuple[datasets.Dataset, datasets.Dataset, PreTrainedModel | None, dict[str, Any]]:
    """(train set, held-out set, the policy if one was loaded, what preparing did): the pairs, comparisons of
    the SFT model's own samples where the recipe asks for them, encoded and cut to max_length."""
    train_pairs, eval_pairs, data_stats = load_pairs(args, training_args.seed)
    quiet_small_data_bars(train_pairs, eval_pairs)
    policy, policy_pairs = None, {}
    if args.toy_policy_prompts:  # after the reward head is initialised, so that it does not depend on this
        policy = load_policy(model_args, tokenizer, training_args.trust_remote_code).to(training_args.device)
        extra, policy_pairs = own_sample_comparisons(
            policy, tokenizer, args, args.best_of_n_strategy, args.sample_max_new_tokens, training_args.seed + 1
        )
        if extra is not None:
            train_pairs = datasets.concatenate_datasets([train_pairs, extra]).shuffle(seed=training_args.seed)
    train_set, eval_set, truncation = encode_splits(args, train_pairs, eval_pairs, tokenizer, training_args.max_length)
    report = {**data_stats, **({"policy_comparisons": policy_pairs} if policy_pairs else {})}
    return train_set, eval_set, policy, {"report": report, "truncation": truncation, "eval_pairs": eval_pairs}


def build_trainer(
    model: PreTrainedModel,
    model_args: RewardModelArguments,
    training_args: RewardTrainingConfig,
    train_set: datasets.Dataset,
    eval_set: datasets.Dataset,
    tokenizer,
    interrupt: GracefulInterrupt,
) -> RewardTrainer:
    """TRL's RewardTrainer on the encoded pairs (LoRA from the recipe's ModelConfig), stoppable by Ctrl-C."""
    if training_args.train_sampling_strategy == "group_by_length":
        # Trainer builds the sampler after removing the columns the model does not take, `length` among them;
        # keep them (TRL's collator reads only chosen_ids, rejected_ids and margin).
        training_args.remove_unused_columns = False
    return RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[interrupt, MemoryCheck(training_args.max_length, 2)],
    )


def log_training_plan(
    trainer: RewardTrainer, model_args: RewardModelArguments, max_length: int, before: dict[str, float]
) -> None:
    counts = parameter_counts(trainer.model)
    logger.info(
        "%s reward model: %d of %d parameters trainable; %d train / %d held-out pairs; max_length %d; "
        "held-out accuracy before training %.3f",
        "LoRA" if model_args.use_peft else "full",
        counts["trainable_parameters"],
        counts["parameters"],
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
        max_length,
        before["accuracy"],
    )


def save_reward_model(
    trainer: RewardTrainer,
    args: RewardArguments,
    model_args: RewardModelArguments,
    training_args: RewardTrainingConfig,
    tokenizer,
    output_dir: Path,
) -> PreTrainedModel | None:
    """The trained reward model saved into output_dir (LoRA: the adapter, and the merged model unless
    merge_adapters is false); None on processes other than the main one."""
    merge = partial(
        merge_reward_model,
        model_args,
        tokenizer,
        output_dir=output_dir,
        trust_remote_code=training_args.trust_remote_code,
        append_eos=args.append_eos,
        pooling=args.reward_pooling,
    )
    return save_fine_tuned(trainer, model_args.use_peft, tokenizer, output_dir, merge if args.merge_adapters else None)


def log_outcome(heldout: dict[str, Any], before: dict[str, float], output_dir: Path) -> None:
    logger.info(
        "held-out accuracy %.3f (before training %.3f), mean margin %.3f, calibration ECE %s; outputs in %s",
        heldout["accuracy"],
        before["accuracy"],
        heldout["mean_margin"],
        heldout["calibration"]["ece"],
        output_dir,
    )


def main(argv: Sequence[str] | None = None) -> None:
    # Recipe
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "reward", __doc__)
    if args.extra_layers and model_args.use_peft:
        raise RecipeError(
            f"{recipe.path}: key 'extra_layers' needs full fine-tuning (use_peft: false): LoRA would leave the new "
            "blocks frozen as the identity."
        )
    opened = open_trainer_run(recipe, "reward", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Model: the input model's body under a fresh 1-output score head
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    trust, eos, pooling = training_args.trust_remote_code, args.append_eos, args.reward_pooling
    model = build_model(model_args, tokenizer, trust, eos, args.extra_layers, training_args.seed, pooling)
    training_args.max_length = resolve_max_length(training_args.max_length, model, recipe.path)

    # Data: preference pairs, encoded; the untrained head's held-out accuracy as the baseline
    train_set, eval_set, policy, data = prepare_pairs(args, model_args, training_args, tokenizer, model)
    before = judge_untrained(model, eval_set, training_args.per_device_eval_batch_size)

    # Trainer
    interrupt = GracefulInterrupt()
    trainer = build_trainer(model, model_args, training_args, train_set, eval_set, tokenizer, interrupt)
    log_training_plan(trainer, model_args, training_args.max_length, before)

    # Train and save
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    reward_model = save_reward_model(trainer, args, model_args, training_args, tokenizer, output_dir)
    if reward_model is None:  # not the main process
        return

    # Judging, curves, metrics
    judged = judge_after_training(
        args, model_args, training_args, reward_model, policy, tokenizer, eval_set, data["eval_pairs"], output_dir
    )
    plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png", f"reward model: {recipe.path}")
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    training = training_figures(trainer, train_result, train_seconds, checkpoint)
    metrics = reward_metrics(args, model_args, training_args, trainer, {**judged, "before": before}, data, training)
    run.finish(resolved_recipe("reward", args, model_args, training_args), metrics)
    log_outcome(judged["heldout"], before, output_dir)


if __name__ == "__main__":
    run_cli(main)
