"""Process and outcome reward models (verifiers) of multi-step answers, judged by Best-of-N search, after
Lightman et al. (2023), "Let's Verify Step by Step".

    python -m pipeline.prm --config recipes/toy_prm/orm.yaml
    python -m pipeline.prm --config recipes/toy_prm/prm.yaml      # supervision: process, compare_with the ORM

Outputs and metrics: docs/stages/prm.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from transformers import (
    DataCollatorForTokenClassification,
    Trainer,
    TrainingArguments,
)

from pipeline.contract import write_json
from pipeline.data.toy_world import ToyWorld, ToyWorldKeys
from pipeline.decoding import generate
from pipeline.errors import run_cli
from pipeline.finetuning import ModelArguments
from pipeline.models import config_context_length, load_model, load_tokenizer, parameter_counts
from pipeline.plots import plot_best_of_n_solve_rates, plot_loss_curves
from pipeline.recipes import parse_recipe, require_positive, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.training import GracefulInterrupt, open_trainer_run, training_figures
from pipeline.verifier_study import (
    SAMPLES_FILE,
    best_of_n_study,
    check_same_samples,
    first_error_located,
    load_comparison,
    position_accuracy,
    rows_of,
    test_samples,
)
from pipeline.verifiers import build_verifier, labelled_dataset, position_probabilities, solution_score

logger = logging.getLogger("pipeline.prm")


@dataclass
class PRMArguments(ToyWorldKeys):
    """What the verifier learns from and how it is judged (optimisation: PRMConfig; model: ModelArguments)."""

    path_fields: ClassVar[dict[str, str]] = {"compare_with": "file"}

    dataset: str = field(
        default="toy",
        metadata={"help": "'toy': the toy world's multi-step skills (toy_skills: colour_each, reverse_each)"},
    )
    supervision: Literal["process", "outcome"] = field(
        default="process",
        metadata={"help": "'process': a label per step (PRM); 'outcome': one label, the final answer's (ORM)"},
    )
    aggregate: Literal["product", "min"] = field(
        default="product", metadata={"help": "a solution's score from its positions' P(right): product or min"}
    )
    train_prompts: int = field(default=1000, metadata={"help": "train-split problems the generator samples"})
    samples_per_prompt: int = field(default=4, metadata={"help": "generator samples per training problem"})
    test_prompts: int = field(default=128, metadata={"help": "held-out problems of the Best-of-N study"})
    best_of_n_max: int = field(default=64, metadata={"help": "samples per held-out problem: N = 1, 2, 4 .. this"})
    sample_temperature: float = field(default=1.0, metadata={"help": "the generator's sampling temperature"})
    sample_max_new_tokens: int = field(default=32, metadata={"help": "length limit of a sampled solution"})
    majority_draws: int = field(default=200, metadata={"help": "random subsets per problem and N for majority vote"})
    compare_with: str | None = field(
        default=None,
        metadata={"help": "output_dir of this stage's run with the other supervision, scored on the same samples"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset != "toy":
            raise ValueError(
                "key 'dataset': only 'toy' (its multi-step skills, e.g. colour_each) has step labels in this version"
            )
        require_positive(
            self, "train_prompts", "test_prompts", "best_of_n_max", "sample_max_new_tokens", "majority_draws"
        )
        if self.samples_per_prompt < 1:
            raise ValueError(f"key 'samples_per_prompt' must be >= 1, got {self.samples_per_prompt}")
        if self.best_of_n_max & (self.best_of_n_max - 1):
            raise ValueError(f"key 'best_of_n_max' must be a power of two, got {self.best_of_n_max}")
        if self.sample_temperature <= 0:
            raise ValueError(f"key 'sample_temperature' must be > 0, got {self.sample_temperature}")


@dataclass
class PRMModelArguments(ModelArguments):
    """The generator (model_name_or_path), whose body the verifier starts from; full fine-tuning only."""

    model_example: ClassVar[str] = "the model that generates the solutions, e.g. runs/toy_prm/pretrain"
    quantization_refused: ClassVar[str | None] = "the verifier is fully fine-tuned in this version"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_peft:
            raise ValueError("key 'use_peft': the verifier is fully fine-tuned in this version (use_peft: false)")


@dataclass
class PRMConfig(TrainingArguments):
    """transformers' TrainingArguments with CPU-friendly defaults: fp32, cosine schedule, no hub, no trackers."""

    output_dir: str = field(default="runs/prm", metadata={"help": "where the stage writes its outputs"})
    bf16: bool | None = False
    learning_rate: float = 5e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    max_steps: int = 300
    logging_steps: float = 10
    eval_strategy: str = "no"
    save_steps: float = 100
    save_total_limit: int = 1
    report_to: str | list[str] = "none"


RECIPE_TYPES = (PRMArguments, PRMModelArguments, PRMConfig)


# --- the stage ----------------------------------------------------------------------------------------


def sample_solutions(generator, tokenizer, prompts: list[str], k: int, args: PRMArguments, seed: int):
    """k samples of each prompt from the generator (the prompts repeated k times, in order). The sampling seed
    is fixed by the data, not by the training seed, so that the two verifiers of a comparison see the same."""
    repeated = [prompt for prompt in prompts for _ in range(k)]
    sampling = {"do_sample": True, "temperature": args.sample_temperature, "top_k": 0, "top_p": 1.0}
    generations = generate(
        generator, tokenizer, repeated, sampling, max_new_tokens=args.sample_max_new_tokens, seed=seed, batch_size=256
    )
    return repeated, generations


def train_verifier(model_args, tokenizer, train_set, training_args, checkpoint, max_length):
    """(trainer, train result, seconds): transformers' Trainer on the token-classification rows."""
    interrupt = GracefulInterrupt()
    trainer = Trainer(
        model=build_verifier(model_args.model_name_or_path, tokenizer, training_args.seed),
        args=training_args,
        train_dataset=train_set.shuffle(seed=training_args.seed),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        callbacks=[interrupt, MemoryCheck(max_length, 1)],
    )
    result, seconds = interrupt.run_training(trainer, checkpoint, training_args.output_dir)
    return trainer, result, seconds


def labelled_train_set(generator, tokenizer, world: ToyWorld, args: PRMArguments, max_length: int):
    """The generator's own samples of train problems, labelled by the toy world's checker: (rows, their stats)."""
    prompts, generations = sample_solutions(
        generator, tokenizer, world.prompts(args.train_prompts, "train"), args.samples_per_prompt, args, seed=0
    )
    train_set, stats = labelled_dataset(tokenizer, prompts, generations, args.supervision, max_length)
    logger.info(
        "%s supervision: %d labelled solutions (%d positions, %.3f right) from %d samples of %d train problems",
        args.supervision,
        stats["solutions"],
        stats["labels"],
        stats["right_share"],
        len(generations),
        args.train_prompts,
    )
    return train_set, stats


def held_out_samples(generator, tokenizer, world: ToyWorld, args: PRMArguments) -> tuple[dict[str, Any], tuple]:
    """best_of_n_max samples of each held-out problem, the same for both verifiers of a comparison (same
    generator, prompts, seed and batch size): (the study's samples by problem, (prompts, responses, finished)
    flat, one per sample)."""
    held_out_prompts = world.prompts(args.test_prompts, args.toy_eval_split)
    prompts, generations = sample_solutions(generator, tokenizer, held_out_prompts, args.best_of_n_max, args, seed=1)
    responses = [generation.text for generation in generations]
    finished = [generation.finished for generation in generations]
    samples = {"supervision": args.supervision, **test_samples(prompts, responses, finished, args.best_of_n_max)}
    return samples, (prompts, responses, finished)


def main(argv: Sequence[str] | None = None) -> None:
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "prm", __doc__)
    other = load_comparison(args.compare_with, args.supervision, recipe.path)
    opened = open_trainer_run(recipe, "prm", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Data: the generator's labelled samples of train problems, and the held-out samples of the study
    world = ToyWorld.from_recipe(args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    generator = load_model(model_args, tokenizer).to(training_args.device)
    max_length = config_context_length(generator.config) or 1024
    train_set, data_stats = labelled_train_set(generator, tokenizer, world, args, max_length)
    samples, (test_prompts, responses, finished) = held_out_samples(generator, tokenizer, world, args)
    check_same_samples(other, samples, recipe.path)
    del generator

    # The verifier: the generator's body with a token-classification head, trained on the labelled positions
    trainer, train_result, train_seconds = train_verifier(
        model_args, tokenizer, train_set, training_args, checkpoint, max_length
    )
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(output_dir)

    # Judging: the held-out samples scored; Best-of-N against majority vote, the oracle and the other verifier
    probabilities = position_probabilities(
        trainer.model, tokenizer, test_prompts, responses, max_length, training_args.per_device_eval_batch_size
    )
    samples["scores"] = rows_of(
        [solution_score(probs, args.supervision, args.aggregate) for probs in probabilities], args.best_of_n_max
    )
    table = best_of_n_study(samples, other, args.supervision, args.majority_draws, training_args.seed)
    write_study(output_dir, samples, table, trainer, args, recipe.path)

    metrics = {
        **study_metrics(args, table, other),
        "position_accuracy": position_accuracy(probabilities, test_prompts, responses, finished, args.supervision),
        "first_error_located": (
            first_error_located(probabilities, test_prompts, responses, finished)
            if args.supervision == "process"
            else None
        ),
        **training_figures(trainer, train_result, train_seconds, checkpoint),
        "data": data_stats,
        **parameter_counts(trainer.model),
        "toy_world": world.describe(),
    }
    run.finish(resolved_recipe("prm", args, model_args, training_args), metrics)
    logger.info("%s verifier: %s; outputs in %s", args.supervision, metrics["headline"], output_dir)


def write_study(output_dir: Path, samples: dict, table: list[dict], trainer: Trainer, args: PRMArguments, recipe_path):
    """The scored test samples (what the other verifier's run compares against), the Best-of-N table and figure,
    and the training curves."""
    write_json(output_dir / SAMPLES_FILE, samples)
    write_json(output_dir / "best_of_n.json", {"rows": table, "compare_with": args.compare_with})
    plot_best_of_n_solve_rates(
        table, output_dir / "best_of_n.png", f"Best-of-N on {args.test_prompts} {args.toy_eval_split} problems"
    )
    plot_loss_curves(
        trainer.state.log_history, output_dir / "loss_curve.png", f"{args.supervision} verifier: {recipe_path}"
    )
    write_json(output_dir / "log_history.json", trainer.state.log_history)


def study_metrics(args: PRMArguments, table: list[dict[str, float]], other: dict[str, Any] | None) -> dict[str, Any]:
    """The headline figures of the Best-of-N study (rows keyed by N), and the gap to the other verifier."""
    last = table[-1]
    metrics: dict[str, Any] = {
        "supervision": args.supervision,
        "aggregate": args.aggregate if args.supervision == "process" else None,
        "eval_split": args.toy_eval_split,
        "best_of_n": {row["n"]: {key: value for key, value in row.items() if key != "n"} for row in table},
        "solve_rate_n1": table[0][args.supervision],
        "solve_rate_at_max_n": last[args.supervision],
        "majority_at_max_n": last["majority"],
        "oracle_at_max_n": last["oracle"],
    }
    headline = f"solved {last[args.supervision]:.3f} at N = {last['n']} (majority {last['majority']:.3f})"
    if other is not None:
        kind = other["supervision"]
        gaps = {row["n"]: round(row[args.supervision] - row[kind], 4) for row in table if row["n"] >= 4}
        metrics.update(
            {
                "compared_with": kind,
                f"gap_over_{kind}": gaps,
                f"at_least_{kind}_from_n4": all(gap >= 0 for gap in gaps.values()),
                "above_majority_at_max_n": last[args.supervision] > last["majority"],
            }
        )
        headline += f"; {kind} {last[kind]:.3f}"
    metrics["headline"] = headline
    return metrics


if __name__ == "__main__":
    run_cli(main)
