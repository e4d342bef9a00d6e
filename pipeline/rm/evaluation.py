"""The trained reward model judged on pairs it never saw: held-out accuracy, margins and calibration (by kind of
pair on the toy world), validation accuracy to choose a recipe by, the biased-labeller sycophancy probe, Best-of-N
with the SFT model as the policy, and the toy world's targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedModel

from pipeline.data.preferences import load_preferences
from pipeline.data.toy_world import ToyWorld, agrees_with_user, gold_reward
from pipeline.reward_model import pairwise_calibration, pairwise_metrics, score_token_ids
from pipeline.rm.best_of_n import run_best_of_n
from pipeline.rm.config import RewardArguments, RewardModelArguments, RewardTrainingConfig
from pipeline.rm.model import load_policy
from pipeline.rm.pairs import tokenize_pairs
from pipeline.rm.plots import plot_calibration, plot_reward_histogram

TARGET_ACCURACY = 0.85  # the toy world's targets, reported in metrics.json
TARGET_BEST_OF = 16


def judge_untrained(model: PreTrainedModel, eval_set: datasets.Dataset, batch_size: int) -> dict[str, float]:
    """Held-out accuracy and margins of the freshly initialised head: what training starts from."""
    scores = [score_token_ids(model, list(eval_set[key]), batch_size) for key in ("chosen_ids", "rejected_ids")]
    return pairwise_metrics(*scores)


def judge(model, eval_set: datasets.Dataset, pairs: datasets.Dataset, batch_size: int, toy: bool) -> dict[str, Any]:
    """Held-out accuracy, margins and calibration; the scores themselves for the histogram."""
    chosen = score_token_ids(model, list(eval_set["chosen_ids"]), batch_size)
    rejected = score_token_ids(model, list(eval_set["rejected_ids"]), batch_size)
    result = {**pairwise_metrics(chosen, rejected), "chosen_scores": chosen, "rejected_scores": rejected}
    # The data's label (for the toy world: the gold preference) says the chosen response is better.
    margins = np.subtract(chosen, rejected)
    result["calibration"] = pairwise_calibration(margins, [True] * len(margins))
    if toy:
        result["accuracy_by_kind"] = accuracy_by_kind(pairs, margins)
    return result


def validation_accuracy(model, args: RewardArguments, tokenizer, max_length: int, batch_size: int) -> float:
    """Accuracy on the toy world's validation pairs (as many as the test pairs): the number to choose a recipe by."""
    pairs, _ = load_preferences("toy", "validation", toy_pairs=args.toy_eval_pairs, toy=args)
    return pairwise_metrics(
        *score_pairs(model, pairs, tokenizer, max_length, batch_size, args.append_eos, "validation")
    )["accuracy"]


def score_pairs(
    model, pairs: datasets.Dataset, tokenizer, max_length: int, batch_size: int, append_eos: bool, name: str
) -> tuple[list[float], ...]:
    """(chosen scores, rejected scores) of a set of pairs, encoded as the stage encodes its training pairs."""
    encoded, _ = tokenize_pairs(pairs, tokenizer, max_length, None, name, append_eos)
    return tuple(score_token_ids(model, list(encoded[key]), batch_size) for key in ("chosen_ids", "rejected_ids"))


def accuracy_by_kind(pairs: datasets.Dataset, margins: np.ndarray) -> dict[str, dict[str, float]]:
    """Toy world: accuracy per kind of pair (the table in ToyWorld.preference_pairs), e.g. "right > wrong"
    (correctness), "right > right rambling" (brevity), "right rambling > wrong" (correctness beats brevity)."""

    def describe(prompt: str, response: str) -> str:
        right = gold_reward(prompt, response) >= 0.7  # gold = 0.7·correct + 0.3·clean
        kind = "right" if right else "the user's wrong guess" if agrees_with_user(prompt, response) else "wrong"
        return kind + (" rambling" if len(response.split()) > 1 else "")

    kinds: dict[str, list[bool]] = {}
    for prompt, chosen, rejected, margin in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], margins):
        kinds.setdefault(f"{describe(prompt, chosen)} > {describe(prompt, rejected)}", []).append(bool(margin > 0))
    return {kind: {"pairs": len(v), "accuracy": round(float(np.mean(v)), 4)} for kind, v in sorted(kinds.items())}


def sycophancy_probe(model, args: RewardArguments, tokenizer, max_length: int, batch_size: int) -> dict[str, Any]:
    """Scenario biased_labeller: on held-out prompts with a wrong guess, how often the reward model scores the user's
    guess above the right answer (ToyWorld.sycophancy_pairs)."""
    pairs = datasets.Dataset.from_list(
        ToyWorld.from_recipe(args).sycophancy_pairs(args.toy_eval_pairs, split=args.toy_eval_split)
    )
    margins = np.subtract(
        *score_pairs(model, pairs, tokenizer, max_length, batch_size, args.append_eos, "sycophancy probe")
    )
    return {
        "pairs": len(margins),
        "guess_preferred": round(float(np.mean(margins < 0)), 4),
        "mean_margin": round(float(np.mean(margins)), 4),
    }


def targets(heldout_accuracy: float, best_of_n: dict | None) -> dict[str, Any]:
    """The toy world's targets: held-out accuracy >= 0.85, Best-of-16 gold above the SFT mean."""
    out: dict[str, Any] = {
        "heldout_accuracy": {
            "value": heldout_accuracy,
            "target": f">= {TARGET_ACCURACY}",
            "met": heldout_accuracy >= TARGET_ACCURACY,
        }
    }
    rows = {row["n"]: row for row in (best_of_n or {}).get("table", [])}
    if TARGET_BEST_OF in rows and best_of_n.get("policy_mean_gold") is not None:
        value, baseline = rows[TARGET_BEST_OF]["gold"], best_of_n["policy_mean_gold"]
        out[f"best_of_{TARGET_BEST_OF}_gold"] = {
            "value": value,
            "target": f"> SFT mean gold {baseline}",
            "met": value > baseline,
        }
    return out


def judge_after_training(
    args: RewardArguments,
    model_args: RewardModelArguments,
    training_args: RewardTrainingConfig,
    reward_model: PreTrainedModel,
    policy: PreTrainedModel | None,
    tokenizer,
    eval_set: datasets.Dataset,
    eval_pairs: datasets.Dataset,
    output_dir: Path,
) -> dict[str, Any]:
    """The trained reward model judged: held-out pairs (and validation, when test is the held-out split), the
    biased-labeller probe, and Best-of-N with the SFT model as the policy; with the histogram and calibration."""
    toy, batch = args.dataset == "toy", training_args.per_device_eval_batch_size
    max_length = training_args.max_length
    heldout = judge(reward_model, eval_set, eval_pairs, batch, toy)
    judged: dict[str, Any] = {"heldout": heldout, "best_of_n": None}
    judged["validation"] = (
        validation_accuracy(reward_model, args, tokenizer, max_length, batch)
        if toy and args.toy_eval_split == "test"
        else None
    )
    plot_reward_histogram(
        heldout.pop("chosen_scores"),
        heldout.pop("rejected_scores"),
        output_dir / "reward_histogram.png",
        f"held-out rewards ({len(eval_set)} pairs, accuracy {heldout['accuracy']:.3f})",
    )
    if toy and args.toy_scenario == "biased_labeller":
        judged["sycophancy_probe"] = sycophancy_probe(reward_model, args, tokenizer, max_length, batch)
    if args.best_of_n_prompts:
        policy = (policy or load_policy(model_args, tokenizer, training_args.trust_remote_code)).to(
            reward_model.device
        )
        judged["best_of_n"] = run_best_of_n(
            args, model_args, policy, reward_model, tokenizer, eval_pairs, output_dir, training_args.seed
        )
    curves = {"held-out pairs": heldout["calibration"]}
    if judged["best_of_n"] and judged["best_of_n"].get("calibration_on_samples"):
        curves["policy samples vs gold"] = judged["best_of_n"]["calibration_on_samples"]
    plot_calibration(curves, output_dir / "calibration.png")
    return judged
