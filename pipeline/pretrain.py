"""Pretraining: a GPT-2-style model from scratch, with its own tokenizer, on packed blocks of text.

    python -m pipeline.pretrain --config recipes/toy/pretrain.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.pretrain --config recipes/gpt2/pretrain.yaml

Outputs and metrics: docs/stages/pretrain.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoTokenizer,
    Trainer,
    default_data_collator,
)

from pipeline.contract import write_json
from pipeline.data.packing import pack_into_blocks
from pipeline.data.text import load_text_dataset
from pipeline.data.toy_world import ToyWorld, gold_reward
from pipeline.decoding import DEFAULT_STRATEGIES, sample_table
from pipeline.errors import DataError, run_cli
from pipeline.models import gpt2_from_scratch
from pipeline.plots import plot_loss_curves
from pipeline.pretraining.config import RECIPE_TYPES, PretrainArguments, PretrainConfig
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.tokenization import train_tokenizer
from pipeline.training import GracefulInterrupt, Throughput, open_trainer_run, steps_run

logger = logging.getLogger("pipeline.pretrain")


def load_documents(args: PretrainArguments, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train and eval documents (column `text`); eval is a held-out share of documents, never of blocks.

    On the toy world the eval documents are the validation split's (questions no training document asks), as
    many as eval_fraction of toy_documents; the test split stays untouched for the later stages' reports.
    """
    if args.dataset == "toy":
        world = ToyWorld.from_recipe(args)
        n_train = min(args.toy_documents, args.max_documents or args.toy_documents)
        n_eval = max(1, round(args.eval_fraction * n_train))
        corpus = lambda n, split: datasets.Dataset.from_dict(  # noqa: E731
            {"text": world.pretraining_corpus(n, good_fraction=args.toy_good_fraction, split=split)}
        )
        return corpus(n_train, "train"), corpus(n_eval, "validation")
    documents = load_text_dataset(
        args.dataset, args.text_column, config_name=args.dataset_config_name, sample_by=args.text_sample_by
    )
    if args.max_documents:
        documents = documents.select(range(min(args.max_documents, len(documents))))
    if len(documents) < 2:
        raise DataError(
            f"{args.dataset}: need at least 2 documents to hold one out for evaluation, got {len(documents)}."
        )
    split = documents.train_test_split(test_size=args.eval_fraction, seed=seed, shuffle=True)
    return split["train"], split["test"]


def build_tokenizer(args: PretrainArguments, train_documents: datasets.Dataset, output_dir: Path):
    """Reuse the tokenizer a resumed run already saved, else load the named one, else train one."""
    if (output_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(output_dir)
    if args.tokenizer_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        return tokenizer
    return train_tokenizer(train_documents["text"], kind=args.tokenizer, vocab_size=args.vocab_size)


def build_model(args: PretrainArguments, tokenizer) -> torch.nn.Module:
    return gpt2_from_scratch(
        tokenizer, args.n_layer, args.n_head, args.n_embd, args.block_size, args.dropout, args.attn_implementation
    )


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Training FLOPs per token as in PaLM/nanoGPT: 6N for the weights + 12·L·d·T for attention."""
    config = model.config
    non_embedding = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * non_embedding + 12 * config.n_layer * config.n_embd * block_size


def sample_prompts(args: PretrainArguments, eval_documents: datasets.Dataset) -> list[str]:
    if args.sample_prompts:
        return args.sample_prompts
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.num_sample_prompts, split=args.toy_eval_split)
    return [text[:16] for text in eval_documents["text"][:4]]


def write_samples(model, tokenizer, args: PretrainArguments, prompts: list[str], output_dir: Path, seed: int) -> dict:
    """Samples of every decoding strategy side by side; with the toy world also their mean gold reward."""
    strategies = {name: DEFAULT_STRATEGIES[name] for name in args.decoding_strategies}
    table = sample_table(
        model, tokenizer, prompts, strategies=strategies, max_new_tokens=args.sample_max_new_tokens, seed=seed
    )
    records, gold = [], {}
    for name, generations in table.items():
        for generation in generations:
            record = {
                "strategy": name,
                "prompt": generation.prompt,
                "text": generation.text,
                "finished": generation.finished,
            }
            if args.dataset == "toy":
                record["gold_reward"] = gold_reward(generation.prompt, generation.text, finished=generation.finished)
            records.append(record)
        if args.dataset == "toy":
            scores = [r["gold_reward"] for r in records if r["strategy"] == name]
            gold[name] = round(sum(scores) / len(scores), 4)
    write_json(output_dir / "samples.json", records)
    return gold


def global_batch_size(training_args: PretrainConfig) -> int:
    return (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )


def log_training_plan(
    args: PretrainArguments, training_args: PretrainConfig, model, train_blocks, eval_blocks
) -> None:
    logger.info(
        "model: %.3fM parameters; data: %d train blocks, %d eval blocks of %d tokens; "
        "global batch %d = %d per device x %d accumulation x %d processes",
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(train_blocks),
        len(eval_blocks),
        args.block_size,
        global_batch_size(training_args),
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
    )


def build_trainer(
    args: PretrainArguments, training_args: PretrainConfig, model, tokenizer, train_blocks, eval_blocks, interrupt
) -> Trainer:
    """transformers' Trainer on packed blocks (no collation beyond stacking), with the project's memory check and
    throughput (tokens/s, model FLOPs utilisation) callbacks."""
    tokens_per_step = global_batch_size(training_args) * args.block_size
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[
            interrupt,
            MemoryCheck(args.block_size),
            Throughput(tokens_per_step, flops_per_token(model, args.block_size)),
        ],
    )


def pretrain_metrics(
    args: PretrainArguments,
    trainer: Trainer,
    tokenizer,
    blocks: dict[str, datasets.Dataset],
    training: dict[str, Any],
    eval_loss: float,
    gold: dict[str, float],
) -> dict[str, Any]:
    """metrics.json: losses and perplexity, size, data, speed of this run's steps (a resumed run's own), gold."""
    checkpoint = training["resumed_from"]
    trained_tokens = steps_run(trainer, checkpoint) * global_batch_size(trainer.args) * args.block_size
    train_seconds = training["train_seconds"]
    metrics = {
        "train_loss": round(training["train_loss"], 4),
        "eval_loss": round(eval_loss, 4),
        "perplexity": round(math.exp(eval_loss), 4),
        "steps": trainer.state.global_step,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "vocab_size": len(tokenizer),
        "train_blocks": len(blocks["train"]),
        "eval_blocks": len(blocks["eval"]),
        "tokens_per_second": round(trained_tokens / train_seconds, 1) if train_seconds > 0 else None,
        "train_seconds": round(train_seconds, 2),
        "resumed_from": checkpoint,
    }
    if gold:
        metrics["gold_reward"] = gold
        metrics["gold_reward_greedy"] = gold.get("greedy")
        metrics["gold_reward_sampled"] = gold.get("temperature_1.0")
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "pretrain", __doc__)
    opened = open_trainer_run(recipe, "pretrain", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Data and tokenizer
    train_documents, eval_documents = load_documents(args, training_args.seed)
    tokenizer = build_tokenizer(args, train_documents, output_dir)
    if training_args.should_save:
        tokenizer.save_pretrained(output_dir)  # first, so that a resumed run packs with the same ids
    with training_args.main_process_first(desc="packing"):
        blocks = {
            "train": pack_into_blocks(train_documents, tokenizer, args.block_size),
            "eval": pack_into_blocks(eval_documents, tokenizer, args.block_size),
        }

    # Model and trainer
    model = build_model(args, tokenizer)
    log_training_plan(args, training_args, model, blocks["train"], blocks["eval"])
    interrupt = GracefulInterrupt()
    trainer = build_trainer(args, training_args, model, tokenizer, blocks["train"], blocks["eval"], interrupt)

    # Training
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    trainer.save_model(str(output_dir))
    eval_loss = trainer.evaluate()["eval_loss"]
    if not trainer.is_world_process_zero():
        return

    # Curves, samples of every decoding strategy, metrics
    plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png", f"pretraining: {recipe.path}")
    model.eval()
    gold = write_samples(model, tokenizer, args, sample_prompts(args, eval_documents), output_dir, training_args.seed)
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    training = {"train_loss": train_result.training_loss, "train_seconds": train_seconds, "resumed_from": checkpoint}
    metrics = pretrain_metrics(args, trainer, tokenizer, blocks, training, eval_loss, gold)
    run.finish(resolved_recipe("pretrain", args, training_args), metrics)
    logger.info(
        "eval loss %.4f, perplexity %.3f; outputs in %s", metrics["eval_loss"], metrics["perplexity"], output_dir
    )


if __name__ == "__main__":
    run_cli(main)
