"""Weak-to-strong generalisation: can a strong model trained on a weak model's labels beat its supervisor?

For every seed: a weak model learns half A's ground truth and labels half B; the strong model learns B from those
labels (once per loss) and from B's ground truth (the ceiling); the performance gap recovered (PGR) compares them.

    python -m pipeline.weak_to_strong --config recipes/toy/w2s.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.weak_to_strong \\
        --config recipes/w2s/sciq_gpt2_to_gpt2-large.yaml

Outputs and metrics: docs/stages/weak_to_strong.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.contract import open_stage_run, write_atomic, write_json
from pipeline.errors import RecipeError, run_cli
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.w2s.config import RECIPE_TYPES, W2SArguments
from pipeline.w2s.datasets import TaskData, load_data
from pipeline.w2s.experiment import Experiment, copy_model
from pipeline.w2s.plots import plot_w2s
from pipeline.w2s.summary import flat_metrics, format_table, summarize

logger = logging.getLogger("pipeline.weak_to_strong")

STAGE = "weak_to_strong"


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

    # Data: the task, without the examples too long for any of the models
    models = {
        "weak": args.weak_model,
        "strong": args.strong_model,
        **({"middle": args.middle_model} if args.middle_model else {}),
    }
    task, data_info = load_data(args, models)
    log_task(task, data_info)

    # Every seed: weak model -> weak labels -> ceiling -> students (each sub-run cached)
    experiment = Experiment(args, training_args, model_config, output_dir)
    started = time.perf_counter()
    per_seed = [experiment.run_seed(seed, task, is_first=index == 0) for index, seed in enumerate(args.seeds)]
    experiment.interrupt.restore()
    if not training_args.should_save:
        return

    # Summary over seeds: table, figure, the saved model, results and metrics
    summary = summarize(per_seed, args.pgr_min_gap)
    table = format_table(summary, args.seeds)
    if args.early_stopping and args.early_stopping_labels == "gold":
        table += (
            "\nThe students early-stopped on the ground truth of a held-out share of half B: an oracle upper bound on "
            "early stopping, not a weak-to-strong method.\n"
        )
    write_atomic(output_dir / "table.md", table)
    plot_w2s(
        per_seed,
        list(per_seed[0]["students"]),
        output_dir / "pgr.png",
        f"weak-to-strong: {task.name}, {Path(args.weak_model).name} -> {Path(args.strong_model).name}",
    )
    if experiment.saved_model:
        copy_model(experiment.cache.model_dir(experiment.saved_model["key"]), output_dir)
    write_json(
        output_dir / "results.json",
        {"task": data_info, "models": models, "per_seed": per_seed, "sub_runs": experiment.records},
    )
    metrics = w2s_metrics(args, summary, data_info, models, per_seed, experiment, time.perf_counter() - started)
    run.finish(resolved_recipe(STAGE, args, training_args, model_config), metrics)
    logger.info("results in %s:\n%s", output_dir, table)


def log_task(task: TaskData, data_info: dict[str, Any]) -> None:
    logger.info(
        "task %s (%s): %d training examples (halves of ~%d), %d test; %s dropped as too long",
        task.name,
        task.source,
        len(task.train),
        len(task.train) // 2,
        len(task.test),
        data_info["dropped_too_long"],
    )


def w2s_metrics(
    args: W2SArguments,
    summary: dict[str, Any],
    data_info: dict[str, Any],
    models: dict[str, str],
    per_seed: list[dict[str, Any]],
    experiment: Experiment,
    seconds: float,
) -> dict[str, Any]:
    """metrics.json: the one-number keys (medians over seeds), the task, the models, the summary over seeds, every
    seed's results, which model was saved and how many sub-runs came from the cache."""
    return {
        **flat_metrics(summary),
        "task": data_info,
        "models": models,
        "seeds": args.seeds,
        "students_early_stopped_on": (
            None
            if not args.early_stopping
            else "ground truth (oracle)"
            if args.early_stopping_labels == "gold"
            else "weak labels"
        ),
        "summary": summary,
        "per_seed": per_seed,
        "saved_model": experiment.saved_model,
        "sub_runs": len(experiment.records),
        "sub_runs_cached": sum(record["cached"] for record in experiment.records),
        "experiment_seconds": round(seconds, 2),
    }


if __name__ == "__main__":
    run_cli(main)
