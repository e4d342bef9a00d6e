"""Reward modelling: a scalar head on the SFT model, trained on preference pairs with TRL's RewardTrainer.

    python -m pipeline.reward --config recipes/toy/reward.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.reward --config recipes/gpt2/reward.yaml

The story: parse the recipe -> load (prompt, chosen, rejected) pairs with pipeline.data.preferences (the
toy world's, a JSON Lines file, HH-style transcripts, or a hub data set; duplicates and ties removed
and counted) and a held-out split (the toy world's `eval` split, an `eval_dataset`, or a share of the
prompts) -> load the tokenizer (pad distinct from EOS) and the model with a 1-output
sequence-classification head on top (full fine-tuning or LoRA) -> optionally (toy world) add
comparisons of the SFT model's own samples labelled by the gold reward, as RLHF collects comparisons on
the policy's samples -> tokenize every pair as prompt + response + EOS, fitting over-long pairs into
`max_length` by cutting the prompt from the left (counted and logged, never dropped) -> train with
RewardTrainer: loss −log σ(r_chosen − r_rejected − margin), the margin an optional column of the data
(or the toy world's gold gap), plus `center_rewards_coefficient`·E[(r_c + r_r)²] when set -> save
(LoRA: adapter + merged model) -> judge the model on the held-out pairs: accuracy,
mean margin, reward histogram of chosen vs rejected, calibration of σ(r_c − r_r) -> optionally
Best-of-N with the SFT model as the policy (eval/best_of_n.py): on the toy world this also gives the
correlation of the reward with the gold reward on fresh samples and the calibration on those samples
-> metrics (with the toy world's targets) and manifest.

The reward is read at the last real token (EOS) of each sequence, never at padding; the encoding and
scoring conventions are documented in pipeline/reward_model.py, which PPO and the report reuse:
`score(reward_model, tokenizer, prompts, responses)`. `append_eos: false` reads it at the last response
token instead (recorded in the model's config as `reward_append_eos`, which `score` follows).

Measured on the toy world (recipes/toy/reward.yaml: runs/toy/sft, 2 layers x 128, plus 2 identity blocks):
held-out accuracy 0.854. The SFT model's own log-likelihood ranks the right answer above the near-miss wrong
one in all 201 held-out "right vs wrong" pairs; the head, reading one hidden state at EOS, gets 90% of them and
still often weighs brevity above correctness ("right but rambling" beats "wrong but clean" in 56% of those
pairs). Best-of-N peaks at N = 4 (gold 0.85 against the SFT model's 0.66), is still above SFT at N = 16 (0.74)
and over-optimises from N = 8 on. metrics.json breaks the accuracy down by kind of pair.

What the output directory holds: the reward model (AutoModelForSequenceClassification, num_labels=1,
config.pad_token_id set) + tokenizer, loadable with pipeline.reward_model.load_reward_model; with LoRA
also the adapter in `adapter/`. Plus reward_histogram.png, calibration.png, loss_curve.png,
best_of_n.json/png (if run), metrics.json, manifest.json.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
from transformers import PreTrainedModel
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning
from trl.trainer.utils import get_peft_config

from pipeline.best_of_n import best_of_n, judge_against_frontier, plot_best_of_n
from pipeline.contract import write_json
from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.preferences import HH_ASSISTANT, load_preferences, split_hh_transcript
from pipeline.data.text import iter_jsonl
from pipeline.data.toy_comparisons import check_policy_comparison_keys, own_sample_comparisons
from pipeline.data.toy_world import ToyWorld, ToyWorldKeys, agrees_with_user, gold_reward, recipe_traits
from pipeline.decoding import DEFAULT_STRATEGIES
from pipeline.errors import DataError, RecipeError, run_cli
from pipeline.finetuning import ModelArguments, choose_lora_targets, merge_adapter, save_fine_tuned
from pipeline.models import (
    add_identity_blocks,
    load_model,
    load_tokenizer,
    parameter_counts,
)
from pipeline.plots import plot_loss_curves, plt, save_figure
from pipeline.policy_eval import (
    check_sharpening_temperatures,
    sharpening_frontier,
    sharpening_temperatures_field,
    toy_gold_scorer,
)
from pipeline.recipes import parse_recipe, require_non_negative, require_positive, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.reward_model import (
    POOLINGS,
    context_length,
    encode_pairs,
    pairwise_calibration,
    pairwise_metrics,
    score,
    score_token_ids,
    set_pooling,
)
from pipeline.training import GracefulInterrupt, open_trainer_run, quiet_small_data_bars, training_figures

logger = logging.getLogger("pipeline.reward")

TOY_MARGIN = "gold_gap"  # margin_column value that derives margins from the toy world's gold reward
TARGET_ACCURACY = 0.85  # the toy world's targets, reported in metrics.json
TARGET_BEST_OF = 16
FRONTIER_SAMPLES_PER_PROMPT = 8


@dataclass
class RewardArguments(ToyWorldKeys):
    """What to train on and what to report (optimisation: RewardConfig; model and LoRA: ModelConfig)."""

    path_fields: ClassVar[dict[str, str]] = {"dataset": "dataset", "eval_dataset": "dataset"}

    dataset: str = field(
        default="toy",
        metadata={"help": "'toy', a .jsonl(.gz) of prompt/chosen/rejected or HH transcripts, or a hub data set"},
    )
    datasets: list[dict[str, Any]] = mixture_field()
    dataset_split: str = field(default="train", metadata={"help": "hub data set split to train on"})
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "held-out pairs: a file or hub data set; default: the toy 'eval' split, or eval_fraction"},
    )
    eval_split: str = field(default="test", metadata={"help": "split of a hub eval_dataset"})
    eval_fraction: float = field(
        default=0.05, metadata={"help": "without eval_dataset: share of the PROMPTS held out (pairs never share one)"}
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "train on at most this many pairs"})
    max_eval_pairs: int | None = field(default=1000, metadata={"help": "evaluate on at most this many pairs"})
    margin_column: str | None = field(
        default=None,
        metadata={
            "help": f"numeric column of the data with a margin per pair (toy: '{TOY_MARGIN}' = gold(c) − gold(r))"
        },
    )
    margin_scale: float = field(default=1.0, metadata={"help": "margins are multiplied by this"})
    toy_pairs: int = field(default=2000, metadata={"help": "toy world: training pairs to generate (before dedup)"})
    toy_eval_pairs: int = field(default=500, metadata={"help": "toy world: held-out pairs (eval split)"})
    toy_policy_prompts: int = field(
        default=0,
        metadata={
            "help": "toy world: also train on comparisons of the input model's own samples for this many train "
            "prompts, labelled by the gold reward (0: off)"
        },
    )
    toy_policy_samples: int = field(
        default=4, metadata={"help": "toy world: samples per prompt for toy_policy_prompts"}
    )
    extra_layers: int = field(
        default=0,
        metadata={
            "help": "transformer blocks added on top of the input model's body, starting as the identity "
            "(GPT-2-style models, full fine-tuning): room to compare the response with the prompt"
        },
    )
    reward_pooling: str = field(
        default="last",
        metadata={
            "help": "'last': the score head reads the last token (EOS), as in TRL; 'sum': it scores every token "
            "and the scores are added (a token-level reward model; the prompt's share cancels in comparisons)"
        },
    )
    append_eos: bool = field(
        default=True,
        metadata={"help": "end each response with EOS and read the reward there (false: at the last response token)"},
    )
    merge_adapters: bool = field(default=True, metadata={"help": "LoRA: also write the merged model into output_dir"})
    best_of_n_prompts: int = field(
        default=0, metadata={"help": "Best-of-N with the input model as policy on this many prompts (0: skip)"}
    )
    best_of_n_max: int = field(default=64, metadata={"help": "largest N (a power of 2); samples drawn per prompt"})
    best_of_n_strategy: str = field(default="temperature_1.0", metadata={"help": "decoding strategy of the samples"})
    sample_max_new_tokens: int = field(default=32, metadata={"help": "length limit of Best-of-N samples"})
    sharpening_temperatures: list[float] = sharpening_temperatures_field()

    def __post_init__(self) -> None:
        take_mixture(self)
        require_positive(self, "toy_pairs", "toy_eval_pairs", "best_of_n_max", "sample_max_new_tokens")
        require_positive(self, "max_train_pairs", "max_eval_pairs", allow_none=True)
        require_non_negative(self, "best_of_n_prompts", "toy_policy_prompts", "extra_layers")
        if self.datasets and self.margin_column not in (None, TOY_MARGIN):
            raise ValueError("key 'margin_column' reads a single data set: give `dataset`, not `datasets`")
        check_policy_comparison_keys(self.toy_policy_prompts, self.toy_policy_samples, self.dataset)
        check_sharpening_temperatures(self.sharpening_temperatures)
        if self.reward_pooling not in POOLINGS:
            raise ValueError(
                f"key 'reward_pooling': unknown pooling '{self.reward_pooling}'; choose from {', '.join(POOLINGS)}"
            )
        if self.best_of_n_max & (self.best_of_n_max - 1):
            raise ValueError(f"key 'best_of_n_max' must be a power of 2 (1, 2, 4, ..., 64), got {self.best_of_n_max}")
        if self.best_of_n_strategy not in DEFAULT_STRATEGIES:
            raise ValueError(
                f"key 'best_of_n_strategy': unknown strategy '{self.best_of_n_strategy}'; choose from "
                f"{', '.join(DEFAULT_STRATEGIES)}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"key 'eval_fraction' must be in (0, 1), got {self.eval_fraction}")
        super().__post_init__()
        if self.margin_column == TOY_MARGIN and self.dataset != "toy":
            raise ValueError(f"key 'margin_column': '{TOY_MARGIN}' needs the toy world's gold reward (dataset: toy)")
        if self.eval_dataset and self.dataset == "toy":
            raise ValueError(
                "key 'eval_dataset' is for file and hub data; the toy world holds out its own 'eval' split"
            )
        if self.margin_column not in (None, TOY_MARGIN) and self.dataset == "toy":
            raise ValueError(f"key 'margin_column': the toy world's only margin is '{TOY_MARGIN}'")


@dataclass
class RewardModelArguments(ModelArguments):
    """TRL's ModelConfig (model_name_or_path, dtype, use_peft, lora_*), with LoRA set up for a reward head."""

    model_example: ClassVar[str] = "e.g. runs/toy/sft"
    quantization_refused: ClassVar[str | None] = "quantized reward models are not supported; use full or LoRA"

    # A sequence-classification task makes PEFT train the new `score` head in full next to the adapters.
    lora_task_type: str = "SEQ_CLS"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_peft and self.lora_task_type != "SEQ_CLS":
            raise ValueError(f"key 'lora_task_type' must be SEQ_CLS for a reward model (got {self.lora_task_type})")


@dataclass
class RewardTrainingConfig(RewardConfig):
    """TRL's RewardConfig with CPU-friendly defaults: fp32, no gradient checkpointing, cosine schedule, no
    hub, no wandb. `max_length` null means the model's context length; longer pairs are fitted into it by
    cutting their prompts from the left (TRL itself would drop them)."""

    output_dir: str = field(default="runs/reward", metadata={"help": "where the stage writes its outputs"})
    bf16: bool | None = False
    gradient_checkpointing: bool = False
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 64
    max_length: int | None = None
    logging_steps: float = 10
    eval_strategy: str = "steps"
    eval_steps: float = 100
    save_strategy: str = "steps"
    save_steps: float = 100
    save_total_limit: int = 2
    report_to: str | list[str] = "none"


RECIPE_TYPES = (RewardArguments, RewardModelArguments, RewardTrainingConfig)


# --- data ---------------------------------------------------------------------------------------------


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


def split_by_prompt(pairs: datasets.Dataset, fraction: float, seed: int, source: str):
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


def load_policy(model_args: RewardModelArguments, tokenizer, trust_remote_code: bool) -> PreTrainedModel:
    """The input model as a causal LM (the SFT policy), for its own samples."""
    return load_model(
        dataclasses.replace(model_args, use_peft=False),
        tokenizer,
        head="causal_lm",
        trust_remote_code=trust_remote_code,
    )


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
):
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


def encode_splits(args: RewardArguments, train_pairs, eval_pairs, tokenizer, max_length: int):
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


# --- model --------------------------------------------------------------------------------------------


def build_model(
    model_args: RewardModelArguments,
    tokenizer,
    trust_remote_code: bool,
    append_eos: bool = True,
    extra_layers: int = 0,
    seed: int = 0,
    pooling: str = "last",
) -> PreTrainedModel:
    """The causal LM's body (plus `extra_layers` identity blocks) with a freshly initialised 1-output `score` head
    (seeded by the caller)."""
    with suppress_seqcls_warning():  # "score.weight newly initialised", "lm_head unused": expected here
        model = load_model(model_args, tokenizer, head="sequence_classification", trust_remote_code=trust_remote_code)
    # Saved in config.json, so that pipeline.reward_model.score encodes responses as the model was trained.
    model.config.reward_append_eos = append_eos
    set_pooling(model, pooling)
    add_identity_blocks(model, extra_layers, seed)
    if model_args.use_peft:
        choose_lora_targets(model, model_args)
    return model


def merge_reward_model(
    model_args: RewardModelArguments,
    tokenizer,
    adapter_dir: Path,
    output_dir: Path,
    trust_remote_code: bool,
    append_eos: bool,
    pooling: str = "last",
):
    """Base model + adapter (which carries the trained score head) merged into a plain reward model."""
    base = build_model(
        dataclasses.replace(model_args, use_peft=False), tokenizer, trust_remote_code, append_eos, pooling=pooling
    )
    return merge_adapter(base, adapter_dir, tokenizer, output_dir)


# --- judging the reward model -------------------------------------------------------------------------


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
):
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


def plot_reward_histogram(chosen: Sequence[float], rejected: Sequence[float], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(min(chosen), min(rejected)), max(max(chosen), max(rejected)), 40)
    axis.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (mean {np.mean(chosen):.2f})", color="tab:green")
    axis.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (mean {np.mean(rejected):.2f})", color="tab:red")
    axis.set_xlabel("reward")
    axis.set_ylabel("held-out responses")
    axis.set_title(title)
    axis.legend()
    save_figure(figure, path)


def plot_calibration(curves: dict[str, dict], path: Path) -> None:
    """Reliability diagram: share of pairs the RM orders like the reference, against its confidence."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", label="calibrated")
    for name, calibration in curves.items():
        rows = [row for row in calibration.get("bins", []) if row["pairs"]]
        if rows:
            axis.plot(
                [row["mean_confidence"] for row in rows],
                [row["share_right"] for row in rows],
                marker="o",
                label=f"{name} (ECE {calibration['ece']:.3f}, {calibration['pairs']} pairs)",
            )
    axis.set_xlabel("confidence max(σ(r_a − r_b), 1 − σ(r_a − r_b))")
    axis.set_ylabel("share of pairs ordered as the reference orders them")
    axis.set_xlim(0.5, 1.0)
    axis.set_ylim(0.0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)


def best_of_n_prompts(args: RewardArguments, eval_pairs: datasets.Dataset) -> list[str]:
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.best_of_n_prompts, split=args.toy_eval_split)
    return list(dict.fromkeys(eval_pairs["prompt"]))[: args.best_of_n_prompts]


def run_best_of_n(args, model_args, policy, reward_model, tokenizer, eval_pairs, output_dir: Path, seed: int):
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


# --- the stage ----------------------------------------------------------------------------------------


def reward_metrics(
    args: RewardArguments,
    model_args: RewardModelArguments,
    training_args: RewardTrainingConfig,
    trainer: RewardTrainer,
    judged: dict[str, Any],
    data: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json: held-out pair accuracy (before and after), calibration, Best-of-N beside the sharpening
    frontier, the sycophancy probe in the biased-labeller world, and what the data and training were."""
    toy = args.dataset == "toy"
    heldout, before, bon = judged["heldout"], judged["before"], judged["best_of_n"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "mode": "lora" if model_args.use_peft else "full",
        "heldout_accuracy": heldout["accuracy"],
        "heldout_mean_margin": heldout["mean_margin"],
        "heldout_loss": heldout["loss"],
        "heldout_pairs": heldout["pairs"],
        "heldout_accuracy_before": before["accuracy"],
        "heldout_split": args.toy_eval_split if toy else "held out",
        "validation_accuracy": judged["validation"],
        "heldout_calibration": heldout["calibration"],
        "train_loss": training["train_loss"],
        "first_logged_loss": round(losses[0], 4) if losses else None,
        "last_logged_loss": round(losses[-1], 4) if losses else None,
        "steps": training["steps"],
        **parameter_counts(trainer.model),
        "max_length": training_args.max_length,
        "margins": args.margin_column,
        "append_eos": args.append_eos,
        "reward_pooling": args.reward_pooling,
        "center_rewards_coefficient": training_args.center_rewards_coefficient,
        "train_truncation": data["truncation"]["train"],
        "eval_truncation": data["truncation"]["eval"],
        "data": data["report"],
        "train_seconds": training["train_seconds"],
        "seconds_per_step": training["seconds_per_step"],
        "resumed_from": training["resumed_from"],
    }
    if "accuracy_by_kind" in heldout:
        metrics["heldout_accuracy_by_kind"] = heldout["accuracy_by_kind"]
    if judged.get("sycophancy_probe") is not None:
        metrics["sycophancy_probe"] = judged["sycophancy_probe"]
    if bon:
        keep = (
            "gold",
            "reward",
            "kl_nats",
            "kl_bound_nats",
            "frontier_gold_at_kl",
            "margin_over_frontier",
            "beats_sharpening",
            *recipe_traits(args),
        )
        metrics["best_of_n"] = {row["n"]: {key: row[key] for key in keep if key in row} for row in bon["table"]}
        if bon.get("sharpening"):
            metrics["sharpening"] = bon["sharpening"]
        for key in (
            "policy_mean_gold",
            "rm_gold_pearson",
            "rm_gold_spearman",
            "rm_gold_spearman_within_prompt",
            "calibration_on_samples",
        ):
            if bon.get(key) is not None:
                metrics[key] = bon[key]
    if toy:
        metrics["targets"] = targets(heldout["accuracy"], bon)
        metrics["toy_world"] = ToyWorld.from_recipe(args).describe()
    return metrics


def prepare_pairs(args, model_args, training_args, tokenizer, model) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(train set, held-out set, the policy if one was loaded, what preparing did): the pairs, comparisons of
    the SFT model's own samples where the recipe asks for them, encoded and cut to max_length."""
    train_pairs, eval_pairs, data_stats = load_pairs(args, training_args.seed)
    quiet_small_data_bars(train_pairs, eval_pairs)
    policy, policy_pairs = None, {}
    if args.toy_policy_prompts:  # after the reward head is initialised, so that it does not depend on this
        policy = load_policy(model_args, tokenizer, training_args.trust_remote_code).to(training_args.device)
        extra, policy_pairs = own_sample_comparisons(
            policy, tokenizer, args, args.best_of_n_strategy, args.sample_max_new_tokens, training_args.seed + 1
        )
        if extra is not None:
            train_pairs = datasets.concatenate_datasets([train_pairs, extra]).shuffle(seed=training_args.seed)
    train_set, eval_set, truncation = encode_splits(args, train_pairs, eval_pairs, tokenizer, training_args.max_length)
    report = {**data_stats, **({"policy_comparisons": policy_pairs} if policy_pairs else {})}
    return train_set, eval_set, policy, {"report": report, "truncation": truncation, "eval_pairs": eval_pairs}


def judge_after_training(
    args, model_args, training_args, reward_model, policy, tokenizer, eval_set, eval_pairs, output_dir: Path
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


def main(argv: Sequence[str] | None = None) -> None:
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "reward", __doc__)
    if args.extra_layers and model_args.use_peft:
        raise RecipeError(
            f"{recipe.path}: key 'extra_layers' needs full fine-tuning (use_peft: false): LoRA would leave the new "
            "blocks frozen as the identity."
        )
    opened = open_trainer_run(recipe, "reward", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Model and data
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    trust, eos, pooling = training_args.trust_remote_code, args.append_eos, args.reward_pooling
    model = build_model(model_args, tokenizer, trust, eos, args.extra_layers, training_args.seed, pooling)
    training_args.max_length = resolve_max_length(training_args.max_length, model, recipe.path)
    train_set, eval_set, policy, data = prepare_pairs(args, model_args, training_args, tokenizer, model)
    batch = training_args.per_device_eval_batch_size
    scores = [score_token_ids(model, list(eval_set[key]), batch) for key in ("chosen_ids", "rejected_ids")]
    before = pairwise_metrics(*scores)

    # Training
    interrupt = GracefulInterrupt()
    trainer = build_trainer(model, model_args, training_args, train_set, eval_set, tokenizer, interrupt)
    log_training_plan(trainer, model_args, training_args.max_length, before)
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    merge = partial(
        merge_reward_model,
        model_args,
        tokenizer,
        output_dir=output_dir,
        trust_remote_code=trust,
        append_eos=eos,
        pooling=pooling,
    )
    reward_model = save_fine_tuned(
        trainer, model_args.use_peft, tokenizer, output_dir, merge if args.merge_adapters else None
    )
    if reward_model is None:  # not the main process
        return

    # Judging, curves, metrics
    judged = judge_after_training(
        args, model_args, training_args, reward_model, policy, tokenizer, eval_set, data["eval_pairs"], output_dir
    )
    plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png", f"reward model: {recipe.path}")
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    training = training_figures(trainer, train_result, train_seconds, checkpoint)
    metrics = reward_metrics(args, model_args, training_args, trainer, {**judged, "before": before}, data, training)
    run.finish(resolved_recipe("reward", args, model_args, training_args), metrics)
    heldout = judged["heldout"]
    logger.info(
        "held-out accuracy %.3f (before training %.3f), mean margin %.3f, calibration ECE %s; outputs in %s",
        heldout["accuracy"],
        before["accuracy"],
        heldout["mean_margin"],
        heldout["calibration"]["ece"],
        output_dir,
    )


def build_trainer(model, model_args, training_args, train_set, eval_set, tokenizer, interrupt) -> RewardTrainer:
    if training_args.train_sampling_strategy == "group_by_length":
        # Trainer builds the sampler after removing the columns the model does not take, `length` among them;
        # keep them (TRL's collator reads only chosen_ids, rejected_ids and margin).
        training_args.remove_unused_columns = False
    return RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[interrupt, MemoryCheck(training_args.max_length, 2)],
    )


def log_training_plan(trainer: RewardTrainer, model_args, max_length: int, before: dict[str, float]) -> None:
    counts = parameter_counts(trainer.model)
    logger.info(
        "%s reward model: %d of %d parameters trainable; %d train / %d held-out pairs; max_length %d; "
        "held-out accuracy before training %.3f",
        "LoRA" if model_args.use_peft else "full",
        counts["trainable_parameters"],
        counts["parameters"],
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
        max_length,
        before["accuracy"],
    )


if __name__ == "__main__":
    run_cli(main)
