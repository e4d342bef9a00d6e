"""Comparisons of a policy's own samples, labelled by the toy world's simulated labellers (ToyWorld.labeller).

This is how RLHF collects its comparisons (InstructGPT's labellers rank samples of the SFT model;
Anthropic's HH pairs are two samples of their assistant): the reward model, or DPO, then learns from the
differences among the responses the policy really writes, not only from the hand-made pairs, whose
mistakes are of a few fixed kinds. Per prompt the finished sample the labeller ranks first is chosen and the
one ranked last rejected (by the gold reward, except where the world's scenario makes the labellers biased or
noisy); prompts whose samples the labeller cannot tell apart give no pair.
Samples cut by the length limit are left out, because the stages end every response with EOS.

Used by the reward stage and the DPO stage (`toy_policy_prompts`, `toy_policy_samples`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from transformers import PreTrainedModel

from pipeline.data.preferences import clean_pairs
from pipeline.data.toy_world import Labeller, ToyWorld
from pipeline.decoding import generate

logger = logging.getLogger(__name__)


def check_policy_comparison_keys(prompts: int, samples_per_prompt: int, dataset: str) -> None:
    """The recipe check of the keys toy_policy_prompts / toy_policy_samples, shared by the stages that have them."""
    if samples_per_prompt < 2:
        raise ValueError(f"key 'toy_policy_samples' must be >= 2 (a pair needs two samples), got {samples_per_prompt}")
    if prompts and dataset != "toy":
        raise ValueError("key 'toy_policy_prompts' needs the toy world's gold reward to label samples (dataset: toy)")


def policy_comparisons(
    policy: PreTrainedModel,
    tokenizer,
    prompts: Sequence[str],
    samples_per_prompt: int,
    strategy: str | Mapping[str, Any],
    max_new_tokens: int,
    seed: int,
    labeller: Labeller | None = None,
) -> tuple[datasets.Dataset | None, dict[str, int]]:
    """(pairs prompt/chosen/rejected or None, counts) from `samples_per_prompt` samples of each prompt, compared by
    `labeller` (by default the plain toy world's, who judge by the gold reward)."""
    labeller = labeller or ToyWorld().labeller("policy samples")
    k = samples_per_prompt
    samples = generate(
        policy,
        tokenizer,
        [prompt for prompt in prompts for _ in range(k)],
        strategy=strategy,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=256,
    )
    records = []
    for index, prompt in enumerate(prompts):
        texts = [sample.text for sample in samples[index * k : (index + 1) * k] if sample.finished]
        pair = labeller.compare(prompt, texts)
        if pair is not None:
            records.append((f"policy sample {index}", (prompt, *pair)))
    counts = {"prompts": len(prompts), "samples": len(samples), "unfinished": sum(not s.finished for s in samples)}
    if not records:
        logger.warning(
            "the labeller never tells the policy's samples apart on %d prompts: no comparisons made", len(prompts)
        )
        return None, {**counts, "pairs": 0}
    pairs, stats = clean_pairs(records, "policy comparisons", "toy-policy")
    logger.info("%d comparisons of the policy's own samples (%d prompts x %d samples)", len(pairs), len(prompts), k)
    return pairs, {**counts, "pairs": len(pairs), "duplicates_removed": stats.duplicates}


def own_sample_comparisons(
    policy: PreTrainedModel, tokenizer, recipe: Any, strategy: str | Mapping[str, Any], max_new_tokens: int, seed: int
) -> tuple[datasets.Dataset | None, dict[str, int]]:
    """policy_comparisons on the recipe's comparison_prompts, with `toy_policy_samples` samples each, by the labellers
    of the recipe's world."""
    labeller = ToyWorld.from_recipe(recipe).labeller("policy samples")
    return policy_comparisons(
        policy,
        tokenizer,
        comparison_prompts(recipe),
        recipe.toy_policy_samples,
        strategy,
        max_new_tokens,
        seed,
        labeller,
    )


def comparison_prompts(recipe: Any) -> list[str]:
    """The recipe's `toy_policy_prompts` train-split prompts of its toy world (`recipe`: a stage's arguments)."""
    return ToyWorld.from_recipe(recipe).prompts(recipe.toy_policy_prompts, split="train")
