"""Weak-to-strong generalisation: can a strong model trained on a weak model's labels beat its supervisor?

    python -m pipeline.weak_to_strong --config recipes/toy/w2s.yaml
    python -m pipeline.weak_to_strong --config recipes/w2s/sst2_local.yaml --seeds "[0]"
    accelerate launch --config_file accelerate_config.yaml -m pipeline.weak_to_strong \\
        --config recipes/w2s/sciq_gpt2_to_gpt2-large.yaml

After Burns et al. (2023), "Weak-to-Strong Generalization" (reference code: openai/weak-to-strong).
The story, for every seed: load a binary task (pipeline.w2s.datasets) -> split its training pool into
disjoint halves A and B -> train the weak model (a 2-class head on a causal LM, pipeline.w2s.train) on
A's ground truth -> label B with its soft predictions (saved to soft_labels/seed<N>.jsonl) -> train the
strong model on B's weak labels, once per loss (xent; logconf = the auxiliary confidence loss,
pipeline.w2s.losses) -> train the strong ceiling on B's ground truth -> evaluate all on the test set.
Optionally the weak labels reach the strong model through a middle model (bootstrapping), and the
students trained on weak labels early-stop on a held-out share of them.

Then: PGR = (acc_w2s - acc_weak) / (acc_ceiling - acc_weak) per seed where the ceiling beats the weak
model (else n/a with the reason), median and spread over seeds, weak-label accuracy, student-supervisor
agreement where the supervisor is right and where it is wrong (pipeline.w2s.metrics) -> metrics.json
(per seed and aggregated), results.json (every sub-run), table.md, pgr.png, the first seed's student
(save_model) in safetensors with its tokenizer -> manifest.

Every sub-run (one classifier training) is cached under a hash of everything that determines it
(pipeline.w2s.cache) in `cache_dir` (default <output_dir>_cache, beside the output so that --force keeps
it): a sweep reuses weak labels and ceilings, a changed recipe retrains only the sub-runs it changes, and
a killed run restarts at the first unfinished sub-run.

For comparison, the paper's median PGRs for GPT-2-family pairs (Burns et al. 2023, not
re-measured here): sciq 0.31 logconf / 0.33 xent; amazon_polarity 0.52 / 0.58; cosmos_qa 0.37 / 0.35.

Where this differs from the reference code: the aux-loss coefficient ramps linearly by default (ramp:
jump is the reference's); the classifier reads the last real token through a dedicated pad token instead
of "last non-zero id"; sciq and cosmos_qa give each question a correct and a wrong example (balanced
pairs kept in the same half) instead of one random one; Trainer's AdamW with weight decay 0 and cosine
schedule stands in for the reference's hand loop with Adam + cosine annealing; the logconf threshold is a
statistic of each micro-batch (the reference's: of its batch of 32); `head_learning_rate` is our addition.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from transformers import AutoConfig, TrainingArguments, set_seed
from trl import ModelConfig

from pipeline.contract import open_stage_run, write_atomic, write_json
from pipeline.data.toy_world import ToyWorld, ToyWorldKeys
from pipeline.distributed import wait_for_everyone
from pipeline.errors import DataError, RecipeError, RunInterrupted, run_cli
from pipeline.models import load_tokenizer, parameter_counts
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.training import GracefulInterrupt
from pipeline.w2s.cache import ResultCache, config_key, model_fingerprint
from pipeline.w2s.datasets import (
    Example,
    TaskData,
    examples_fingerprint,
    halves,
    load_task,
    one_hot,
    save_soft_labels,
)
from pipeline.w2s.losses import LOSSES
from pipeline.w2s.metrics import accuracy, agreement, performance_gap_recovered, spread
from pipeline.w2s.plots import plot_w2s
from pipeline.w2s.train import (
    LossSettings,
    load_classifier,
    predict_probs,
    sub_run_arguments,
    token_lengths,
    train_classifier,
)

logger = logging.getLogger("pipeline.weak_to_strong")

STAGE = "weak_to_strong"


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
    early_stopping_fraction: float = field(
        default=0.1, metadata={"help": "share of half B held out as weak-label validation"}
    )
    early_stopping_patience: int = field(
        default=2, metadata={"help": "evaluations without improvement before stopping"}
    )
    train_with_dropout: bool = field(
        default=False, metadata={"help": "keep the models' dropout (the reference turns it off)"}
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


# --- data ---------------------------------------------------------------------------------------------


def model_max_length(name_or_path: str, trust_remote_code: bool) -> int | None:
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return getattr(config, "max_position_embeddings", None)


def keep_fitting(
    examples: list[Example], tokenizers: dict[str, Any], limits: dict[str, int]
) -> tuple[list[Example], int]:
    """Drop examples longer than any model's limit (the reference drops them too), whole groups at once."""
    too_long = set()
    for role, tokenizer in tokenizers.items():
        lengths = token_lengths(tokenizer, [example["text"] for example in examples])
        too_long |= {example["group"] for example, length in zip(examples, lengths) if length > limits[role]}
    kept = [example for example in examples if example["group"] not in too_long]
    return kept, len(examples) - len(kept)


def load_data(args: W2SArguments, models: dict[str, str]) -> tuple[TaskData, dict[str, Any]]:
    toy = ToyWorld.from_recipe(args) if args.dataset == "toy" else None
    task = load_task(
        args.dataset,
        args.train_size,
        args.test_size,
        args.data_dir,
        args.task_seed,
        args.test_dataset,
        toy,
        args.toy_eval_split,
    )
    tokenizers = {
        role: load_tokenizer(path, trust_remote_code=args.trust_remote_code) for role, path in models.items()
    }
    limits = {}
    for role, path in models.items():
        positions = model_max_length(path, args.trust_remote_code)
        limits[role] = min(args.max_length, positions) if positions else args.max_length
    task.train, dropped_train = keep_fitting(task.train, tokenizers, limits)
    task.test, dropped_test = keep_fitting(task.test, tokenizers, limits)
    if len(task.train) < 4 or not task.test:
        raise DataError(
            f"{args.dataset}: only {len(task.train)} training and {len(task.test)} test examples fit in "
            f"{min(limits.values())} tokens; raise max_length or use models with a longer context."
        )
    info = {
        "name": task.name,
        "source": task.source,
        "train_examples": len(task.train),
        "test_examples": len(task.test),
        "dropped_too_long": {"train": dropped_train, "test": dropped_test},
        "max_tokens": limits,
        "train_positive_share": round(float(np.mean([e["label"] for e in task.train])), 4),
        "test_positive_share": round(float(np.mean([e["label"] for e in task.test])), 4),
    }
    return task, info


# --- one sub-run: one classifier trained and evaluated, or read from the cache -------------------------


def default_cache_dir(output_dir: Path) -> Path:
    """Beside the output, not inside it: `--force` (which empties output_dir) keeps finished sub-runs. Entries
    are keyed by everything that determines them, so reusing them is safe; `reuse_cache: false` retrains."""
    return output_dir.with_name(output_dir.name + "_cache")


@dataclass
class SubRun:
    probs: dict[str, np.ndarray]
    info: dict[str, Any]
    key: str


class Experiment:
    """Runs and caches the sub-runs of one stage run; the per-seed protocol is `run_seed`."""

    def __init__(self, args: W2SArguments, training_args: W2SConfig, model_config: W2SModelConfig, output_dir: Path):
        self.args = args
        self.training_args = training_args
        self.model_config = model_config
        self.output_dir = output_dir
        cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir(output_dir)
        self.cache = ResultCache(cache_dir, enabled=args.reuse_cache, writer=training_args.should_save)
        self.interrupt = GracefulInterrupt()
        self.records: list[dict[str, Any]] = []
        self.saved_model: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        """Every training setting that changes a sub-run's result (part of its cache key)."""
        t, m = self.training_args, self.model_config
        return {
            "epochs": t.num_train_epochs,
            "max_steps": t.max_steps,
            "batch": t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size,
            "micro_batch": t.per_device_train_batch_size,
            "scheduler": str(t.lr_scheduler_type),
            "warmup": t.warmup_steps,
            "weight_decay": t.weight_decay,
            "adam": [t.adam_beta1, t.adam_beta2, t.adam_epsilon],
            "optim": str(t.optim),
            "max_grad_norm": t.max_grad_norm,
            "bf16": t.bf16,
            "fp16": t.fp16,
            "dropout": self.args.train_with_dropout,
            "max_length": self.args.max_length,
            "dtype": m.dtype,
            "head_learning_rate": self.args.head_learning_rate,
            "linear_probe": self.args.linear_probe,
            "peft": (
                m.use_peft
                and {
                    "r": m.lora_r,
                    "alpha": m.lora_alpha,
                    "dropout": m.lora_dropout,
                    "targets": m.lora_target_modules,
                    "4bit": m.load_in_4bit,
                    "8bit": m.load_in_8bit,
                }
            ),
        }

    def sub_run(
        self,
        role: str,
        model_path: str,
        learning_rate: float,
        seed: int,
        train: list[Example],
        targets: np.ndarray,
        predict: dict[str, list[Example]],
        loss: LossSettings = LossSettings(),
        early_stopping: bool = False,
        keep_model: bool = False,
    ) -> SubRun:
        targets = np.asarray(targets, dtype=np.float64)
        config = {
            "role": role,
            "model": model_fingerprint(model_path),
            "seed": seed,
            "learning_rate": learning_rate,
            "train": examples_fingerprint(train),
            "targets": _array_hash(targets),
            "predict": {name: examples_fingerprint(examples) for name, examples in predict.items()},
            "loss": asdict(loss) if loss.name != "xent" else "xent",
            "early_stopping": early_stopping
            and [self.args.early_stopping_fraction, self.args.early_stopping_patience, self.training_args.eval_steps],
            **self.settings(),
        }
        key = config_key(config)
        label = f"seed {seed} {role}{'' if role in ('weak', 'ceiling') else ' ' + loss.name}"
        cached = self.cache.get(key, need_model=keep_model)
        if cached is not None:
            logger.info("%s: from the cache (%s)", label, key)
            result = SubRun(
                {name: np.asarray(p) for name, p in cached["probs"].items()}, {**cached["info"], "cached": True}, key
            )
        else:
            result = self._train(
                key,
                config,
                label,
                model_path,
                learning_rate,
                seed,
                train,
                targets,
                predict,
                loss,
                early_stopping,
                keep_model,
            )
        self.records.append(
            {"key": key, "role": role, "seed": seed, "loss": loss.name, "model": model_path, **result.info}
        )
        return result

    def _train(
        self,
        key,
        config,
        label,
        model_path,
        learning_rate,
        seed,
        train,
        targets,
        predict,
        loss,
        early_stopping,
        keep_model,
    ) -> SubRun:
        set_seed(seed)
        model, tokenizer = load_classifier(
            model_path,
            self.model_config,
            self.args.train_with_dropout,
            self.args.trust_remote_code,
            self.args.linear_probe,
        )
        texts = [example["text"] for example in train]
        validation = None
        if early_stopping:
            # Hold out a share of the (weak-)labelled groups; the student never sees them in training.
            fit_index, held_index = _held_out(train, seed, self.args.early_stopping_fraction)
            validation = ([texts[i] for i in held_index], targets[held_index])
            texts, targets = [texts[i] for i in fit_index], targets[fit_index]
        scratch = self.cache.scratch_dir(key)
        logger.info("training %s on %d examples", label, len(texts))  # names the progress bar that follows
        arguments = sub_run_arguments(self.training_args, str(scratch), learning_rate, seed, early_stopping)
        started = time.perf_counter()
        trained = train_classifier(
            model,
            tokenizer,
            texts,
            targets,
            arguments,
            loss,
            validation,
            self.args.early_stopping_patience,
            callbacks=[self.interrupt],
            head_learning_rate=self.args.head_learning_rate,
        )
        seconds = time.perf_counter() - started
        if self.interrupt.requested:
            raise RunInterrupted(
                f"stopped during {label}; finished sub-runs are cached in {self.cache.directory}. "
                "Run the same command again to continue."
            )
        # Rounded once, in float64: the fresh and the cached results are then the very same numbers (and so
        # are the cache keys of the sub-runs trained on them).
        probs = {
            name: np.round(
                predict_probs(trained.trainer, tokenizer, [e["text"] for e in examples]).astype(np.float64), 6
            )
            for name, examples in predict.items()
        }
        info = {
            "train_examples": len(texts),
            "steps": trained.steps,
            "train_loss": _round(trained.train_loss),
            "stopped_early": trained.stopped_early,
            "train_seconds": round(seconds, 2),
            "cached": False,
            **parameter_counts(trained.trainer.model),
        }
        if "test" in predict:
            info["test_accuracy"] = round(accuracy(probs["test"], np.array([e["label"] for e in predict["test"]])), 4)
        logger.info(
            "%s: %s steps in %.1f s%s",
            label,
            trained.steps,
            seconds,
            f", test accuracy {info['test_accuracy']:.4f}" if "test_accuracy" in info else "",
        )
        if keep_model and self.training_args.should_save:
            _save_classifier(trained.trainer.model, tokenizer, self.cache.model_dir(key))
        self.cache.put(key, config, {"probs": {name: p.tolist() for name, p in probs.items()}, "info": info})
        self.cache.clear_scratch(key)
        wait_for_everyone()
        del trained, model
        gc.collect()
        return SubRun(probs, info, key)

    # --- the protocol ------------------------------------------------------------------------------------

    def run_seed(self, seed: int, task: TaskData, is_first: bool) -> dict[str, Any]:
        args = self.args
        test_labels = np.array([e["label"] for e in task.test])
        index_a, index_b = halves(task.train, seed)
        half_a, half_b = [task.train[i] for i in index_a], [task.train[i] for i in index_b]
        labels_b = np.array([e["label"] for e in half_b])

        weak = self.sub_run(
            "weak",
            args.weak_model,
            args.weak_learning_rate,
            seed,
            half_a,
            np.array(one_hot(e["label"] for e in half_a)),
            {"test": task.test, "half_b": half_b},
            keep_model=is_first and args.save_model == "weak",
        )
        weak_labels = weak.probs["half_b"]
        if self.training_args.should_save:
            save_soft_labels(self.output_dir / "soft_labels" / f"seed{seed}.jsonl", half_b, weak_labels)
        ceiling = self.sub_run(
            "ceiling",
            args.strong_model,
            args.strong_learning_rate,
            seed,
            half_b,
            np.array(one_hot(labels_b)),
            {"test": task.test},
            keep_model=is_first and args.save_model == "ceiling",
        )
        weak_accuracy = accuracy(weak.probs["test"], test_labels)
        ceiling_accuracy = accuracy(ceiling.probs["test"], test_labels)
        result: dict[str, Any] = {
            "seed": seed,
            "half_a": len(half_a),
            "half_b": len(half_b),
            "weak_accuracy": weak_accuracy,
            "ceiling_accuracy": ceiling_accuracy,
            "gap": ceiling_accuracy - weak_accuracy,
            "weak_label_accuracy": accuracy(weak_labels, labels_b),
            "students": {},
        }
        for loss_name in args.losses:
            loss = self.loss_settings(loss_name)
            keep = is_first and args.save_model == "w2s" and loss_name == args.losses[-1]
            student = self.sub_run(
                "w2s",
                args.strong_model,
                args.strong_learning_rate,
                seed,
                half_b,
                weak_labels,
                {"test": task.test},
                loss,
                early_stopping=args.early_stopping,
                keep_model=keep,
            )
            result["students"][loss_name] = student_metrics(
                student.probs["test"],
                weak.probs["test"],
                test_labels,
                weak_accuracy,
                ceiling_accuracy,
                args.pgr_min_gap,
            )
            if keep:
                self.saved_model = {"role": "w2s", "seed": seed, "loss": loss_name, "key": student.key}
        if args.middle_model:
            for loss_name in args.losses:
                result["students"][f"{loss_name}+bootstrap"] = self.bootstrap(
                    seed, task, half_b, weak_labels, weak.probs["test"], weak_accuracy, ceiling_accuracy, loss_name
                )
        if is_first and args.save_model in ("weak", "ceiling"):
            self.saved_model = {
                "role": args.save_model,
                "seed": seed,
                "key": (weak if args.save_model == "weak" else ceiling).key,
            }
        return result

    def bootstrap(
        self, seed, task, half_b, weak_labels, weak_test_probs, weak_accuracy, ceiling_accuracy, loss_name
    ) -> dict[str, Any]:
        """weak -> middle -> strong. The middle model relabels B by 2-fold cross-fitting: trained on the weak
        labels of one half of B, it labels the other, so that no model labels its own training data."""
        args, loss = self.args, self.loss_settings(loss_name)
        learning_rate = args.middle_learning_rate or args.strong_learning_rate
        test_labels = np.array([e["label"] for e in task.test])
        fold_1, fold_2 = halves(half_b, seed, salt="bootstrap-folds")
        middle_labels = np.zeros_like(weak_labels)
        middle_accuracies = []
        for train_index, label_index in ((fold_1, fold_2), (fold_2, fold_1)):
            middle = self.sub_run(
                "middle",
                args.middle_model,
                learning_rate,
                seed,
                [half_b[i] for i in train_index],
                weak_labels[train_index],
                {"test": task.test, "other_fold": [half_b[i] for i in label_index]},
                loss,
                early_stopping=args.early_stopping,
            )
            middle_labels[label_index] = middle.probs["other_fold"]
            middle_accuracies.append(accuracy(middle.probs["test"], test_labels))
        student = self.sub_run(
            "w2s_bootstrap",
            args.strong_model,
            args.strong_learning_rate,
            seed,
            half_b,
            middle_labels,
            {"test": task.test},
            loss,
            early_stopping=args.early_stopping,
        )
        metrics = student_metrics(
            student.probs["test"], weak_test_probs, test_labels, weak_accuracy, ceiling_accuracy, args.pgr_min_gap
        )
        metrics["middle_accuracy"] = float(np.mean(middle_accuracies))
        metrics["middle_label_accuracy"] = accuracy(middle_labels, np.array([e["label"] for e in half_b]))
        return metrics

    def loss_settings(self, name: str) -> LossSettings:
        return LossSettings(name, self.args.aux_alpha, self.args.aux_warmup_fraction, self.args.ramp)


def student_metrics(
    student_probs, weak_probs, labels, weak_accuracy: float, ceiling_accuracy: float, min_gap: float = 0.0
) -> dict[str, Any]:
    student_accuracy = accuracy(student_probs, labels)
    pgr = performance_gap_recovered(weak_accuracy, student_accuracy, ceiling_accuracy, min_gap)
    return {
        "accuracy": student_accuracy,
        "pgr": pgr.value,
        "pgr_reason": pgr.reason,
        "agreement": agreement(student_probs, weak_probs, labels),
    }


# --- aggregation and report ----------------------------------------------------------------------------


def summarize(per_seed: list[dict[str, Any]], min_gap: float = 0.0) -> dict[str, Any]:
    """Median and spread over seeds of every accuracy and PGR; PGR of the median accuracies too."""
    students = list(per_seed[0]["students"])
    summary: dict[str, Any] = {
        key: spread([seed[key] for seed in per_seed])
        for key in ("weak_accuracy", "ceiling_accuracy", "gap", "weak_label_accuracy")
    }
    summary["students"] = {}
    for name in students:
        rows = [seed["students"][name] for seed in per_seed]
        student_median = spread([row["accuracy"] for row in rows])["median"]
        of_medians = performance_gap_recovered(
            summary["weak_accuracy"]["median"], student_median, summary["ceiling_accuracy"]["median"], min_gap
        )
        summary["students"][name] = {
            "accuracy": spread([row["accuracy"] for row in rows]),
            "pgr": spread([row["pgr"] for row in rows]),
            "pgr_na_reasons": [
                f"seed {seed['seed']}: {row['pgr_reason']}" for seed, row in zip(per_seed, rows) if row["pgr"] is None
            ],
            "pgr_of_median_accuracies": of_medians.value,
            "agreement_weak_right": spread([row["agreement"]["weak_right"] for row in rows]),
            "agreement_weak_wrong": spread([row["agreement"]["weak_wrong"] for row in rows]),
        }
    return summary


def _fmt(stats: dict[str, Any], digits: int = 3) -> str:
    if stats["median"] is None:
        return "n/a"
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}, {stats['max']:.{digits}f}]"


def format_table(summary: dict[str, Any], seeds: list[int]) -> str:
    """The results as a Markdown table: median [min, max] over seeds."""
    lines = [
        f"Median [min, max] over seeds {seeds}. "
        f"Weak-label accuracy on half B: {_fmt(summary['weak_label_accuracy'])}.",
        "",
        "| student loss | weak acc | w2s acc | ceiling acc | PGR | PGR seeds | agreement (weak right / weak wrong) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["students"].items():
        pgr_seeds = f"{row['pgr']['n']}/{row['pgr']['n'] + row['pgr']['n_missing']}"
        lines.append(
            f"| {name} | {_fmt(summary['weak_accuracy'])} | {_fmt(row['accuracy'])} "
            f"| {_fmt(summary['ceiling_accuracy'])} | {_fmt(row['pgr'], 2)} | {pgr_seeds} "
            f"| {_fmt(row['agreement_weak_right'], 2)} / {_fmt(row['agreement_weak_wrong'], 2)} |"
        )
    reasons = [reason for row in summary["students"].values() for reason in row["pgr_na_reasons"]]
    if reasons:
        lines += ["", "PGR n/a: " + "; ".join(dict.fromkeys(reasons))]
    return "\n".join(lines) + "\n"


def flat_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """One-number keys for reports and the chain's summary."""
    flat = {
        "weak_accuracy_median": summary["weak_accuracy"]["median"],
        "ceiling_accuracy_median": summary["ceiling_accuracy"]["median"],
        "weak_label_accuracy_median": summary["weak_label_accuracy"]["median"],
    }
    for name, row in summary["students"].items():
        flat[f"w2s_accuracy_median_{name}"] = row["accuracy"]["median"]
        flat[f"pgr_median_{name}"] = row["pgr"]["median"]
    return flat


# --- the stage -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args, training_args, model_config, recipe = parse_recipe(RECIPE_TYPES, argv, STAGE, __doc__)
    if "learning_rate" in recipe.values:
        raise RecipeError(
            f"{recipe.path}: key 'learning_rate' is not used here; set weak_learning_rate and strong_learning_rate."
        )
    output_dir = Path(training_args.output_dir)
    opened = open_stage_run(
        recipe, STAGE, output_dir, training_args.seed, training_args.should_save, config=training_args
    )
    if opened is None:
        return
    run, _ = opened  # no top-level checkpoint: an interrupted run resumes sub-run by sub-run from the cache

    models = {
        "weak": args.weak_model,
        "strong": args.strong_model,
        **({"middle": args.middle_model} if args.middle_model else {}),
    }
    task, data_info = load_data(args, models)
    logger.info(
        "task %s (%s): %d training examples (halves of ~%d), %d test; %s dropped as too long",
        task.name,
        task.source,
        len(task.train),
        len(task.train) // 2,
        len(task.test),
        data_info["dropped_too_long"],
    )

    experiment = Experiment(args, training_args, model_config, output_dir)
    started = time.perf_counter()
    per_seed = [experiment.run_seed(seed, task, is_first=index == 0) for index, seed in enumerate(args.seeds)]
    experiment.interrupt.restore()
    if not training_args.should_save:
        return

    summary = summarize(per_seed, args.pgr_min_gap)
    table = format_table(summary, args.seeds)
    write_atomic(output_dir / "table.md", table)
    plot_w2s(
        per_seed,
        list(per_seed[0]["students"]),
        output_dir / "pgr.png",
        f"weak-to-strong: {task.name}, {Path(args.weak_model).name} -> {Path(args.strong_model).name}",
    )
    if experiment.saved_model:
        _copy_model(experiment.cache.model_dir(experiment.saved_model["key"]), output_dir)
    write_json(
        output_dir / "results.json",
        {"task": data_info, "models": models, "per_seed": per_seed, "sub_runs": experiment.records},
    )
    metrics = {
        **flat_metrics(summary),
        "task": data_info,
        "models": models,
        "seeds": args.seeds,
        "summary": summary,
        "per_seed": per_seed,
        "saved_model": experiment.saved_model,
        "sub_runs": len(experiment.records),
        "sub_runs_cached": sum(record["cached"] for record in experiment.records),
        "experiment_seconds": round(time.perf_counter() - started, 2),
    }
    run.finish(resolved_recipe(STAGE, args, training_args, model_config), metrics)
    logger.info("results in %s:\n%s", output_dir, table)


# --- small helpers -------------------------------------------------------------------------------------


def _held_out(examples: list[Example], seed: int, fraction: float) -> tuple[list[int], list[int]]:
    import random

    groups = list(dict.fromkeys(example["group"] for example in examples))
    random.Random(f"w2s-early-stopping:{seed}").shuffle(groups)
    held = set(groups[: max(1, round(len(groups) * fraction))])
    return [i for i, e in enumerate(examples) if e["group"] not in held], [
        i for i, e in enumerate(examples) if e["group"] in held
    ]


def _array_hash(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array.round(6)).tobytes()).hexdigest()[:16]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _save_classifier(model, tokenizer, directory: Path) -> None:
    """Safetensors + tokenizer; LoRA adapters are merged so the directory loads as a plain model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def _copy_model(source: Path, output_dir: Path) -> None:
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, output_dir / path.name)


if __name__ == "__main__":
    run_cli(main)
