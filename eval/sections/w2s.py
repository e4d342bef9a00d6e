"""Weak-to-strong: accuracies of weak, strong-on-weak-labels and ceiling, and the performance gap recovered
(PGR) per student loss, median and spread over seeds (from the weak_to_strong stage's metrics.json)."""

from __future__ import annotations

from typing import Any

from eval import figures
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number


def _spread(stats: Any) -> str:
    if not isinstance(stats, dict) or stats.get("median") is None:
        return "n/a"
    return f"{stats['median']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("weak_to_strong")
    if not outputs:
        return None
    section = Section("weak-to-strong", "Weak-to-strong generalisation")
    section.text(
        "PGR = (acc_w2s − acc_weak) / (acc_ceiling − acc_weak): 0 when the strong student only matches its weak "
        "supervisor, 1 when it matches the strong model trained on ground truth; n/a where the ceiling does not beat "
        "the weak model. Median [min, max] over seeds; dots in the figure are single seeds."
    )
    data = {}
    for output in outputs:
        metrics = output.metrics
        summary, per_seed = metrics.get("summary") or {}, metrics.get("per_seed") or []
        students = summary.get("students") or {}
        models, task = metrics.get("models") or {}, metrics.get("task") or {}
        section.text(
            f"**{output.name}**: task `{task.get('name', task) if isinstance(task, dict) else task}`, weak "
            f"`{models.get('weak')}` → strong `{models.get('strong')}`, seeds {metrics.get('seeds')}; weak-label "
            f"accuracy on half B {_spread(summary.get('weak_label_accuracy'))}"
            + (
                f"; students early-stopped on {metrics['students_early_stopped_on']}."
                if metrics.get("students_early_stopped_on")
                else "."
            )
        )
        section.table(
            [
                "student loss",
                "weak acc",
                "w2s acc",
                "ceiling acc",
                "PGR",
                "PGR of median accuracies",
                "agreement (weak right / wrong)",
            ],
            [
                [
                    name,
                    _spread(summary.get("weak_accuracy")),
                    _spread(row.get("accuracy")),
                    _spread(summary.get("ceiling_accuracy")),
                    _spread(row.get("pgr")),
                    number(row.get("pgr_of_median_accuracies")),
                    f"{_spread(row.get('agreement_weak_right'))} / {_spread(row.get('agreement_weak_wrong'))}",
                ]
                for name, row in students.items()
            ],
        )
        if isinstance(summary.get("zero_shot_accuracy"), dict):
            section.text(
                "The strong model **zero-shot** (no training: its own per-token log p(answer | prompt), thresholded "
                "where it best agrees with the weak labels): test accuracy "
                f"{_spread(summary['zero_shot_accuracy'])}, AUC {_spread(summary.get('zero_shot_auc'))}. "
                "A student below it learned less from the weak labels than the strong model already knew."
            )
        reasons = [reason for row in students.values() for reason in row.get("pgr_na_reasons", [])]
        if reasons:
            section.text("PGR n/a: " + "; ".join(dict.fromkeys(reasons)))
        medians = {name: number(dig(row, "pgr", "median")) for name, row in students.items()}
        ranges = {
            name: (row["pgr"]["min"], row["pgr"]["max"])
            for name, row in students.items()
            if number(dig(row, "pgr", "median")) is not None
        }
        seeds = {name: [dig(seed, "students", name, "pgr") for seed in per_seed] for name in students}
        section.figure(
            figures.bars(
                medians,
                ctx.figure_path(f"pgr_{output.name}"),
                f"{output.name}: PGR by student loss",
                "PGR",
                errors=ranges,
                points=seeds,
                horizontal_line=0.0,
            ),
            f"{output.name}: median PGR per student loss, bars = min/max over seeds, dots = seeds.",
        )
        accuracies = {
            "weak": number(dig(summary, "weak_accuracy", "median")),
            **{f"w2s {name}": number(dig(row, "accuracy", "median")) for name, row in students.items()},
            "ceiling": number(dig(summary, "ceiling_accuracy", "median")),
        }
        if number(dig(summary, "zero_shot_accuracy", "median")) is not None:
            accuracies["strong zero-shot"] = number(dig(summary, "zero_shot_accuracy", "median"))
        section.figure(
            figures.bars(
                accuracies,
                ctx.figure_path(f"w2s_accuracy_{output.name}"),
                f"{output.name}: test accuracy (median over seeds)",
                "accuracy",
            ),
            f"{output.name}: test accuracy of the weak model, the students and the ceiling.",
        )
        data[output.name] = {
            "models": models,
            "task": task,
            "seeds": metrics.get("seeds"),
            "pgr_median": medians,
            "pgr_per_seed": seeds,
            "accuracy_median": accuracies,
            "summary": summary,
        }
    section.data = data
    return section
