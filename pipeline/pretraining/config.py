"""The pretraining stage's recipe: what to train on and what to build (PretrainArguments), and TrainingArguments
with pretraining defaults (PretrainConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from transformers import TrainingArguments

from pipeline.data.toy_world import ToyWorldKeys
from pipeline.decoding import DEFAULT_STRATEGIES
from pipeline.recipes import require_positive


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
