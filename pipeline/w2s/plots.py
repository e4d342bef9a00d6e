"""The weak-to-strong figure: test accuracies and PGR per loss, bars at the median over seeds, whiskers
from min to max, one dot per seed (matplotlib through pipeline.plots, which selects the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.plots import plt


def _bars(axis, labels: list[str], per_seed: list[list[float | None]], colours: list[str]) -> None:
    for index, (values, colour) in enumerate(zip(per_seed, colours)):
        present = [value for value in values if value is not None]
        if not present:
            axis.text(index, 0, "n/a", ha="center", va="bottom")
            continue
        median = float(np.median(present))
        axis.bar(index, median, color=colour, alpha=0.75)
        axis.errorbar(index, median, yerr=[[median - min(present)], [max(present) - median]], color="black", capsize=6)
        jitter = np.linspace(-0.15, 0.15, len(present)) if len(present) > 1 else [0.0]
        axis.scatter(index + np.asarray(jitter), present, color="black", s=14, zorder=3)
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels, rotation=20)
    axis.grid(axis="y", alpha=0.3)


def plot_w2s(per_seed: list[dict], losses: list[str], path: str | Path, title: str) -> Path:
    """`per_seed`: the stage's per-seed metrics (weak_accuracy, ceiling_accuracy, students[loss])."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    accuracy_labels = ["weak"] + [f"w2s {loss}" for loss in losses] + ["ceiling"]
    accuracy_values = (
        [[seed["weak_accuracy"] for seed in per_seed]]
        + [[seed["students"][loss]["accuracy"] for seed in per_seed] for loss in losses]
        + [[seed["ceiling_accuracy"] for seed in per_seed]]
    )
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    _bars(left, accuracy_labels, accuracy_values, ["grey"] + palette[: len(losses)] + ["black"])
    low = min(value for values in accuracy_values for value in values)
    left.set_ylim(max(0.0, low - 0.1), 1.0)
    left.set_ylabel("test accuracy")
    left.set_title("accuracy (median, min-max, seeds)")

    _bars(
        right,
        list(losses),
        [[seed["students"][loss]["pgr"] for seed in per_seed] for loss in losses],
        palette[: len(losses)],
    )
    right.axhline(0.0, color="grey", linewidth=1)
    right.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    right.set_ylabel("performance gap recovered")
    right.set_title("PGR (median, min-max, seeds)")
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_sweep(rows: list[dict], path: str | Path, title: str) -> Path:
    """PGR per model pair (groups) and loss (bars): median with min-max whiskers; `rows` from the sweep table."""
    pairs = list(dict.fromkeys(row["pair"] for row in rows))
    losses = list(dict.fromkeys(row["loss"] for row in rows))
    width = 0.8 / max(len(losses), 1)
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(pairs) * len(losses)), 4))
    for offset, loss in enumerate(losses):
        for index, pair in enumerate(pairs):
            row = next((r for r in rows if r["pair"] == pair and r["loss"] == loss), None)
            if row is None or row["pgr"]["median"] is None:
                continue
            x = index + (offset - (len(losses) - 1) / 2) * width
            median = row["pgr"]["median"]
            axis.bar(x, median, width=width, color=f"C{offset}", alpha=0.75, label=loss if index == 0 else None)
            axis.errorbar(
                x, median, yerr=[[median - row["pgr"]["min"]], [row["pgr"]["max"] - median]], color="black", capsize=4
            )
    axis.axhline(0.0, color="grey", linewidth=1)
    axis.set_xticks(range(len(pairs)))
    axis.set_xticklabels(pairs, rotation=15)
    axis.set_ylabel("PGR (median, min-max over seeds)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
