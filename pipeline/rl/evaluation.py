"""Measure an online-RL policy (PPO, GRPO, RLOO) on held-out prompts, as the targets are stated: through the one
evaluation layer (pipeline.policy_eval), at the rollout temperature, against the SFT model on the same prompts
with the same seed, beside the SFT model's sharpening frontier. The metrics PPO and TRL's trainers share.
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedModel

from pipeline.data.toy_world import ToyWorld, recipe_traits
from pipeline.policy_eval import PolicyEvaluation, evaluate_policy, judged_metrics, toy_skill


def measure_policy(
    accelerator: Accelerator,
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    tokenizer,
    prompts: list[str],
    args: Any,
    config: Any,
    scorer,
    gold,
) -> PolicyEvaluation:
    """The policy against the reference (None: a PEFT policy with its adapters off). `scorer` is the reward model's
    (None with reward: gold, which `gold` already measures); `args`/`config` are the stage's recipe dataclasses."""
    with accelerator.autocast():
        return evaluate_policy(
            policy,
            tokenizer,
            prompts,
            reference=reference,
            gold=gold,
            scorer=scorer,
            temperature=config.temperature,
            max_new_tokens=config.response_length,
            seed=config.seed,
            batch_size=args.eval_batch_size,
            group_of=toy_skill if args.dataset == "toy" else None,
            sharpening_temperatures=args.sharpening_temperatures,
            accelerator=accelerator,
            traits=recipe_traits(args),
        )


def policy_metrics(summary: dict[str, Any], args: Any) -> dict[str, Any]:
    """metrics.json's before (the SFT model) / after (the policy) numbers from an evaluation summary; `args`: the
    stage's arguments (their toy-world keys say which world and split were measured)."""
    toy = args.dataset == "toy"
    before, after = summary["reference"], summary["policy"]
    metrics: dict[str, Any] = {}
    for name, key in (("gold_reward", "gold_reward"), ("rm_reward", "reward_model")):
        if key in after["sampled"]:
            metrics[f"{name}_before"], metrics[f"{name}_after"] = before["sampled"][key], after["sampled"][key]
            metrics[f"{name}_gain"] = round(after["sampled"][key] - before["sampled"][key], 4)
    if "gold_reward" in after["greedy"]:
        metrics["gold_reward_greedy_before"], metrics["gold_reward_greedy_after"] = (
            before["greedy"]["gold_reward"],
            after["greedy"]["gold_reward"],
        )
    metrics.update(
        {
            "kl_to_reference": {
                name: value["mean"] for name, value in summary["kl"].items()
            },  # mean per-sequence KL, nats
            "response_length_before": before["sampled"]["response_tokens"],
            "response_length_after": after["sampled"]["response_tokens"],
            "finished_fraction_before": before["sampled"]["finished"],
            "finished_fraction_after": after["sampled"]["finished"],
            "eval_prompts": summary["prompts"],
            "eval_split": args.toy_eval_split if toy else None,
            **({"toy_world": ToyWorld.from_recipe(args).describe()} if toy else {}),
            "eval_temperature": summary["temperature"],
        }
    )
    metrics.update(judged_metrics(summary))
    metrics["policy_eval"] = summary
    return metrics
