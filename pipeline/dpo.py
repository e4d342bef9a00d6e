"""Direct Preference Optimization (DPO, and its relatives IPO, hinge, robust, ...) from the SFT model.

    python -m pipeline.dpo --config recipes/toy/dpo.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.dpo --config recipes/gpt2/dpo.yaml

DPO trains the policy directly on preference pairs, with no reward model and no sampling: the loss
−log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]) raises the chosen
response's log-probability ratio to the reference above the rejected one's. β·(log π − log π_ref) is the
"implicit reward"; its accuracy and margin on held-out pairs say how well the preferences were learnt.

The story: parse the recipe -> load preference pairs (the toy world's, a JSON Lines file, HH transcripts
or a hub data set; pipeline.data.preferences checks and deduplicates them) and hold some out -> load the
tokenizer, shorten over-long prompts to their last `max_prompt_length` tokens and count the pairs TRL will
truncate to `max_length` or drop -> load the policy = the SFT model (full, LoRA, or QLoRA in 4-bit) and
the reference = the SFT model again: with LoRA/QLoRA there is no second copy (TRL disables the adapters to
get the SFT model back), without LoRA a frozen copy loaded from the same saved path -> held-out implicit
rewards and log-probabilities before -> train with TRL's DPOTrainer (`loss_type`: one loss, or several
with `loss_weights`) -> the same held-out numbers after -> save (LoRA: the adapter, merged into the full
model by default) -> the policy against the SFT model on held-out prompts (pipeline.policy_eval: gold
reward of greedy and sampled responses, KL to SFT by k1/k2/k3, win rates by gold reward and by a reward
model) -> plots of margins and log-probabilities over the steps -> metrics and manifest.

What the output directory holds is what the SFT stage writes: the model (safetensors) + tokenizer, and
for LoRA/QLoRA the adapter in `adapter/` (merged into the model at the top unless `merge_adapters: false`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import datasets
import matplotlib.pyplot as plt
from transformers import PreTrainedModel
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import get_peft_config

from pipeline.contract import write_json
from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.preferences import load_preferences
from pipeline.data.toy_comparisons import check_policy_comparison_keys, own_sample_comparisons
from pipeline.data.toy_world import ToyWorld, ToyWorldKeys, recipe_traits
from pipeline.errors import DataError, RecipeError, run_cli
from pipeline.finetuning import (
    ModelArguments,
    build_policy,
    full_precision,
    keep_adapters_in_fp32,
    merge_into_base,
    mode_name,
    save_fine_tuned,
)
from pipeline.models import fit_max_length, load_model, load_tokenizer, parameter_counts
from pipeline.plots import plot_loss_curves, save_figure  # also selects matplotlib's file-only backend
from pipeline.policy_eval import (
    check_sharpening_temperatures,
    evaluate_policy,
    judged_metrics,
    reward_model_scorer,
    sharpening_temperatures_field,
    toy_gold_scorer,
    toy_skill,
)
from pipeline.recipes import parse_recipe, require_non_negative, require_positive, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.training import GracefulInterrupt, open_trainer_run, quiet_small_data_bars, training_figures

logger = logging.getLogger("pipeline.dpo")

# The losses TRL 1.16's DPOTrainer implements (checked here so that a typo is a recipe error, not a crash
# after the model is loaded). sigmoid = DPO; ipo = IPO (β is its τ); hinge = SLiC; robust = rDPO (uses
# label_smoothing); exo_pair = EXO (needs label_smoothing > 0); sft = the NLL of the chosen response, to mix in.
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
#: The losses of TRL's DPOTrainer that read `label_smoothing` (checked against TRL 1.16's source).
SMOOTHED_LOSS_TYPES = ("robust", "exo_pair", "aot", "aot_unpaired")


@dataclass
class DPOArguments(ToyWorldKeys):
    """What to train on and how to evaluate (optimisation and the loss: DPOTrainingConfig; model: ModelConfig)."""

    path_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset",
        "eval_dataset": "dataset",
        "reward_model_path": "model",
    }

    dataset: str = field(
        default="toy",
        metadata={
            "help": "'toy' (the toy world's pairs), a .jsonl(.gz) file (prompt/chosen/rejected or HH transcripts), "
            "or a hub data set"
        },
    )
    datasets: list[dict[str, Any]] = mixture_field()
    dataset_split: str = field(default="train", metadata={"help": "hub data set split to train on"})
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "held-out pairs from another file or hub data set (default: hold out eval_fraction of dataset)"
        },
    )
    eval_split: str = field(default="test", metadata={"help": "hub split of eval_dataset"})
    eval_fraction: float = field(
        default=0.05, metadata={"help": "share of the pairs held out when there is no eval_dataset"}
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "train on at most this many pairs"})
    max_eval_pairs: int | None = field(default=512, metadata={"help": "evaluate on at most this many held-out pairs"})
    toy_pairs: int = field(
        default=2000, metadata={"help": "toy world: training pairs to generate (before deduplication)"}
    )
    toy_eval_pairs: int = field(
        default=256, metadata={"help": "toy world: held-out pairs (eval split: unseen additions)"}
    )
    toy_policy_prompts: int = field(
        default=0,
        metadata={
            "help": "toy world: also train on comparisons of the SFT model's own samples for this many train prompts, "
            "labelled by the gold reward (0: off); with toy_pairs: 0 only on those"
        },
    )
    toy_policy_samples: int = field(
        default=4, metadata={"help": "toy world: samples per prompt for toy_policy_prompts"}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "prompts longer than this many tokens keep their last ones (the latest turns); null: no limit"
        },
    )
    merge_adapters: bool = field(
        default=True, metadata={"help": "LoRA/QLoRA: also write the merged full model into output_dir"}
    )

    reward_model_path: str | None = field(
        default=None, metadata={"help": "a reward model (output of the reward stage) to compute win rates with"}
    )
    num_eval_prompts: int = field(
        default=128, metadata={"help": "held-out prompts on which the policy is compared with SFT"}
    )
    eval_temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of the comparison (and of its KL)"}
    )
    sample_max_new_tokens: int = field(default=48, metadata={"help": "length limit of generated responses"})
    generation_batch_size: int = field(default=64, metadata={"help": "prompts per generate call in the comparison"})
    sharpening_temperatures: list[float] = sharpening_temperatures_field()

    def __post_init__(self) -> None:
        take_mixture(self)
        require_positive(self, "toy_eval_pairs", "num_eval_prompts", "sample_max_new_tokens", "generation_batch_size")
        require_non_negative(self, "toy_pairs", "toy_policy_prompts")
        if self.dataset == "toy" and self.toy_pairs + self.toy_policy_prompts == 0:
            raise ValueError("keys 'toy_pairs' and 'toy_policy_prompts' are both 0: no pairs to train on")
        check_policy_comparison_keys(self.toy_policy_prompts, self.toy_policy_samples, self.dataset)
        check_sharpening_temperatures(self.sharpening_temperatures)
        require_positive(self, "max_train_pairs", "max_eval_pairs", "max_prompt_length", allow_none=True)
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"key 'eval_fraction' must be in (0, 1), got {self.eval_fraction}")
        if self.eval_temperature <= 0:
            raise ValueError(f"key 'eval_temperature' must be > 0, got {self.eval_temperature}")
        super().__post_init__()


@dataclass
class DPOModelArguments(ModelArguments):
    """TRL's ModelConfig: the SFT model to start from (model_name_or_path), dtype, use_peft and lora_*,
    load_in_4bit for QLoRA; checked before anything is loaded."""

    model_example: ClassVar[str] = "the SFT model, e.g. runs/toy/sft"


@dataclass
class DPOTrainingConfig(DPOConfig):
    """TRL's DPOConfig (beta, loss_type, loss_weights, label_smoothing, ld_alpha, max_length,
    precompute_ref_log_probs, ...) with CPU-friendly defaults: fp32, no gradient checkpointing, cosine
    schedule, no hub, no wandb.

    ld_alpha (LD-DPO): weight of the tokens of the longer response beyond the shorter one's length (0 leaves
    them out). TRL's logged and held-out log-probabilities (logps/chosen, ...) are then the weighted ones too.
    """

    output_dir: str = field(default="runs/dpo", metadata={"help": "where the stage writes its outputs"})
    bf16: bool | None = False
    gradient_checkpointing: bool = False
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 64
    max_length: int | None = 512
    logging_steps: float = 10
    eval_strategy: str = "steps"
    eval_steps: float = 100
    save_strategy: str = "steps"
    save_steps: float = 100
    save_total_limit: int = 2
    report_to: str | list[str] = "none"

    def __post_init__(self) -> None:
        loss_types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        unknown = [name for name in loss_types if name not in LOSS_TYPES]
        if unknown:
            raise ValueError(f"key 'loss_type': unknown loss '{unknown[0]}'; choose from {', '.join(LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(loss_types):
            raise ValueError(
                f"key 'loss_weights' needs one weight per loss_type: {len(self.loss_weights)} for {loss_types}"
            )
        if self.beta <= 0:
            raise ValueError(f"key 'beta' must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"key 'label_smoothing' must be in [0, 0.5), got {self.label_smoothing}")
        if "exo_pair" in loss_types and self.label_smoothing == 0.0:
            raise ValueError("key 'label_smoothing' must be > 0 for loss_type exo_pair (the EXO paper uses 1e-3)")
        if self.label_smoothing > 0 and not set(loss_types) & set(SMOOTHED_LOSS_TYPES):
            raise ValueError(
                f"key 'label_smoothing' ({self.label_smoothing}) has no effect on loss_type {loss_types}: in TRL "
                f"{version('trl')} only {', '.join(SMOOTHED_LOSS_TYPES)} read it (the sigmoid loss no longer does, so "
                "it is not conservative DPO). For labels you believe flipped at a known rate use loss_type robust."
            )
        require_positive(self, "max_length", allow_none=True)
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"key 'ld_alpha' must be in [0, 1] or null, got {self.ld_alpha}")
        super().__post_init__()


RECIPE_TYPES = (DPOArguments, DPOModelArguments, DPOTrainingConfig)


# --- data ---------------------------------------------------------------------------------------------------


def add_own_sample_comparisons(
    train: datasets.Dataset | None,
    args: DPOArguments,
    model_args: DPOModelArguments,
    tokenizer,
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
    dataset: datasets.Dataset, tokenizer, max_prompt_length: int | None, name: str
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


def count_long_pairs(dataset: datasets.Dataset, tokenizer, max_length: int | None, name: str) -> dict[str, int]:
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


# --- models -------------------------------------------------------------------------------------------------


def load_reference(
    model_args: DPOModelArguments, tokenizer, training_args: DPOTrainingConfig
) -> PreTrainedModel | None:
    """The frozen SFT model for full fine-tuning, loaded from its saved path like the policy.

    None with LoRA/QLoRA (TRL takes the reference from the policy with its adapters disabled: no second copy)
    and with precompute_ref_log_probs (TRL computes the reference log-probs with the policy before training).
    Loaded here rather than by TRL because TRL would load it without the pad token the policy's embeddings
    were resized for, and fails on an in-memory model without `_name_or_path`.
    """
    if model_args.use_peft or training_args.precompute_ref_log_probs:
        return None
    reference = load_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)
    reference.requires_grad_(False)
    return reference.eval()


def build_trainer(
    model_args: DPOModelArguments,
    training_args: DPOTrainingConfig,
    train_set: datasets.Dataset,
    held_out: datasets.Dataset,
    tokenizer,
    callbacks: Sequence = (),
) -> DPOTrainer:
    """TRL's DPOTrainer on the SFT model; with LoRA/QLoRA, TRL wraps the policy in the adapters itself."""
    trainer = DPOTrainer(
        model=build_policy(model_args, tokenizer, training_args),
        ref_model=load_reference(model_args, tokenizer, training_args),
        args=training_args,
        train_dataset=train_set,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
    )
    if trainer.args.device.type == "cpu":
        keep_adapters_in_fp32(trainer.model)
    return trainer


def check_combination(model_args: DPOModelArguments, training_args: DPOTrainingConfig, recipe_path: Path) -> None:
    if training_args.sync_ref_model and model_args.use_peft:
        raise RecipeError(
            f"{recipe_path}: sync_ref_model (TR-DPO) needs a separate reference model: it does not work with use_peft."
        )
    if training_args.sync_ref_model and training_args.precompute_ref_log_probs:
        raise RecipeError(
            f"{recipe_path}: sync_ref_model and precompute_ref_log_probs exclude each other (the reference changes)."
        )


def policy_and_reference(
    trainer: DPOTrainer, model_args: DPOModelArguments, merged: PreTrainedModel | None, tokenizer
):
    """What to compare after training: the saved policy, and the SFT model (None = adapters disabled)."""
    if merged is not None and (model_args.load_in_4bit or model_args.load_in_8bit):
        # QLoRA: the 4-bit base is only a training device; compare the saved full-precision model with the SFT model.
        sft = load_model(full_precision(model_args), tokenizer)
        return merged, sft.to(merged.device)
    if model_args.use_peft:
        return trainer.model, None
    if trainer.ref_model is not None:
        return trainer.model, trainer.ref_model
    return trainer.model, load_model(model_args, tokenizer).to(trainer.model.device)


# --- evaluation ---------------------------------------------------------------------------------------------


def evaluation_prompts(args: DPOArguments, held_out: datasets.Dataset) -> list[str]:
    """Held-out toy prompts (gold reward), else the distinct prompts of the held-out pairs."""
    if args.dataset == "toy":
        return ToyWorld.from_recipe(args).prompts(args.num_eval_prompts, split=args.toy_eval_split)
    return list(dict.fromkeys(held_out["prompt"]))[: args.num_eval_prompts]


def held_out_numbers(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """TRL's held-out DPO metrics under short names (means over eval batches: exact when one batch holds them all)."""
    names = {
        "implicit_reward_accuracy": "rewards/accuracies",
        "implicit_reward_margin": "rewards/margins",
        "implicit_reward_chosen": "rewards/chosen",
        "implicit_reward_rejected": "rewards/rejected",
        "logp_chosen": "logps/chosen",
        "logp_rejected": "logps/rejected",
        "loss": "loss",
    }
    numbers = {
        short: round(metrics[f"{prefix}_{key}"], 4) for short, key in names.items() if f"{prefix}_{key}" in metrics
    }
    # TRL counts a tie as wrong. Before training the policy is its reference: every implicit reward is exactly 0 and
    # every pair a tie, which is no preference, counted half right as the reward stage counts ties (not 0).
    if metrics.get(f"{prefix}_rewards/chosen") == 0.0 and metrics.get(f"{prefix}_rewards/rejected") == 0.0:
        numbers["implicit_reward_accuracy"] = 0.5
    return numbers


def final_evaluation(trainer: DPOTrainer) -> dict[str, float]:
    """The held-out metrics of the trained policy: from the log when training ended with an evaluation."""
    last = trainer.state.log_history[-2] if len(trainer.state.log_history) > 1 else {}
    if last.get("step") == trainer.state.global_step and "eval_rewards/accuracies" in last:
        return last
    return trainer.evaluate()


def plot_dpo_curves(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Implicit reward margins/accuracy and chosen/rejected log-probabilities over the steps (train and held-out)."""
    figure, (rewards_axis, logps_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for prefix, style in (("", "-"), ("eval_", "o--")):
        for key, axis, label, colour in (
            ("rewards/margins", rewards_axis, "margin", "C0"),
            ("rewards/accuracies", rewards_axis, "accuracy", "C1"),
            ("logps/chosen", logps_axis, "chosen", "C2"),
            ("logps/rejected", logps_axis, "rejected", "C3"),
        ):
            points = [
                (entry["step"], entry[prefix + key])
                for entry in log_history
                if prefix + key in entry and "step" in entry
            ]
            if points:
                axis.plot(
                    *zip(*points), style, color=colour, label=f"{label} ({'held-out' if prefix else 'train batches'})"
                )
    rewards_axis.set_title("implicit reward β·log(π/π_ref): chosen − rejected")
    rewards_axis.set_ylabel("margin (nats·β) / accuracy")
    logps_axis.set_title("log-probability of the responses (as in the loss)")
    logps_axis.set_ylabel("log π(y|x) (nats)")
    for axis in (rewards_axis, logps_axis):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, path, title)


# --- the stage ----------------------------------------------------------------------------------------------


def dpo_metrics(
    args: DPOArguments,
    model_args: DPOModelArguments,
    training_args: DPOTrainingConfig,
    trainer: DPOTrainer,
    held_out: dict[str, dict[str, float]],
    summary: dict[str, Any],
    data: dict[str, Any],
    training: dict[str, Any],
    merged: bool,
) -> dict[str, Any]:
    """metrics.json: the held-out pairs before/after (implicit reward, log-probabilities), the policy against
    the SFT model on held-out prompts (gold, KL, win rates, the verdict against sharpening), data and speed."""
    before, after = held_out["before"], held_out["after"]
    metrics: dict[str, Any] = {
        "mode": mode_name(model_args),
        "loss_type": list(training_args.loss_type),
        "loss_weights": training_args.loss_weights,
        "beta": training_args.beta,
        "reference": "policy with adapters disabled"
        if trainer.ref_model is None and model_args.use_peft
        else "frozen copy of the SFT model",
        "train_loss": training["train_loss"],
        "steps": training["steps"],
        # Held-out pairs, after training (the implicit reward is 0 before: the policy is the reference).
        **after,
        "held_out_before": before,
        "held_out_after": after,
        "chosen_logp_fell": bool(after.get("logp_chosen", 0.0) < before.get("logp_chosen", 0.0)),
        # Generation on held-out prompts: the SFT model ("before") against the DPO policy ("after").
        "gold_reward_before": {s: summary["reference"][s].get("gold_reward") for s in ("greedy", "sampled")},
        "gold_reward_after": {s: summary["policy"][s].get("gold_reward") for s in ("greedy", "sampled")},
        "kl_to_sft": {name: summary["kl"][name]["mean"] for name in summary["kl"]},
        "win_rate_vs_sft": summary["win_rate"],
        "policy_eval": summary,
        **parameter_counts(trainer.model),
        "data": data["report"],
        "train_pairs": len(trainer.train_dataset),
        "eval_pairs": len(trainer.eval_dataset),
        "shortened_prompts": data["shortened"],
        "truncated_train_pairs": data["lengths"]["train"]["truncated"],
        "dropped_train_pairs": data["lengths"]["train"]["dropped"],
        "truncated_eval_pairs": data["lengths"]["eval"]["truncated"],
        "longest_train_pair": data["lengths"]["train"]["longest"],
        "train_seconds": training["train_seconds"],
        "seconds_per_step": training["seconds_per_step"],
        "merged": merged,
        "resumed_from": training["resumed_from"],
    }
    if args.dataset == "toy":
        metrics["gold_reward_sampled"] = metrics["gold_reward_after"]["sampled"]
        metrics["gold_reward_greedy"] = metrics["gold_reward_after"]["greedy"]
        metrics["gold_reward_gain"] = {
            s: round(metrics["gold_reward_after"][s] - metrics["gold_reward_before"][s], 4)
            for s in ("greedy", "sampled")
        }
        metrics["gold_reward_by_skill"] = {
            when: {s: summary[model][s]["gold_reward_by_group"] for s in ("greedy", "sampled")}
            for when, model in (("before", "reference"), ("after", "policy"))
        }
        metrics["eval_split"] = args.toy_eval_split
    metrics.update(judged_metrics(summary))
    if args.dataset == "toy":
        metrics["toy_world"] = ToyWorld.from_recipe(args).describe()
    return metrics


def prepare_pairs(args, model_args, training_args, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset, dict]:
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


def main(argv: Sequence[str] | None = None) -> None:
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "dpo", __doc__)
    check_combination(model_args, training_args, recipe.path)
    training_args.max_length = fit_max_length(
        model_args.model_name_or_path,
        training_args.max_length,
        recipe.path,
        "max_length" in recipe.values,
        training_args.trust_remote_code,
    )
    opened = open_trainer_run(recipe, "dpo", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Data
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    train_set, held_out_pairs, data = prepare_pairs(args, model_args, training_args, tokenizer)

    # Training, with the held-out pairs measured before and after
    interrupt = GracefulInterrupt()
    callbacks = [interrupt, MemoryCheck(training_args.max_length, 2)]
    trainer = build_trainer(model_args, training_args, train_set, held_out_pairs, tokenizer, callbacks=callbacks)
    log_training_plan(trainer, model_args, training_args)
    before_raw = trainer.evaluate()
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    trainer.state.log_history.insert(0, {**before_raw, "step": 0})  # train() started a new history
    held_out = {
        "before": held_out_numbers(before_raw, "eval"),
        "after": held_out_numbers(final_evaluation(trainer), "eval"),
    }
    merge = merge_into_base(model_args, tokenizer, output_dir, training_args.trust_remote_code)
    final_model = save_fine_tuned(
        trainer, model_args.use_peft, tokenizer, output_dir, merge if args.merge_adapters else None
    )
    if final_model is None:  # not the main process
        return
    merged = final_model if model_args.use_peft and args.merge_adapters else None

    # The policy against the SFT model on held-out prompts
    comparison = compare_with_sft(args, model_args, trainer, merged, tokenizer, held_out_pairs)

    # Outputs
    write_json(output_dir / "samples.json", comparison.samples)
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    loss = "+".join(training_args.loss_type)
    plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png", f"DPO ({loss}): {recipe.path}")
    plot_dpo_curves(
        trainer.state.log_history,
        output_dir / "dpo_curves.png",
        f"DPO ({loss}, β={training_args.beta}): {recipe.path}",
    )
    training = training_figures(trainer, train_result, train_seconds, checkpoint)
    metrics = dpo_metrics(
        args, model_args, training_args, trainer, held_out, comparison.summary, data, training, merged is not None
    )
    run.finish(resolved_recipe("dpo", args, model_args, training_args), metrics)
    log_results(metrics, held_out, args.dataset == "toy", output_dir)


def compare_with_sft(args, model_args, trainer: DPOTrainer, merged, tokenizer, held_out_pairs: datasets.Dataset):
    """The trained policy and the SFT model sampled on held-out prompts (pipeline.policy_eval): gold (toy world),
    reward-model scores (with reward_model_path), KL, win rates and the sharpening frontier."""
    policy, sft_model = policy_and_reference(trainer, model_args, merged, tokenizer)
    toy = args.dataset == "toy"
    return evaluate_policy(
        policy,
        tokenizer,
        evaluation_prompts(args, held_out_pairs),
        reference=sft_model,
        gold=toy_gold_scorer if toy else None,
        scorer=reward_model_scorer(args.reward_model_path, device=policy.device) if args.reward_model_path else None,
        temperature=args.eval_temperature,
        max_new_tokens=args.sample_max_new_tokens,
        seed=trainer.args.seed,
        batch_size=args.generation_batch_size,
        group_of=toy_skill if toy else None,
        sharpening_temperatures=args.sharpening_temperatures,
        traits=recipe_traits(args),
    )


def log_training_plan(trainer: DPOTrainer, model_args: DPOModelArguments, training_args: DPOTrainingConfig) -> None:
    counts = parameter_counts(trainer.model)
    logger.info(
        "DPO (%s, loss %s, beta %g): %d of %d parameters trainable; reference: %s; %d train / %d held-out pairs",
        mode_name(model_args),
        "+".join(training_args.loss_type),
        training_args.beta,
        counts["trainable_parameters"],
        counts["parameters"],
        "the policy with adapters disabled" if trainer.ref_model is None else "a frozen copy of the SFT model",
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
    )


def log_results(metrics: dict[str, Any], held_out: dict[str, dict[str, float]], toy: bool, output_dir: Path) -> None:
    before, after = held_out["before"], held_out["after"]
    logger.info(
        "held-out implicit reward accuracy %s, margin %s; chosen log-prob %s -> %s; KL to SFT (k3) %s nats; "
        "win rates %s; outputs in %s",
        after.get("implicit_reward_accuracy"),
        after.get("implicit_reward_margin"),
        before.get("logp_chosen"),
        after.get("logp_chosen"),
        metrics["kl_to_sft"]["k3"],
        metrics["win_rate_vs_sft"],
        output_dir,
    )
    if toy:
        logger.info(
            "gold reward sampled %s -> %s, greedy %s -> %s; %s",
            metrics["gold_reward_before"]["sampled"],
            metrics["gold_reward_after"]["sampled"],
            metrics["gold_reward_before"]["greedy"],
            metrics["gold_reward_after"]["greedy"],
            (metrics.get("judgement") or {}).get("reason", "no sharpening frontier measured"),
        )


if __name__ == "__main__":
    run_cli(main)
