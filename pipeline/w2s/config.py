"""The weak_to_strong stage's recipe: the models, the task and the protocol (W2SArguments), TrainingArguments with
the reference code's settings (W2SConfig), and TRL's ModelConfig applied to every model (W2SModelConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from transformers import TrainingArguments
from trl import ModelConfig

from pipeline.data.toy_world import ToyWorldKeys
from pipeline.w2s.losses import LOSSES


@dataclass
class W2SArguments(ToyWorldKeys):
    """The models, the task and the weak-to-strong protocol (optimisation settings are TrainingArguments)."""

    path_fields: ClassVar[dict[str, str]] = {
        "weak_model": "model",
        "strong_model": "model",
        "middle_model": "model",
        "dataset": "dataset",
        "test_dataset": "dataset",
        "data_dir": "dataset",
    }

    weak_model: str | None = field(
        default=None, metadata={"help": "weak supervisor: a stage output dir or hub name (e.g. gpt2)"}
    )
    strong_model: str | None = field(
        default=None, metadata={"help": "strong student: a stage output dir or hub name (e.g. gpt2-large)"}
    )
    middle_model: str | None = field(
        default=None, metadata={"help": "optional middle model for bootstrapping weak -> middle -> strong"}
    )
    dataset: str = field(
        default="toy", metadata={"help": "toy, sciq, boolq, sst2, cosmos_qa, or a .jsonl file with text/label"}
    )
    test_dataset: str | None = field(
        default=None, metadata={"help": "test .jsonl for a dataset file (default: hold out 20%)"}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "folder with <task>/{train,test}.jsonl.gz (default ../shared/data)"}
    )
    task_seed: int = field(default=0, metadata={"help": "seed of example formatting and subsets (fixed across seeds)"})
    train_size: int | None = field(
        default=2000, metadata={"help": "examples in the training pool (split into halves A and B)"}
    )
    test_size: int | None = field(default=1000, metadata={"help": "test examples"})
    max_length: int = field(
        default=1024, metadata={"help": "drop examples longer than this many tokens (as the reference)"}
    )

    pgr_min_gap: float = field(
        default=0.0, metadata={"help": "PGR is n/a where ceiling - weak accuracy is below this (0: only where <= 0)"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "one full weak/ceiling/students run per seed"}
    )
    losses: list[str] = field(
        default_factory=lambda: ["xent", "logconf"], metadata={"help": "student losses: xent, logconf"}
    )
    aux_alpha: float = field(default=0.75, metadata={"help": "logconf: final weight of the hardened own predictions"})
    aux_warmup_fraction: float = field(
        default=0.2, metadata={"help": "logconf: share of training over which alpha ramps up"}
    )
    ramp: Literal["linear", "jump"] = field(
        default="linear", metadata={"help": "logconf alpha ramp (jump = reference code)"}
    )
    weak_learning_rate: float = field(default=5e-5, metadata={"help": "learning rate of the weak model"})
    strong_learning_rate: float = field(
        default=1e-5, metadata={"help": "learning rate of the strong ceiling and students"}
    )
    middle_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the middle model (default: strong's)"}
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the new classification head (default: the model's own rate)"}
    )
    linear_probe: bool = field(
        default=False, metadata={"help": "train the head only, bodies frozen (the reference's linear_probe)"}
    )
    early_stopping: bool = field(
        default=False, metadata={"help": "students early-stop on accuracy against held-out weak labels"}
    )
    early_stopping_labels: Literal["weak", "gold"] = field(
        default="weak",
        metadata={
            "help": "what the students early-stop against on the held-out share: the weak labels, or their ground "
            "truth (gold: an oracle upper bound, not a method; the results say so)"
        },
    )
    early_stopping_fraction: float = field(
        default=0.1, metadata={"help": "share of half B held out as weak-label validation"}
    )
    early_stopping_patience: int = field(
        default=2, metadata={"help": "evaluations without improvement before stopping"}
    )
    train_with_dropout: bool = field(
        default=False, metadata={"help": "keep the models' dropout (the reference turns it off)"}
    )
    zero_shot: bool = field(
        default=True,
        metadata={
            "help": "also measure the strong LM untrained: its per-token log p(answer | prompt), thresholded on the "
            "weak labels (tasks of 'prompt\\nBot: answer' texts, as the toy world's; skipped for others)"
        },
    )
    save_model: Literal["w2s", "ceiling", "weak", "none"] = field(
        default="w2s",
        metadata={"help": "which first-seed model to save in output_dir (w2s: the student of the last loss)"},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "sub-run cache, shareable across runs (default <output_dir>_cache)"}
    )
    reuse_cache: bool = field(
        default=True, metadata={"help": "reuse cached sub-runs (false: retrain all, overwrite the cache)"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow models' own code from the hub"})

    def __post_init__(self) -> None:
        for key in ("weak_model", "strong_model"):
            if not getattr(self, key):
                raise ValueError(
                    f"key '{key}' is required (a model directory such as runs/toy/pretrain, or a hub name)"
                )
        unknown = [loss for loss in self.losses if loss not in LOSSES]
        if not self.losses or unknown:
            raise ValueError(f"key 'losses': choose from {', '.join(LOSSES)}, got {self.losses}")
        if len(set(self.losses)) != len(self.losses) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError("keys 'losses' and 'seeds' must be non-empty lists without repeats")
        if not 0.0 <= self.aux_alpha <= 1.0:
            raise ValueError(f"key 'aux_alpha' must be in [0, 1], got {self.aux_alpha}")
        if not 0.0 <= self.aux_warmup_fraction <= 1.0:
            raise ValueError(f"key 'aux_warmup_fraction' must be in [0, 1], got {self.aux_warmup_fraction}")
        if not 0.0 <= self.pgr_min_gap < 1.0:
            raise ValueError(f"key 'pgr_min_gap' must be in [0, 1), got {self.pgr_min_gap}")
        if not 0.0 < self.early_stopping_fraction < 0.5:
            raise ValueError(f"key 'early_stopping_fraction' must be in (0, 0.5), got {self.early_stopping_fraction}")
        sizes = ("train_size", "test_size", "max_length", "early_stopping_patience")
        rates = ("weak_learning_rate", "strong_learning_rate", "middle_learning_rate", "head_learning_rate")
        for key in sizes + rates:
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"key '{key}' must be > 0, got {value}")
        super().__post_init__()


@dataclass
class W2SConfig(TrainingArguments):
    """TrainingArguments shared by every classifier of the stage, with the reference code's settings:
    batch 32, 2 epochs, no weight decay, cosine schedule without warm-up. The learning rates are per role
    (weak_learning_rate, strong_learning_rate), so `learning_rate` itself is not a recipe key here."""

    output_dir: str = field(default="runs/w2s", metadata={"help": "where the stage writes its outputs"})
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    logging_steps: float = 25
    eval_steps: float = 25
    save_strategy: str = "no"
    report_to: str | list[str] = "none"
    disable_tqdm: bool = False  # a bar per sub-run (each is logged by name as it starts)


@dataclass
class W2SModelConfig(ModelConfig):
    """TRL's ModelConfig (dtype, attention, LoRA, 4-bit) applied to every model of the stage; the models
    themselves are weak_model / strong_model / middle_model."""

    lora_task_type: str = "SEQ_CLS"

    def __post_init__(self) -> None:
        if self.model_name_or_path is not None:
            raise ValueError("key 'model_name_or_path' is not used by weak_to_strong: set weak_model and strong_model")
        super().__post_init__()


RECIPE_TYPES = (W2SArguments, W2SConfig, W2SModelConfig)
