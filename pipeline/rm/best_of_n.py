"""Best-of-N with the input model (the SFT model) as the policy and the trained reward model as the judge,
beside the policy's sharpening frontier on the same prompts (the toy world)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel

from pipeline.best_of_n import best_of_n, judge_against_frontier, plot_best_of_n
from pipeline.contract import write_json
from pipeline.data.toy_world import ToyWorld, recipe_traits
from pipeline.policy_eval import sharpening_frontier, toy_gold_scorer
from pipeline.reward_model import score
from pipeline.rm.config import RewardArguments, RewardModelArguments

FRONTIER_SAMPLES_PER_PROMPT = 8


def best_of_n_prompts(args: RewardArguments, eval_pairs: datasets.Dataset) -> list[str]:
    """The prompts to sample on: the toy world's held-out split, or the held-out pairs' distinct prompts."""
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.best_of_n_prompts, split=args.toy_eval_split)
    return list(dict.fromkeys(eval_pairs["prompt"]))[: args.best_of_n_prompts]


def run_best_of_n(
    args: RewardArguments,
    model_args: RewardModelArguments,
    policy: PreTrainedModel,
    reward_model: PreTrainedModel,
    tokenizer,
    eval_pairs: datasets.Dataset,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Best-of-N with the input model (the SFT model) as the policy, beside its sharpening frontier on the same
    prompts (the toy world); writes best_of_n.json/png."""
    prompts = best_of_n_prompts(args, eval_pairs)
    traits = recipe_traits(args)  # e.g. the demonstrators' habit, counted among the picks and along the frontier
    result = best_of_n(
        policy,
        tokenizer,
        reward_model,
        tokenizer,
        prompts,
        n_max=args.best_of_n_max,
        strategy=args.best_of_n_strategy,
        max_new_tokens=args.sample_max_new_tokens,
        seed=seed,
        toy=args.dataset == "toy",
        traits=traits,
    )
    result["policy"], result["reward_model"] = model_args.model_name_or_path, str(output_dir)
    if args.dataset == "toy" and args.sharpening_temperatures:
        # Several samples per prompt, so that the frontier's means are as precise as the Best-of-N curve's.
        repeated = [prompt for prompt in prompts for _ in range(FRONTIER_SAMPLES_PER_PROMPT)]
        scorer = lambda p, r, f: score(reward_model, tokenizer, list(p), list(r), finished=list(f))  # noqa: E731
        result["sharpening"] = sharpening_frontier(
            policy,
            tokenizer,
            repeated,
            args.sharpening_temperatures,
            gold=toy_gold_scorer,
            scorer=scorer,
            max_new_tokens=args.sample_max_new_tokens,
            seed=seed,
            batch_size=256,
            traits=traits,
        )
        judge_against_frontier(result["table"], result["sharpening"])
    write_json(output_dir / "best_of_n.json", result)
    plot_best_of_n(result, output_dir / "best_of_n.png")
    return result
