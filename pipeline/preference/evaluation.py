"""What DPO learnt: the implicit reward and log-probabilities on held-out pairs before and after training, the
policy against the SFT model on held-out prompts (pipeline.policy_eval), metrics.json and the log lines."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import DPOTrainer

from pipeline.data.toy_world import ToyWorld, recipe_traits
from pipeline.finetuning import mode_name
from pipeline.models import parameter_counts
from pipeline.policy_eval import (
    PolicyEvaluation,
    evaluate_policy,
    judged_metrics,
    reward_model_scorer,
    toy_gold_scorer,
    toy_skill,
)
from pipeline.preference.config import DPOArguments, DPOModelArguments, DPOTrainingConfig
from pipeline.preference.models import policy_and_reference

logger = logging.getLogger("pipeline.dpo")


def evaluation_prompts(args: DPOArguments, held_out: datasets.Dataset) -> list[str]:
    """Held-out toy prompts (gold reward), else the distinct prompts of the held-out pairs."""
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.num_eval_prompts, split=args.toy_eval_split)
    return list(dict.fromkeys(held_out["prompt"]))[: args.num_eval_prompts]


def held_out_numbers(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """TRL's held-out DPO metrics under short names (means over eval batches: exact when one batch holds them all)."""
    names = {
        "implicit_reward_accuracy": "rewards/accuracies",
        "implicit_reward_margin": "rewards/margins",
        "implicit_reward_chosen": "rewards/chosen",
        "implicit_reward_rejected": "rewards/rejected",
        "logp_chosen": "logps/chosen",
        "logp_rejected": "logps/rejected",
        "loss": "loss",
    }
    numbers = {
        short: round(metrics[f"{prefix}_{key}"], 4) for short, key in names.items() if f"{prefix}_{key}" in metrics
    }
    # TRL counts a tie as wrong. Before training the policy is its reference: every implicit reward is exactly 0 and
    # every pair a tie, which is no preference, counted half right as the reward stage counts ties (not 0).
    if metrics.get(f"{prefix}_rewards/chosen") == 0.0 and metrics.get(f"{prefix}_rewards/rejected") == 0.0:
        numbers["implicit_reward_accuracy"] = 0.5
    return numbers


def final_evaluation(trainer: DPOTrainer) -> dict[str, float]:
    """The held-out metrics of the trained policy: from the log when training ended with an evaluation."""
    last = trainer.state.log_history[-2] if len(trainer.state.log_history) > 1 else {}
    if last.get("step") == trainer.state.global_step and "eval_rewards/accuracies" in last:
        return last
    return trainer.evaluate()


def compare_with_sft(
    args: DPOArguments,
    model_args: DPOModelArguments,
    trainer: DPOTrainer,
    merged: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    held_out_pairs: datasets.Dataset,
) -> PolicyEvaluation:
    """The trained policy and the SFT model sampled on held-out prompts (pipeline.policy_eval): gold (toy world),
    reward-model scores (with reward_model_path), KL, win rates and the sharpening frontier."""
    policy, sft_model = policy_and_reference(trainer, model_args, merged, tokenizer)
    toy = args.dataset == "toy"
    return evaluate_policy(
        policy,
        tokenizer,
        evaluation_prompts(args, held_out_pairs),
        reference=sft_model,
        gold=toy_gold_scorer if toy else None,
        scorer=reward_model_scorer(args.reward_model_path, device=policy.device) if args.reward_model_path else None,
        temperature=args.eval_temperature,
        max_new_tokens=args.sample_max_new_tokens,
        seed=trainer.args.seed,
        batch_size=args.generation_batch_size,
        group_of=toy_skill if toy else None,
        sharpening_temperatures=args.sharpening_temperatures,
        traits=recipe_traits(args),
    )


def dpo_metrics(
    args: DPOArguments,
    model_args: DPOModelArguments,
    training_args: DPOTrainingConfig,
    trainer: DPOTrainer,
    held_out: dict[str, dict[str, float]],
    summary: dict[str, Any],
    data: dict[str, Any],
    training: dict[str, Any],
    merged: bool,
) -> dict[str, Any]:
    """metrics.json: the held-out pairs before/after (implicit reward, log-probabilities), the policy against
    the SFT model on held-out prompts (gold, KL, win rates, the verdict against sharpening), data and speed."""
    before, after = held_out["before"], held_out["after"]
    metrics: dict[str, Any] = {
        "mode": mode_name(model_args),
        "loss_type": list(training_args.loss_type),
        "loss_weights": training_args.loss_weights,
        "beta": training_args.beta,
        "reference": "policy with adapters disabled"
        if trainer.ref_model is None and model_args.use_peft
        else "frozen copy of the SFT model",
        "train_loss": training["train_loss"],
        "steps": training["steps"],
        # Held-out pairs, after training (the implicit reward is 0 before: the policy is the reference).
        **after,
        "held_out_before": before,
        "held_out_after": after,
        "chosen_logp_fell": bool(after.get("logp_chosen", 0.0) < before.get("logp_chosen", 0.0)),
        # Generation on held-out prompts: the SFT model ("before") against the DPO policy ("after").
        "gold_reward_before": {s: summary["reference"][s].get("gold_reward") for s in ("greedy", "sampled")},
        "gold_reward_after": {s: summary["policy"][s].get("gold_reward") for s in ("greedy", "sampled")},
        "kl_to_sft": {name: summary["kl"][name]["mean"] for name in summary["kl"]},
        "win_rate_vs_sft": summary["win_rate"],
        "policy_eval": summary,
        **parameter_counts(trainer.model),
        "data": data["report"],
        "train_pairs": len(trainer.train_dataset),
        "eval_pairs": len(trainer.eval_dataset),
        "shortened_prompts": data["shortened"],
        "truncated_train_pairs": data["lengths"]["train"]["truncated"],
        "dropped_train_pairs": data["lengths"]["train"]["dropped"],
        "truncated_eval_pairs": data["lengths"]["eval"]["truncated"],
        "longest_train_pair": data["lengths"]["train"]["longest"],
        "train_seconds": training["train_seconds"],
        "seconds_per_step": training["seconds_per_step"],
        "merged": merged,
        "resumed_from": training["resumed_from"],
    }
    if args.dataset == "toy":
        metrics["gold_reward_sampled"] = metrics["gold_reward_after"]["sampled"]
        metrics["gold_reward_greedy"] = metrics["gold_reward_after"]["greedy"]
        metrics["gold_reward_gain"] = {
            s: round(metrics["gold_reward_after"][s] - metrics["gold_reward_before"][s], 4)
            for s in ("greedy", "sampled")
        }
        metrics["gold_reward_by_skill"] = {
            when: {s: summary[model][s]["gold_reward_by_group"] for s in ("greedy", "sampled")}
            for when, model in (("before", "reference"), ("after", "policy"))
        }
        metrics["eval_split"] = args.toy_eval_split
    metrics.update(judged_metrics(summary))
    if args.dataset == "toy":
        metrics["toy_world"] = ToyWorld.from_recipe(args).describe()
    return metrics


def log_results(metrics: dict[str, Any], held_out: dict[str, dict[str, float]], toy: bool, output_dir: Path) -> None:
    """The headline numbers in the log: held-out implicit reward, KL to SFT, win rates, gold reward."""
    before, after = held_out["before"], held_out["after"]
    logger.info(
        "held-out implicit reward accuracy %s, margin %s; chosen log-prob %s -> %s; KL to SFT (k3) %s nats; "
        "win rates %s; outputs in %s",
        after.get("implicit_reward_accuracy"),
        after.get("implicit_reward_margin"),
        before.get("logp_chosen"),
        after.get("logp_chosen"),
        metrics["kl_to_sft"]["k3"],
        metrics["win_rate_vs_sft"],
        output_dir,
    )
    if toy:
        logger.info(
            "gold reward sampled %s -> %s, greedy %s -> %s; %s",
            metrics["gold_reward_before"]["sampled"],
            metrics["gold_reward_after"]["sampled"],
            metrics["gold_reward_before"]["greedy"],
            metrics["gold_reward_after"]["greedy"],
            (metrics.get("judgement") or {}).get("reason", "no sharpening frontier measured"),
        )
