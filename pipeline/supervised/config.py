"""The SFT stage's recipe: what to fine-tune on and what to report (SFTArguments), and TRL's SFTConfig with
CPU-friendly defaults (SFTTrainingConfig). Model, LoRA and 4-bit keys: pipeline.finetuning.ModelArguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from trl import SFTConfig

from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.toy_world import ToyWorldKeys
from pipeline.finetuning import FineTuningDefaults, ModelArguments
from pipeline.recipes import require_positive


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
class SFTTrainingConfig(FineTuningDefaults, SFTConfig):
    """TRL's SFTConfig with CPU-friendly defaults: fp32 (bf16 is slow on most CPUs), no gradient
    checkpointing, a LoRA-sized learning rate, cosine schedule, no hub, no wandb."""

    output_dir: str = field(default="runs/sft", metadata={"help": "where the stage writes its outputs"})
    learning_rate: float = 2e-4
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    max_length: int | None = 512
    include_num_input_tokens_seen: str | bool = "non_padding"
    ddp_find_unused_parameters: bool | None = False  # every trainable parameter is used in each step


RECIPE_TYPES = (SFTArguments, ModelArguments, SFTTrainingConfig)
