"""The DPO recipe: what to train on and how to evaluate, the SFT model to start from, and TRL's DPOConfig with
the losses its DPOTrainer implements, each key checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from trl import DPOConfig

from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.toy_comparisons import check_policy_comparison_keys
from pipeline.data.toy_world import ToyWorldKeys
from pipeline.errors import RecipeError
from pipeline.finetuning import FineTuningDefaults, ModelArguments
from pipeline.policy_eval import check_sharpening_temperatures, sharpening_temperatures_field
from pipeline.recipes import require_non_negative, require_positive

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
class DPOTrainingConfig(FineTuningDefaults, DPOConfig):
    """TRL's DPOConfig (beta, loss_type, loss_weights, label_smoothing, ld_alpha, max_length,
    precompute_ref_log_probs, ...) with CPU-friendly defaults: fp32, no gradient checkpointing, cosine
    schedule, no hub, no wandb.

    ld_alpha (LD-DPO): weight of the tokens of the longer response beyond the shorter one's length (0 leaves
    them out). TRL's logged and held-out log-probabilities (logps/chosen, ...) are then the weighted ones too.
    """

    output_dir: str = field(default="runs/dpo", metadata={"help": "where the stage writes its outputs"})
    learning_rate: float = 5e-5
    warmup_steps: float = 0.1
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 64
    max_length: int | None = 512

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


def check_combination(model_args: DPOModelArguments, training_args: DPOTrainingConfig, recipe_path: Path) -> None:
    """Refuse the recipe keys that exclude each other (which one recipe type alone cannot see)."""
    if training_args.sync_ref_model and model_args.use_peft:
        raise RecipeError(
            f"{recipe_path}: sync_ref_model (TR-DPO) needs a separate reference model: it does not work with use_peft."
        )
    if training_args.sync_ref_model and training_args.precompute_ref_log_probs:
        raise RecipeError(
            f"{recipe_path}: sync_ref_model and precompute_ref_log_probs exclude each other (the reference changes)."
        )
