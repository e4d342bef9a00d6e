"""Preference pairs for DPO: loaded and held out, with comparisons of the SFT model's own samples where the
recipe asks for them, over-long prompts shortened to their end, and what TRL's truncation to max_length will cut
counted and logged."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from pipeline.data.preferences import load_preferences
from pipeline.data.toy_comparisons import own_sample_comparisons
from pipeline.errors import DataError
from pipeline.models import load_model
from pipeline.preference.config import DPOArguments, DPOModelArguments, DPOTrainingConfig
from pipeline.training import quiet_small_data_bars

logger = logging.getLogger("pipeline.dpo")


def add_own_sample_comparisons(
    train: datasets.Dataset | None,
    args: DPOArguments,
    model_args: DPOModelArguments,
    tokenizer: PreTrainedTokenizerBase,
    training_args: DPOTrainingConfig,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """`train` plus comparisons of the SFT model's own samples (pipeline.data.toy_comparisons): on-policy pairs,
    so that DPO pushes down the mistakes this model makes rather than only the hand-made ones."""
    sft_model = load_model(dataclasses.replace(model_args, use_peft=False, load_in_4bit=False), tokenizer).to(
        training_args.device
    )
    sampling = {"do_sample": True, "temperature": args.eval_temperature, "top_k": 0, "top_p": 1.0}
    extra, counts = own_sample_comparisons(
        sft_model, tokenizer, args, sampling, args.sample_max_new_tokens, training_args.seed + 1
    )
    del sft_model
    if extra is None:
        if train is None:
            raise DataError(
                "the SFT model's samples never differ in gold reward: no comparisons to train on (toy_pairs: 0)"
            )
        return train, counts
    combined = extra if train is None else datasets.concatenate_datasets([train, extra.cast(train.features)])
    return combined.shuffle(seed=training_args.seed), counts


def load_pairs(args: DPOArguments, seed: int) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """(train, held-out, what loading did). The toy world has its own eval split (unseen additions)."""
    if args.dataset == "toy":
        train, stats = (
            load_preferences("toy", "train", toy_pairs=args.toy_pairs, toy=args) if args.toy_pairs else (None, None)
        )
        held_out, held_out_stats = load_preferences(
            "toy", args.toy_eval_split, toy_pairs=args.toy_eval_pairs, toy=args
        )
    elif args.eval_dataset:
        train, stats = load_preferences(
            args.datasets or args.dataset, args.dataset_split, max_pairs=args.max_train_pairs
        )
        held_out, held_out_stats = load_preferences(args.eval_dataset, args.eval_split, max_pairs=args.max_eval_pairs)
    else:
        pairs, stats = load_preferences(args.datasets or args.dataset, args.dataset_split)
        if len(pairs) < 2:
            raise DataError(f"{args.dataset}: need at least 2 pairs to hold one out for evaluation, got {len(pairs)}.")
        split = pairs.train_test_split(test_size=args.eval_fraction, seed=seed, shuffle=True)
        train, held_out, held_out_stats = split["train"], split["test"], None
    if args.max_train_pairs and train is not None:
        train = train.select(range(min(args.max_train_pairs, len(train))))
    if args.max_eval_pairs:
        held_out = held_out.select(range(min(args.max_eval_pairs, len(held_out))))
    report = {
        "train": stats.as_dict() if stats else {},
        **({"eval": held_out_stats.as_dict()} if held_out_stats else {}),
    }
    return train, held_out, report


def shorten_prompts(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int | None, name: str
) -> tuple[datasets.Dataset, int]:
    """Keep the last `max_prompt_length` tokens of longer prompts (in a dialogue, the latest turns matter most).

    TRL 1.16 has no max_prompt_length: it truncates prompt + response to max_length from the end, which cuts
    responses and drops pairs whose prompt alone fills max_length. Shortening prompts first keeps the responses.
    """
    if max_prompt_length is None:
        return dataset, 0
    lengths = [len(ids) for ids in tokenizer(list(dataset["prompt"]), add_special_tokens=False)["input_ids"]]
    shortened = sum(length > max_prompt_length for length in lengths)
    if not shortened:
        return dataset, 0

    def shorten(example):
        ids = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            example["prompt"] = tokenizer.decode(ids[-max_prompt_length:])
        return example

    logger.warning(
        "%s: %d of %d prompts are longer than max_prompt_length=%d tokens and keep only their end",
        name,
        shortened,
        len(dataset),
        max_prompt_length,
    )
    return dataset.map(shorten, desc="shortening prompts"), shortened


def count_long_pairs(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None, name: str
) -> dict[str, int]:
    """Count what TRL's truncation will do, and say it: prompt + response (+ EOS) longer than max_length is cut
    to it (the response loses its end), and a pair whose prompt alone fills max_length is left out of training.

    The tokenization mirrors TRL 1.16's for plain-text pairs (prompt and prompt + response + EOS).
    """
    prompts = list(dataset["prompt"])
    prompt_lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    longest = 0
    too_long = [False] * len(dataset)
    for key in ("chosen", "rejected"):
        texts = [p + r + tokenizer.eos_token for p, r in zip(prompts, dataset[key])]
        for index, ids in enumerate(tokenizer(texts)["input_ids"]):
            longest = max(longest, len(ids))
            too_long[index] |= max_length is not None and len(ids) > max_length
    counts = {"pairs": len(dataset), "truncated": sum(too_long), "dropped": 0, "longest": longest}
    if max_length is not None:
        counts["dropped"] = sum(length >= max_length for length in prompt_lengths)
    if counts["truncated"]:
        logger.warning(
            "%s: %d of %d pairs are longer than max_length=%d tokens (longest %d): their responses are cut to fit",
            name,
            counts["truncated"],
            len(dataset),
            max_length,
            longest,
        )
    if counts["dropped"]:
        logger.warning(
            "%s: %d of %d pairs have a prompt of max_length=%d tokens or more and are left out "
            "(set max_prompt_length)",
            name,
            counts["dropped"],
            len(dataset),
            max_length,
        )
    if counts["dropped"] == len(dataset):
        raise DataError(
            f"{name}: every pair's prompt is at least max_length={max_length} tokens: raise max_length or set "
            "max_prompt_length."
        )
    return counts


def prepare_pairs(
    args: DPOArguments,
    model_args: DPOModelArguments,
    training_args: DPOTrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[datasets.Dataset, datasets.Dataset, dict]:
    """(train, held-out, what preparing them did): the pairs, the SFT model's own compared samples where the
    recipe asks for them, prompts shortened to max_prompt_length, and what max_length cuts."""
    train_set, held_out, report = load_pairs(args, training_args.seed)
    quiet_small_data_bars(train_set, held_out)
    if args.toy_policy_prompts:
        train_set, report["policy_comparisons"] = add_own_sample_comparisons(
            train_set, args, model_args, tokenizer, training_args
        )
    train_set, shortened = shorten_prompts(train_set, tokenizer, args.max_prompt_length, "train")
    held_out, _ = shorten_prompts(held_out, tokenizer, args.max_prompt_length, "eval")
    lengths = {
        name: count_long_pairs(split, tokenizer, training_args.max_length, name)
        for name, split in (("train", train_set), ("eval", held_out))
    }
    return train_set, held_out, {"report": report, "shortened": shortened, "lengths": lengths}
