"""What a weak-to-strong run reports: each student's accuracy, PGR and agreement (student_metrics), their median
and spread over seeds (summarize), the Markdown table (format_table) and the one-number keys (flat_metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.w2s.metrics import accuracy, agreement, performance_gap_recovered, spread


def student_metrics(
    student_probs: np.ndarray,
    weak_probs: np.ndarray,
    labels: np.ndarray,
    weak_accuracy: float,
    ceiling_accuracy: float,
    min_gap: float = 0.0,
) -> dict[str, Any]:
    """One student on the test set: accuracy, PGR (or n/a with the reason), agreement with its supervisor."""
    student_accuracy = accuracy(student_probs, labels)
    pgr = performance_gap_recovered(weak_accuracy, student_accuracy, ceiling_accuracy, min_gap)
    return {
        "accuracy": student_accuracy,
        "pgr": pgr.value,
        "pgr_reason": pgr.reason,
        "agreement": agreement(student_probs, weak_probs, labels),
    }


def summarize(per_seed: list[dict[str, Any]], min_gap: float = 0.0) -> dict[str, Any]:
    """Median and spread over seeds of every accuracy and PGR; PGR of the median accuracies too."""
    students = list(per_seed[0]["students"])
    summary: dict[str, Any] = {
        key: spread([seed[key] for seed in per_seed])
        for key in ("weak_accuracy", "ceiling_accuracy", "gap", "weak_label_accuracy")
    }
    if all("zero_shot" in seed for seed in per_seed):
        zero_shot = [seed["zero_shot"] for seed in per_seed]
        summary["zero_shot_accuracy"] = spread([row["accuracy"] for row in zero_shot])
        summary["zero_shot_auc"] = spread([row["auc"] for row in zero_shot])
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
    if "zero_shot_accuracy" in summary:
        lines += [
            "",
            "Zero-shot strong model (its per-token log p(answer | prompt), no training, thresholded on the weak "
            f"labels): test accuracy {_fmt(summary['zero_shot_accuracy'])}, AUC {_fmt(summary['zero_shot_auc'])}.",
        ]
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
    if "zero_shot_accuracy" in summary:
        flat["zero_shot_accuracy_median"] = summary["zero_shot_accuracy"]["median"]
        flat["zero_shot_auc_median"] = summary["zero_shot_auc"]["median"]
    for name, row in summary["students"].items():
        flat[f"w2s_accuracy_median_{name}"] = row["accuracy"]["median"]
        flat[f"pgr_median_{name}"] = row["pgr"]["median"]
    return flat
