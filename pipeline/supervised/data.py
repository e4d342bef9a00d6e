"""The SFT stage's data: demonstrations from the toy world or a file / hub data set, the loss on responses
only, and checks of what TRL's tokenization will do to them (truncation, dropped examples, doubled EOS/BOS)."""

from __future__ import annotations

import logging

import datasets
from trl.chat_template_utils import has_generation_markers

from pipeline.data.sft_formats import SIMPLE_CHAT_TEMPLATE, load_sft_dataset, toy_sft_dataset
from pipeline.data.toy_world import ToyWorld
from pipeline.errors import DataError, UserError
from pipeline.supervised.config import SFTArguments, SFTTrainingConfig

logger = logging.getLogger("pipeline.sft")


def load_data(args: SFTArguments, seed: int) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """(train, eval, format). The toy world has its own validation split (questions no training example asks)."""
    if args.dataset == "toy":
        world = ToyWorld.from_recipe(args)
        train = toy_sft_dataset(world, args.toy_examples, "train", args.toy_demo_error_rate)
        evaluation = toy_sft_dataset(world, args.toy_eval_examples, "validation")  # eval loss while training
        return train, evaluation, "prompt_completion"
    dataset, dataset_format = load_sft_dataset(
        args.datasets or args.dataset, args.dataset_format, args.dataset_split, args.dataset_config_name
    )
    if len(dataset) < 2:
        raise DataError(
            f"{args.dataset}: need at least 2 examples to hold one out for evaluation, got {len(dataset)}."
        )
    split = dataset.train_test_split(test_size=args.eval_fraction, seed=seed, shuffle=True)
    train, evaluation = split["train"], split["test"]
    if args.max_train_examples:
        train = train.select(range(min(args.max_train_examples, len(train))))
    if args.max_eval_examples:
        evaluation = evaluation.select(range(min(args.max_eval_examples, len(evaluation))))
    return train, evaluation, dataset_format


def configure_loss(dataset_format: str, tokenizer, training_args: SFTTrainingConfig) -> None:
    """Loss on responses only: TRL's completion_only_loss for prompt/completion (its default there) and
    assistant_only_loss for chat data, unless the recipe sets `completion_only_loss: false`."""
    if dataset_format != "messages":
        return
    if tokenizer.chat_template is None:
        tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
        logger.info("the tokenizer has no chat template: using the simple 'User: ...\\nBot: ...<eos>' template")
    if training_args.completion_only_loss is not False:
        training_args.assistant_only_loss = True


def count_long_sequences(dataset: datasets.Dataset, tokenizer, max_length: int | None, name: str) -> dict[str, int]:
    """Count what TRL's truncation will do, and say it: sequences longer than `max_length` are cut to it,
    and an example whose prompt alone fills `max_length` keeps no response token, so TRL leaves it out.

    The tokenization mirrors TRL 1.16's (text + EOS through the tokenizer, chats through the chat template).
    """
    counts = {"examples": len(dataset), "truncated": 0, "dropped": 0, "longest": 0}
    if len(dataset) == 0:
        return counts
    if "messages" in dataset.column_names:
        with_mask = has_generation_markers(tokenizer.chat_template or "")
        full_lengths, first_trained = [], []
        for messages in list(dataset["messages"]):
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=with_mask
            )
            full_lengths.append(len(rendered["input_ids"]))
            mask = rendered.get("assistant_masks") or [1]
            first_trained.append(mask.index(1) if 1 in mask else len(mask))
    else:
        eos = tokenizer.eos_token
        prompts, completions = list(dataset["prompt"]), list(dataset["completion"])
        texts = [p + (c if c.endswith(eos) else c + eos) for p, c in zip(prompts, completions)]
        full_lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        first_trained = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    counts["longest"] = max(full_lengths)
    if max_length is None:
        return counts
    counts["truncated"] = sum(length > max_length for length in full_lengths)
    counts["dropped"] = sum(start >= max_length for start in first_trained)
    if counts["truncated"]:
        logger.warning(
            "%s: %d of %d examples are longer than max_length=%d tokens (longest %d) and are truncated to it",
            name,
            counts["truncated"],
            len(dataset),
            max_length,
            counts["longest"],
        )
    if counts["dropped"]:
        logger.warning(
            "%s: %d of %d examples have a prompt of max_length=%d tokens or more: no response token is left "
            "after truncation, so they are left out of training (raise max_length to keep them)",
            name,
            counts["dropped"],
            len(dataset),
            max_length,
        )
    if counts["dropped"] == len(dataset):
        raise DataError(
            f"{name}: every example's prompt is at least max_length={max_length} tokens: raise max_length."
        )
    return counts


def check_special_tokens(dataset: datasets.Dataset, tokenizer, dataset_format: str, max_length: int | None) -> None:
    """EOS ends each response exactly once and BOS is not doubled, in the sequences TRL really trains on.

    TRL appends EOS to completions and tokenizes chats without special tokens; a tokenizer that adds
    BOS/EOS by itself (a post-processor) would double them. Checked on a few examples, not assumed.
    """
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    for ids in list(dataset.select(range(min(16, len(dataset))))["input_ids"]):
        truncated = max_length is not None and len(ids) >= max_length
        doubled_eos = any(a == b == eos for a, b in zip(ids, ids[1:]))
        doubled_bos = bos is not None and bos != eos and len(ids) > 1 and ids[0] == ids[1] == bos
        missing_eos = dataset_format != "messages" and not truncated and ids[-1] != eos
        if doubled_eos or doubled_bos or missing_eos:
            problem = "doubled EOS" if doubled_eos else "doubled BOS" if doubled_bos else "no EOS at the end"
            raise UserError(
                f"the training sequences have {problem}: {tokenizer.decode(ids)!r}. The tokenizer adds special tokens "
                "itself; use a tokenizer without a BOS/EOS post-processor (TRL adds EOS to each response)."
            )
