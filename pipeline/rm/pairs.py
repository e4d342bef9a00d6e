"""Preference pairs for the reward model: loaded and held out by prompt, with optional margins, tokenised as
prompt + response + EOS into what RewardTrainer takes, over-long pairs fitted into max_length by cutting the
prompt from the left (counted and logged, never dropped)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel

from pipeline.data.preferences import HH_ASSISTANT, load_preferences, split_hh_transcript
from pipeline.data.text import iter_jsonl
from pipeline.data.toy_world import gold_reward
from pipeline.errors import DataError, RecipeError
from pipeline.reward_model import Truncation, context_length, encode_pairs
from pipeline.rm.config import TOY_MARGIN, RewardArguments

logger = logging.getLogger("pipeline.reward")


def load_pairs(args: RewardArguments, seed: int) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """(train pairs, held-out pairs, what loading did). Held-out pairs never share a prompt with training."""
    if args.dataset == "toy":
        train, train_stats = load_preferences("toy", "train", toy_pairs=args.toy_pairs, toy=args)
        held_out, eval_stats = load_preferences("toy", args.toy_eval_split, toy_pairs=args.toy_eval_pairs, toy=args)
    else:
        train, train_stats = load_preferences(args.datasets or args.dataset, args.dataset_split)
        if len(train) < 2:
            raise DataError(
                f"{args.dataset}: only {len(train)} distinct pair(s) to train on after removing "
                f"{train_stats.duplicates} duplicates and {train_stats.chosen_equals_rejected} pairs whose chosen "
                "equals rejected: every pair is the same. A reward model needs many different pairs."
            )
        if args.eval_dataset:
            held_out, eval_stats = load_preferences(args.eval_dataset, args.eval_split)
        else:
            train, held_out = split_by_prompt(train, args.eval_fraction, seed, args.dataset)
            eval_stats = None
    if args.max_train_pairs:
        train = train.select(range(min(args.max_train_pairs, len(train))))
    if args.max_eval_pairs:
        held_out = held_out.select(range(min(args.max_eval_pairs, len(held_out))))
    stats = {"train": train_stats.as_dict(), "eval": eval_stats.as_dict() if eval_stats else "held out from train"}
    return train, held_out, stats


def split_by_prompt(
    pairs: datasets.Dataset, fraction: float, seed: int, source: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out a share of the prompts with all their pairs, so that no held-out prompt was trained on."""
    prompts = sorted(set(pairs["prompt"]))
    if len(prompts) < 2:
        raise DataError(f"{source}: all pairs share one prompt; give an eval_dataset to evaluate on.")
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: max(1, round(fraction * len(prompts)))])
    in_eval = [prompt in held for prompt in pairs["prompt"]]
    train = pairs.select([i for i, flag in enumerate(in_eval) if not flag])
    evaluation = pairs.select([i for i, flag in enumerate(in_eval) if flag])
    return train, evaluation


def margins_for(pairs: datasets.Dataset, args: RewardArguments, source: str, split: str) -> list[float] | None:
    """The margin of each pair: from the data's `margin_column`, or the toy world's gold gap."""
    if args.margin_column is None:
        return None
    if args.margin_column == TOY_MARGIN:
        return [
            args.margin_scale * (gold_reward(p, c) - gold_reward(p, r))
            for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
        ]
    lookup = read_margins(source, split, args.margin_column)
    missing = [
        i for i, key in enumerate(zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])) if key not in lookup
    ]
    if missing:
        raise DataError(f"{source}: pair {missing[0]} has no '{args.margin_column}' value.")
    return [args.margin_scale * lookup[key] for key in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]


def read_margins(source: str, split: str, column: str) -> dict[tuple[str, str, str], float]:
    """(prompt, chosen, rejected) -> margin, read beside pipeline.data.preferences (which keeps only the
    three text fields). Records are keyed the way that module normalises them (HH transcripts split);
    a duplicate pair keeps its first margin, as deduplication keeps the first pair."""
    path = Path(source)
    if path.exists():
        records = ((f"{path}:{n}", record) for n, record in iter_jsonl(path))
    else:
        dataset = datasets.load_dataset(source, split=split)
        records = ((f"{source}[{i}]", dict(record)) for i, record in enumerate(dataset))
    lookup: dict[tuple[str, str, str], float] = {}
    for where, record in records:
        value = record.get(column)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}: margin column '{column}' must be a number, got {value!r}.")
        if "prompt" in record:
            key = (record["prompt"], record["chosen"], record["rejected"])
        elif HH_ASSISTANT in str(record.get("chosen")):
            key = split_hh_transcript(record["chosen"], record["rejected"])
        else:
            continue  # load_preferences has already reported this record's problem
        lookup.setdefault(key, float(value))
    return lookup


def tokenize_pairs(
    pairs: datasets.Dataset,
    tokenizer,
    max_length: int,
    margins: list[float] | None,
    name: str,
    append_eos: bool = True,
) -> tuple[datasets.Dataset, Truncation]:
    """The processed data set RewardTrainer accepts as is (chosen_ids, rejected_ids[, margin]).

    Tokenized here rather than by TRL because TRL drops pairs longer than max_length; here their
    prompts are cut from the left instead, counted, and logged.
    """
    chosen_ids, rejected_ids, truncation = encode_pairs(
        tokenizer, pairs["prompt"], pairs["chosen"], pairs["rejected"], max_length, append_eos
    )
    columns: dict[str, list] = {"chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
    # What `train_sampling_strategy: group_by_length` sorts by: a batch is as long as its longest sequence.
    columns["length"] = [max(len(c), len(r)) for c, r in zip(chosen_ids, rejected_ids)]
    if margins is not None:
        columns["margin"] = margins
    if truncation.truncated:
        logger.warning(
            "%s: %d of %d pairs are longer than max_length=%d tokens (longest %d): %d prompts cut from the left, "
            "%d with a response cut at its end (too long even without the prompt); none dropped",
            name,
            truncation.truncated,
            truncation.pairs,
            max_length,
            truncation.longest,
            truncation.prompt_truncated,
            truncation.response_truncated,
        )
    return datasets.Dataset.from_dict(columns), truncation


def encode_splits(
    args: RewardArguments, train_pairs: datasets.Dataset, eval_pairs: datasets.Dataset, tokenizer, max_length: int
) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """(train set, held-out set, what truncation did to each), ready for RewardTrainer."""
    eval_source, eval_split = (
        (args.eval_dataset, args.eval_split) if args.eval_dataset else (args.dataset, args.dataset_split)
    )
    train_margins = margins_for(train_pairs, args, args.dataset, args.dataset_split)
    eval_margins = margins_for(eval_pairs, args, eval_source, eval_split)
    train_set, train_truncation = tokenize_pairs(
        train_pairs, tokenizer, max_length, train_margins, "train", args.append_eos
    )
    eval_set, eval_truncation = tokenize_pairs(
        eval_pairs, tokenizer, max_length, eval_margins, "eval", args.append_eos
    )
    return train_set, eval_set, {"train": train_truncation.as_dict(), "eval": eval_truncation.as_dict()}


def resolve_max_length(requested: int | None, model: PreTrainedModel, path: Path) -> int:
    limit = context_length(model)
    if requested is None:
        if limit is None:
            raise RecipeError(f"{path}: set key 'max_length': the model's context length is unknown.")
        return limit
    if limit is not None and requested > limit:
        raise RecipeError(f"{path}: key 'max_length' ({requested}) exceeds the model's context length ({limit}).")
    return requested
