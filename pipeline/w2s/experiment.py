"""One weak-to-strong run: every sub-run (one classifier trained on some labels and evaluated) cached under a hash
of everything that determines it, and the per-seed protocol (weak -> labels -> ceiling -> students, optionally
through a middle model) that `Experiment.run_seed` follows."""

from __future__ import annotations

import gc
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import set_seed

from pipeline.distributed import wait_for_everyone
from pipeline.errors import RunInterrupted
from pipeline.models import parameter_counts
from pipeline.training import GracefulInterrupt
from pipeline.w2s.cache import ResultCache, config_key, model_fingerprint
from pipeline.w2s.config import W2SArguments, W2SConfig, W2SModelConfig
from pipeline.w2s.datasets import Example, TaskData, examples_fingerprint, halves, one_hot, save_soft_labels
from pipeline.w2s.metrics import accuracy
from pipeline.w2s.summary import student_metrics
from pipeline.w2s.train import LossSettings, load_classifier, predict_probs, sub_run_arguments, train_classifier
from pipeline.w2s.zero_shot import score_task, zero_shot_baseline

logger = logging.getLogger("pipeline.weak_to_strong")


def default_cache_dir(output_dir: Path) -> Path:
    """Beside the output, not inside it: `--force` (which empties output_dir) keeps finished sub-runs. Entries
    are keyed by everything that determines them, so reusing them is safe; `reuse_cache: false` retrains."""
    return output_dir.with_name(output_dir.name + "_cache")


@dataclass
class SubRunSpec:
    """What one sub-run trains: a model at a learning rate and seed, on examples and their (soft) targets with a
    loss; the example sets it predicts; whether it early-stops and whether its model is kept."""

    model_path: str
    learning_rate: float
    seed: int
    train: list[Example]
    targets: np.ndarray
    predict: dict[str, list[Example]]
    loss: LossSettings
    early_stopping: bool
    keep_model: bool


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
        self._zero_shot_scores: dict[str, np.ndarray] | None = None  # {} once known to be inapplicable

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
            and [self.args.early_stopping_fraction, self.args.early_stopping_patience, self.training_args.eval_steps]
            + (["gold"] if self.args.early_stopping_labels == "gold" else []),
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
            spec = SubRunSpec(
                model_path, learning_rate, seed, train, targets, predict, loss, early_stopping, keep_model
            )
            result = self._train(spec, key, config, label)
        self.records.append(
            {"key": key, "role": role, "seed": seed, "loss": loss.name, "model": model_path, **result.info}
        )
        return result

    def _train(self, spec: SubRunSpec, key: str, config: dict[str, Any], label: str) -> SubRun:
        """Trains the classifier, predicts, and caches the result (with the model where it is kept)."""
        set_seed(spec.seed)
        model, tokenizer = load_classifier(
            spec.model_path,
            self.model_config,
            self.args.train_with_dropout,
            self.args.trust_remote_code,
            self.args.linear_probe,
        )
        texts, targets = [example["text"] for example in spec.train], spec.targets
        validation = None
        if spec.early_stopping:
            # Hold out a share of the (weak-)labelled groups; the student never sees them in training. It stops on
            # their weak labels, or, as an oracle upper bound, on their ground truth.
            fit_index, held_index = _held_out(spec.train, spec.seed, self.args.early_stopping_fraction)
            held_targets = targets[held_index]
            if self.args.early_stopping_labels == "gold":
                held_targets = np.array(one_hot(spec.train[i]["label"] for i in held_index), dtype=np.float64)
            validation = ([texts[i] for i in held_index], held_targets)
            texts, targets = [texts[i] for i in fit_index], targets[fit_index]
        scratch = self.cache.scratch_dir(key)
        logger.info("training %s on %d examples", label, len(texts))  # names the progress bar that follows
        arguments = sub_run_arguments(
            self.training_args, str(scratch), spec.learning_rate, spec.seed, spec.early_stopping
        )
        started = time.perf_counter()
        trained = train_classifier(
            model,
            tokenizer,
            texts,
            targets,
            arguments,
            spec.loss,
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
            for name, examples in spec.predict.items()
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
        if "test" in spec.predict:
            test_labels = np.array([e["label"] for e in spec.predict["test"]])
            info["test_accuracy"] = round(accuracy(probs["test"], test_labels), 4)
        logger.info(
            "%s: %s steps in %.1f s%s",
            label,
            trained.steps,
            seconds,
            f", test accuracy {info['test_accuracy']:.4f}" if "test_accuracy" in info else "",
        )
        if spec.keep_model and self.training_args.should_save:
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
        if args.zero_shot:
            scores = self.zero_shot_scores(task)
            if scores is not None:
                result["zero_shot"] = zero_shot_baseline(
                    scores["test"], test_labels, scores["train"][index_b], weak_labels
                )
        if is_first and args.save_model in ("weak", "ceiling"):
            self.saved_model = {
                "role": args.save_model,
                "seed": seed,
                "key": (weak if args.save_model == "weak" else ceiling).key,
            }
        return result

    def zero_shot_scores(self, task: TaskData) -> dict[str, np.ndarray] | None:
        """The strong LM's candidate log-probabilities on every train and test example, computed once per run (they
        depend on no seed); None for a task whose texts are not a prompt and a candidate answer."""
        if self._zero_shot_scores is None:
            texts = [e["text"] for e in task.train] + [e["text"] for e in task.test]
            device, batch = self.training_args.device, self.training_args.per_device_eval_batch_size
            scores = score_task(self.args.strong_model, texts, device, batch)
            self._zero_shot_scores = (
                {} if scores is None else {"train": scores[: len(task.train)], "test": scores[len(task.train) :]}
            )
        return self._zero_shot_scores or None

    def bootstrap(
        self,
        seed: int,
        task: TaskData,
        half_b: list[Example],
        weak_labels: np.ndarray,
        weak_test_probs: np.ndarray,
        weak_accuracy: float,
        ceiling_accuracy: float,
        loss_name: str,
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


def copy_model(source: Path, output_dir: Path) -> None:
    """The files of a cached model into the stage's output directory."""
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, output_dir / path.name)
