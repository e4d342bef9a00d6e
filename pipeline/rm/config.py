"""The reward stage's recipe: what to train on and report (RewardArguments), the model and LoRA
(RewardModelArguments, TRL's ModelConfig) and the optimisation (RewardTrainingConfig, TRL's RewardConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from trl import RewardConfig

from pipeline.data.mixture import mixture_field, take_mixture
from pipeline.data.toy_comparisons import check_policy_comparison_keys
from pipeline.data.toy_world import ToyWorldKeys
from pipeline.decoding import DEFAULT_STRATEGIES
from pipeline.finetuning import FineTuningDefaults, ModelArguments
from pipeline.policy_eval import check_sharpening_temperatures, sharpening_temperatures_field
from pipeline.recipes import require_non_negative, require_positive
from pipeline.reward_model import POOLINGS

TOY_MARGIN = "gold_gap"  # margin_column value that derives margins from the toy world's gold reward


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
class RewardTrainingConfig(FineTuningDefaults, RewardConfig):
    """TRL's RewardConfig with CPU-friendly defaults: fp32, no gradient checkpointing, cosine schedule, no
    hub, no wandb. `max_length` null means the model's context length; longer pairs are fitted into it by
    cutting their prompts from the left (TRL itself would drop them)."""

    output_dir: str = field(default="runs/reward", metadata={"help": "where the stage writes its outputs"})
    learning_rate: float = 1e-4
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 64
    max_length: int | None = None


RECIPE_TYPES = (RewardArguments, RewardModelArguments, RewardTrainingConfig)
