"""Supervised fine-tuning: full, LoRA or QLoRA, on demonstrations, with the loss on the responses only.

    python -m pipeline.sft --config recipes/toy/sft.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.sft --config recipes/gpt2/sft_lora.yaml

The story: parse the recipe -> load demonstrations (the toy world's, a JSON Lines file or a hub data set,
in prompt/completion, chat-messages or Alpaca format; see pipeline.data.sft_formats) -> load the
tokenizer (pad distinct from EOS) and set a simple chat template if chat data meets a model without
one -> count the sequences longer than `max_length`, which TRL truncates -> load the model (4-bit NF4
for QLoRA, prepared for k-bit training) and check the LoRA target modules -> measure the gold reward of
greedy and sampled responses before training (toy world) -> train with TRL's SFTTrainer (PEFT wraps the
model for LoRA/QLoRA; completion-only / assistant-only loss; EOS once at the end of each response) ->
save -> evaluate perplexity = exp(eval loss) and the gold reward after training -> metrics and manifest.

What the output directory holds (the next stages name it as `model_name_or_path`):
  full fine-tune:              the model (safetensors) + tokenizer.
  LoRA/QLoRA:                  the adapter in `adapter/` (+ tokenizer), and with `merge_adapters: true`
                               (the default) the merged full model + tokenizer at the top, which loads
                               with plain `AutoModelForCausalLM.from_pretrained`. The merge is made into
                               a full-precision copy of the base model, also for QLoRA (merging into
                               4-bit weights would quantize the update away). With `merge_adapters:
                               false` only `adapter/` holds weights; `AutoModelForCausalLM.from_pretrained
                               ("<output_dir>/adapter")` loads base + adapter through PEFT.

Metrics (metrics.json): train loss; eval loss and perplexity on the response tokens, before and after;
trainable parameters and their share (4-bit weights counted by their logical size); peak memory (on a
GPU torch.cuda.max_memory_allocated, on a CPU the process's peak RSS, loading and merging included);
how many examples were truncated or left out; step time and tokens/s; with the toy world the gold
reward of greedy and sampled (temperature 1.0) responses to held-out prompts before and after SFT
(samples.json holds them all). Plus loss_curve.png and log_history.json.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
from transformers import PreTrainedModel
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import has_generation_markers
from trl.trainer.utils import get_peft_config

from pipeline.contract import write_json
from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.sft_formats import SIMPLE_CHAT_TEMPLATE, load_sft_dataset, toy_sft_dataset
from pipeline.data.toy_world import ToyWorld, ToyWorldKeys, gold_reward, recipe_traits
from pipeline.decoding import generate
from pipeline.errors import DataError, UserError, run_cli
from pipeline.finetuning import (
    ModelArguments,
    build_policy,
    keep_adapters_in_fp32,
    merge_into_base,
    mode_name,
    save_fine_tuned,
)
from pipeline.models import load_tokenizer, parameter_counts
from pipeline.plots import plot_loss_curves
from pipeline.policy_eval import trait_share, trait_value
from pipeline.recipes import parse_recipe, require_positive, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.training import GracefulInterrupt, open_trainer_run, quiet_small_data_bars, training_figures

logger = logging.getLogger("pipeline.sft")

# The strategies whose gold reward is reported before and after SFT: what the model knows (greedy) and
# what it would do when sampled, as PPO and DPO sample it (temperature 1.0, no top-k/top-p).
GOLD_STRATEGIES = ("greedy", "temperature_1.0")


@dataclass
class SFTArguments(ToyWorldKeys):
    """What to fine-tune on and what to report (optimisation: SFTConfig; model, LoRA, 4-bit: ModelConfig)."""

    path_fields: ClassVar[dict[str, str]] = {"dataset": "dataset"}

    dataset: str = field(
        default="toy",
        metadata={"help": "'toy' (the toy world's demonstrations), a .jsonl/.json(.gz) file, or a hub data set"},
    )
    datasets: list[dict[str, Any]] = mixture_field()
    dataset_format: Literal["auto", "prompt_completion", "messages", "alpaca"] = field(
        default="auto", metadata={"help": "data format; auto detects it from the columns"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "hub data set configuration"})
    dataset_split: str = field(default="train", metadata={"help": "hub data set split to read"})
    eval_fraction: float = field(default=0.05, metadata={"help": "share of the examples held out for evaluation"})
    max_train_examples: int | None = field(default=None, metadata={"help": "use at most this many training examples"})
    max_eval_examples: int | None = field(default=512, metadata={"help": "evaluate on at most this many examples"})
    toy_examples: int = field(default=4000, metadata={"help": "toy world: demonstrations to train on"})
    toy_eval_examples: int = field(default=256, metadata={"help": "toy world: held-out demonstrations for eval loss"})
    toy_demo_error_rate: float = field(
        default=0.0,
        metadata={
            "help": "toy world: share of training demonstrations that are labeller mistakes (wrong or rambling); "
            "eval stays clean"
        },
    )
    merge_adapters: bool = field(
        default=True, metadata={"help": "LoRA/QLoRA: also write the merged full model into output_dir"}
    )
    num_eval_prompts: int = field(
        default=128, metadata={"help": "toy world: held-out prompts whose gold reward is measured before/after"}
    )
    sample_prompts: list[str] = field(
        default_factory=list,
        metadata={"help": "prompts for samples.json (default: toy eval prompts, or eval prompts)"},
    )
    num_samples: int = field(default=8, metadata={"help": "non-toy data: eval prompts to write samples for"})
    sample_max_new_tokens: int = field(default=48, metadata={"help": "length limit of generated responses"})

    def __post_init__(self) -> None:
        take_mixture(self)
        require_positive(self, "toy_examples", "toy_eval_examples", "num_eval_prompts", "sample_max_new_tokens")
        require_positive(self, "max_train_examples", "max_eval_examples", allow_none=True)
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"key 'eval_fraction' must be in (0, 1), got {self.eval_fraction}")
        super().__post_init__()
        if not 0.0 <= self.toy_demo_error_rate <= 1.0:
            raise ValueError(f"key 'toy_demo_error_rate' must be in [0, 1], got {self.toy_demo_error_rate}")


@dataclass
class SFTTrainingConfig(SFTConfig):
    """TRL's SFTConfig with CPU-friendly defaults: fp32 (bf16 is slow on most CPUs), no gradient
    checkpointing, a LoRA-sized learning rate, cosine schedule, no hub, no wandb."""

    output_dir: str = field(default="runs/sft", metadata={"help": "where the stage writes its outputs"})
    bf16: bool | None = False
    gradient_checkpointing: bool = False
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    max_length: int | None = 512
    logging_steps: float = 10
    eval_strategy: str = "steps"
    eval_steps: float = 100
    save_strategy: str = "steps"
    save_steps: float = 100
    save_total_limit: int = 2
    report_to: str | list[str] = "none"
    include_num_input_tokens_seen: str | bool = "non_padding"
    ddp_find_unused_parameters: bool | None = False  # every trainable parameter is used in each step


RECIPE_TYPES = (SFTArguments, ModelArguments, SFTTrainingConfig)


# --- data ---------------------------------------------------------------------------------------------


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


# --- model --------------------------------------------------------------------------------------------


def build_trainer(
    model: PreTrainedModel,
    tokenizer,
    train_set: datasets.Dataset,
    eval_set: datasets.Dataset | None,
    dataset_format: str,
    model_args: ModelArguments,
    training_args: SFTTrainingConfig,
    callbacks: Sequence = (),
) -> SFTTrainer:
    """TRL's SFTTrainer, which tokenizes, masks the prompts, appends EOS, truncates and wraps the model
    with LoRA (`peft_config`); plus the two things the stage adds: fp32 adapters on a CPU, and a check of
    the special tokens in the sequences it will train on."""
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
    )
    if trainer.args.device.type == "cpu":
        keep_adapters_in_fp32(trainer.model)
    check_special_tokens(trainer.train_dataset, tokenizer, dataset_format, training_args.max_length)
    return trainer


# --- evaluation ---------------------------------------------------------------------------------------


def generation_prompts(args: SFTArguments, eval_set: datasets.Dataset, tokenizer) -> list[str]:
    """Held-out toy prompts (gold reward), the recipe's prompts, or the first eval prompts of the data."""
    if args.sample_prompts:
        return list(args.sample_prompts)
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.num_eval_prompts, split=args.toy_eval_split)
    head = eval_set.select(range(min(args.num_samples, len(eval_set))))
    if "messages" in head.column_names:
        # The conversation up to its last assistant turn, rendered as the model will see it.
        prompts = []
        for messages in head["messages"]:
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True))
        return prompts
    return list(head["prompt"])


def sample_and_score(model, tokenizer, prompts: list[str], args: SFTArguments, seed: int, when: str):
    """Greedy and temperature-1.0 responses; with the toy world their mean gold reward per strategy and the share
    of responses with each of the world's traits (e.g. the demonstrators' habit), as {trait: {strategy: share}}."""
    records, gold, traits = [], {}, {}
    world_traits = recipe_traits(args)
    for strategy in GOLD_STRATEGIES:
        generations = generate(
            model, tokenizer, prompts, strategy=strategy, max_new_tokens=args.sample_max_new_tokens, seed=seed
        )
        for generation in generations:
            record = {
                "when": when,
                "strategy": strategy,
                "prompt": generation.prompt,
                "text": generation.text,
                "finished": generation.finished,
            }
            if args.dataset == "toy":
                record["gold_reward"] = round(
                    gold_reward(generation.prompt, generation.text, finished=generation.finished), 4
                )
            records.append(record)
        if args.dataset == "toy":
            scores = [r["gold_reward"] for r in records if r["strategy"] == strategy]
            gold[strategy] = round(sum(scores) / len(scores), 4)
        for name, test in world_traits.items():
            traits.setdefault(name, {})[strategy] = trait_share(
                trait_value(test, g.prompt, g.text) for g in generations
            )
    return records, gold, traits


# --- the stage ----------------------------------------------------------------------------------------


def sft_metrics(
    args: SFTArguments,
    model_args: ModelArguments,
    trainer: SFTTrainer,
    dataset_format: str,
    losses: dict[str, dict[str, float]],
    lengths: dict[str, dict[str, int]],
    training: dict[str, Any],
    gold: dict[str, dict[str, float]],
    traits: dict[str, dict],
) -> dict[str, Any]:
    """metrics.json: held-out loss before/after, what the data lost to max_length, speed, and on the toy world
    the gold reward and the world's traits before and after."""
    before, after = losses["before"]["eval_before_loss"], losses["after"]["eval_loss"]
    metrics = {
        "mode": mode_name(model_args),
        "dataset_format": dataset_format,
        "train_loss": training["train_loss"],
        "eval_loss_before": round(before, 4),
        "eval_loss": round(after, 4),
        "perplexity_before": round(math.exp(before), 4),
        "perplexity": round(math.exp(after), 4),
        "steps": training["steps"],
        **parameter_counts(trainer.model),
        "train_examples": len(trainer.train_dataset),
        "eval_examples": len(trainer.eval_dataset),
        "truncated_train_examples": lengths["train"]["truncated"],
        "dropped_train_examples": lengths["train"]["dropped"],
        "truncated_eval_examples": lengths["eval"]["truncated"],
        "longest_train_sequence": lengths["train"]["longest"],
        "train_seconds": training["train_seconds"],
        "seconds_per_step": training["seconds_per_step"],
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / training["train_seconds"], 1)
        if training["train_seconds"] > 0
        else None,
        "merged": bool(model_args.use_peft and args.merge_adapters),
        "resumed_from": training["resumed_from"],
    }
    if gold["after"]:
        metrics["gold_reward_before"], metrics["gold_reward_after"] = gold["before"], gold["after"]
        metrics["gold_reward_greedy"] = gold["after"].get("greedy")
        metrics["gold_reward_sampled"] = gold["after"].get("temperature_1.0")
        metrics["toy_world"] = ToyWorld.from_recipe(args).describe()
    if traits["after"]:
        metrics["traits_before"], metrics["traits_after"] = traits["before"], traits["after"]
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "sft", __doc__)
    opened = open_trainer_run(recipe, "sft", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Data, and what max_length does to it
    train_set, eval_set, dataset_format = load_data(args, training_args.seed)
    quiet_small_data_bars(train_set, eval_set)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    configure_loss(dataset_format, tokenizer, training_args)
    lengths = {
        name: count_long_sequences(split, tokenizer, training_args.max_length, name)
        for name, split in (("train", train_set), ("eval", eval_set))
    }

    # Model, and its samples before training
    model = build_policy(model_args, tokenizer, training_args)
    prompts = generation_prompts(args, eval_set, tokenizer)
    before = ([], {}, {})
    if training_args.should_save:
        before = sample_and_score(model, tokenizer, prompts, args, training_args.seed, "before")

    # Training
    interrupt = GracefulInterrupt()
    callbacks = [interrupt, MemoryCheck(training_args.max_length)]
    trainer = build_trainer(
        model, tokenizer, train_set, eval_set, dataset_format, model_args, training_args, callbacks
    )
    log_training_plan(trainer, model_args, dataset_format)
    losses = {"before": trainer.evaluate(metric_key_prefix="eval_before")}
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    losses["after"] = trainer.evaluate()
    merge = merge_into_base(model_args, tokenizer, output_dir, training_args.trust_remote_code)
    final_model = save_fine_tuned(
        trainer, model_args.use_peft, tokenizer, output_dir, merge if args.merge_adapters else None
    )
    if final_model is None:  # not the main process
        return

    # Samples after training, curves, metrics
    after = sample_and_score(final_model, tokenizer, prompts, args, training_args.seed, "after")
    write_json(output_dir / "samples.json", before[0] + after[0])
    plot_loss_curves(
        trainer.state.log_history, output_dir / "loss_curve.png", f"SFT ({mode_name(model_args)}): {recipe.path}"
    )
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    training = training_figures(trainer, train_result, train_seconds, checkpoint)
    gold, traits = {"before": before[1], "after": after[1]}, {"before": before[2], "after": after[2]}
    metrics = sft_metrics(args, model_args, trainer, dataset_format, losses, lengths, training, gold, traits)
    run.finish(resolved_recipe("sft", args, model_args, training_args), metrics)
    logger.info(
        "eval loss %.4f -> %.4f (perplexity %.3f); gold reward greedy %s -> %s, sampled %s -> %s; outputs in %s",
        metrics["eval_loss_before"],
        metrics["eval_loss"],
        metrics["perplexity"],
        gold["before"].get("greedy"),
        gold["after"].get("greedy"),
        gold["before"].get("temperature_1.0"),
        gold["after"].get("temperature_1.0"),
        output_dir,
    )


def log_training_plan(trainer: SFTTrainer, model_args: ModelArguments, dataset_format: str) -> None:
    counts = parameter_counts(trainer.model)
    logger.info(
        "%s fine-tuning: %d of %d parameters trainable (%.2f%%); %d train / %d eval examples (%s)",
        mode_name(model_args),
        counts["trainable_parameters"],
        counts["parameters"],
        100 * counts["trainable_share"],
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
        dataset_format,
    )


if __name__ == "__main__":
    run_cli(main)
