"""Pretraining: a GPT-2-style model from scratch, with its own tokenizer, on packed blocks of text.

    python -m pipeline.pretrain --config recipes/toy/pretrain.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.pretrain --config recipes/gpt2/pretrain.yaml

The story: parse the recipe -> load documents (the built-in toy world, a text/JSON Lines file or a hub
data set) -> train a tokenizer (char-level or byte-level BPE) or load one -> pack the documents, each
ended by EOS, into blocks of `block_size` tokens -> build a GPT2LMHeadModel from (n_layer, n_head,
n_embd, block_size) with SDPA attention -> train with AdamW and a cosine schedule with warm-up
(transformers' Trainer) -> save model and tokenizer -> evaluate perplexity = exp(eval loss), plot the
loss curve, and write samples from every decoding strategy -> metrics and manifest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import datasets
import torch
from transformers import (
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from pipeline.contract import open_stage_run, write_json
from pipeline.data.packing import pack_into_blocks
from pipeline.data.text import load_text_dataset
from pipeline.data.toy_world import ToyWorld, ToyWorldKeys, gold_reward
from pipeline.decoding import DEFAULT_STRATEGIES, sample_table
from pipeline.errors import DataError, run_cli
from pipeline.models import gpt2_from_scratch
from pipeline.plots import plot_loss_curves
from pipeline.recipes import parse_recipe, require_positive, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.tokenization import train_tokenizer
from pipeline.training import GracefulInterrupt, Throughput

logger = logging.getLogger("pipeline.pretrain")


@dataclass
class PretrainArguments(ToyWorldKeys):
    """What to train on and what to build (the optimisation settings are TrainingArguments)."""

    path_fields: ClassVar[dict[str, str]] = {"dataset": "dataset", "tokenizer_name_or_path": "model"}

    dataset: str = field(
        default="toy",
        metadata={"help": "'toy' (built-in toy world), a .txt/.jsonl file, or a hub data set with a text column"},
    )
    text_column: str = field(default="text", metadata={"help": "column holding the text (jsonl and hub data sets)"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "hub data set configuration"})
    text_sample_by: Literal["paragraph", "line", "document"] = field(
        default="paragraph", metadata={"help": "how a .txt file is cut into documents (each ended by EOS)"}
    )
    eval_fraction: float = field(default=0.05, metadata={"help": "share of documents held out for evaluation"})
    max_documents: int | None = field(default=None, metadata={"help": "use at most this many documents (quick runs)"})
    toy_documents: int = field(default=20000, metadata={"help": "toy world: number of dialogues to generate"})
    toy_good_fraction: float = field(default=0.6, metadata={"help": "toy world: share of correct, clean answers"})

    tokenizer: Literal["char", "bpe"] = field(default="char", metadata={"help": "tokenizer to train"})
    vocab_size: int = field(default=512, metadata={"help": "vocabulary size for the BPE tokenizer"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "use this tokenizer (e.g. gpt2) instead of training one"}
    )

    n_layer: int = field(default=2, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    n_embd: int = field(default=128, metadata={"help": "width of the residual stream"})
    block_size: int = field(default=128, metadata={"help": "context length = packed block length"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on embeddings, attention and residuals"})
    attn_implementation: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention kernel"})

    sample_prompts: list[str] = field(
        default_factory=list, metadata={"help": "prompts for samples (default: toy world eval prompts, or newline)"}
    )
    num_sample_prompts: int = field(default=64, metadata={"help": "toy world: prompts used to measure gold reward"})
    sample_max_new_tokens: int = field(default=48, metadata={"help": "length limit of samples"})
    decoding_strategies: list[str] = field(
        default_factory=lambda: list(DEFAULT_STRATEGIES), metadata={"help": "decoding strategies to sample with"}
    )

    def __post_init__(self) -> None:
        require_positive(
            self, "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "toy_documents", "sample_max_new_tokens"
        )
        if self.n_embd % self.n_head:
            raise ValueError(f"key 'n_embd' ({self.n_embd}) must be divisible by 'n_head' ({self.n_head})")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"key 'eval_fraction' must be in (0, 1), got {self.eval_fraction}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'dropout' must be in [0, 1), got {self.dropout}")
        super().__post_init__()
        if not 0.0 <= self.toy_good_fraction <= 1.0:
            raise ValueError(f"key 'toy_good_fraction' must be in [0, 1], got {self.toy_good_fraction}")
        unknown = [name for name in self.decoding_strategies if name not in DEFAULT_STRATEGIES]
        if unknown:
            raise ValueError(
                f"key 'decoding_strategies': unknown strategy '{unknown[0]}'; "
                f"choose from {', '.join(DEFAULT_STRATEGIES)}"
            )


@dataclass
class PretrainConfig(TrainingArguments):
    """TrainingArguments with pretraining defaults: AdamW, cosine schedule with warm-up, no hub, no wandb."""

    output_dir: str = field(default="runs/pretrain", metadata={"help": "where the stage writes its outputs"})
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    weight_decay: float = 0.1
    adam_beta2: float = 0.99
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    logging_steps: float = 25
    eval_strategy: str = "steps"
    eval_steps: float = 200
    save_strategy: str = "steps"
    save_steps: float = 200
    save_total_limit: int = 2
    report_to: str | list[str] = "none"
    ddp_find_unused_parameters: bool | None = False  # every GPT-2 parameter is used in each step


RECIPE_TYPES = (PretrainArguments, PretrainConfig)


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


def main(argv: Sequence[str] | None = None) -> None:
    args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "pretrain", __doc__)
    output_dir = Path(training_args.output_dir)
    opened = open_stage_run(
        recipe,
        "pretrain",
        output_dir,
        training_args.seed,
        training_args.should_save,
        training_args.max_steps,
        config=training_args,
    )
    if opened is None:
        return
    run, checkpoint = opened
    set_seed(training_args.seed)

    train_documents, eval_documents = load_documents(args, training_args.seed)
    tokenizer = build_tokenizer(args, train_documents, output_dir)
    if training_args.should_save:
        tokenizer.save_pretrained(output_dir)  # first, so that a resumed run packs with the same ids
    with training_args.main_process_first(desc="packing"):
        train_blocks = pack_into_blocks(train_documents, tokenizer, args.block_size)
        eval_blocks = pack_into_blocks(eval_documents, tokenizer, args.block_size)

    model = build_model(args, tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    global_batch = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    logger.info(
        "model: %.3fM parameters; data: %d train blocks, %d eval blocks of %d tokens; "
        "global batch %d = %d per device x %d accumulation x %d processes",
        parameters / 1e6,
        len(train_blocks),
        len(eval_blocks),
        args.block_size,
        global_batch,
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
    )

    interrupt = GracefulInterrupt()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[
            interrupt,
            MemoryCheck(args.block_size),
            Throughput(global_batch * args.block_size, flops_per_token(model, args.block_size)),
        ],
    )
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)

    trainer.save_model(str(output_dir))
    eval_metrics = trainer.evaluate()
    if not trainer.is_world_process_zero():
        return
    plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png", f"pretraining: {recipe.path}")
    model.eval()
    gold = write_samples(model, tokenizer, args, sample_prompts(args, eval_documents), output_dir, training_args.seed)
    write_json(output_dir / "log_history.json", trainer.state.log_history)

    trained_tokens = (
        (trainer.state.global_step - (int(Path(checkpoint).name.split("-")[1]) if checkpoint else 0))
        * global_batch
        * args.block_size
    )
    metrics = {
        "train_loss": round(train_result.training_loss, 4),
        "eval_loss": round(eval_metrics["eval_loss"], 4),
        "perplexity": round(math.exp(eval_metrics["eval_loss"]), 4),
        "steps": trainer.state.global_step,
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "train_blocks": len(train_blocks),
        "eval_blocks": len(eval_blocks),
        "tokens_per_second": round(trained_tokens / train_seconds, 1) if train_seconds > 0 else None,
        "train_seconds": round(train_seconds, 2),
        "resumed_from": checkpoint,
    }
    if gold:
        metrics["gold_reward"] = gold
        metrics["gold_reward_greedy"] = gold.get("greedy")
        metrics["gold_reward_sampled"] = gold.get("temperature_1.0")
    run.finish(resolved_recipe("pretrain", args, training_args), metrics)
    logger.info(
        "eval loss %.4f, perplexity %.3f; outputs in %s", metrics["eval_loss"], metrics["perplexity"], output_dir
    )


if __name__ == "__main__":
    run_cli(main)
