"""The weak-to-strong figure: test accuracies and PGR per loss, bars at the median over seeds, whiskers
from min to max, one dot per seed (matplotlib through pipeline.plots, which selects the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.plots import plt, save_figure


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
    return save_figure(figure, path, title)


def plot_sweep(rows: list[dict], path: str | Path, title: str) -> Path:
    """PGR per model pair (groups) and loss (bars): median with min-max whiskers; `rows` from the sweep table."""
    pairs = list(dict.fromkeys(row["pair"] for row in rows))
    losses = list(dict.fromkeys(row["loss"] for row in rows))
    width = 0.8 / max(len(losses), 1)
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(pairs) * len(losses)), 4))
    for offset, loss in enumerate(losses):
        labelled = False  # the first bar drawn for a loss names it (a pair whose PGR is n/a draws none)
        for index, pair in enumerate(pairs):
            row = next((r for r in rows if r["pair"] == pair and r["loss"] == loss), None)
            if row is None or row["pgr"]["median"] is None:
                continue
            x = index + (offset - (len(losses) - 1) / 2) * width
            median = row["pgr"]["median"]
            axis.bar(x, median, width=width, color=f"C{offset}", alpha=0.75, label=None if labelled else loss)
            labelled = True
            axis.errorbar(
                x, median, yerr=[[median - row["pgr"]["min"]], [row["pgr"]["max"] - median]], color="black", capsize=4
            )
    axis.axhline(0.0, color="grey", linewidth=1)
    axis.set_xticks(range(len(pairs)))
    axis.set_xticklabels(pairs, rotation=15)
    axis.set_ylabel("PGR (median, min-max over seeds)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    if labelled_bars := axis.get_legend_handles_labels()[0]:
        axis.legend(handles=labelled_bars)
    else:
        axis.text(0.5, 0.5, "PGR n/a for every pair", transform=axis.transAxes, ha="center", color="grey")
    return save_figure(figure, path)


def plot_sweep_by_size(rows: list[dict], path: str | Path, title: str) -> Path:
    """Burns et al.'s two figures from a sweep over sizes: test accuracy against the strong model's size for the
    smallest weak model (weak, each loss, ceiling), and PGR against the strong model's size, one line per weak
    model and loss; medians with min-max whiskers over seeds. Sizes are parameters (log axis), else the order."""
    weak_models = list(dict.fromkeys(row["weak"] for row in rows))
    losses = list(dict.fromkeys(row["loss"] for row in rows))

    order = list(dict.fromkeys([*weak_models, *(row["strong"] for row in rows)]))  # without counts: by position

    def size(row: dict) -> float:
        return row["strong_parameters"] or order.index(row["strong"]) + 1

    def line(axis, points: list[tuple[float, dict]], **style) -> None:
        points = [(x, stats) for x, stats in sorted(points, key=lambda p: p[0]) if stats["median"] is not None]
        if not points:
            return
        xs = [x for x, _ in points]
        medians = [stats["median"] for _, stats in points]
        errors = [
            [m - stats["min"] for m, (_, stats) in zip(medians, points)],
            [stats["max"] - m for m, (_, stats) in zip(medians, points)],
        ]
        axis.errorbar(xs, medians, yerr=errors, marker="o", capsize=3, **style)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    smallest = [row for row in rows if row["weak"] == weak_models[0]]
    first = [row for row in smallest if row["loss"] == losses[0]]
    line(left, [(size(row), row["ceiling_accuracy"]) for row in first], color="black", label="strong ceiling")
    zero_shot = [(size(row), row["zero_shot_accuracy"]) for row in first]
    line(left, zero_shot, color="black", linestyle=":", label="strong zero-shot (untrained)")
    for index, loss in enumerate(losses):
        line(
            left,
            [(size(row), row["w2s_accuracy"]) for row in smallest if row["loss"] == loss],
            color=f"C{index}",
            label=f"weak-to-strong, {loss}",
        )
    if first:
        left.axhline(
            first[0]["weak_accuracy"]["median"] or 0.0,
            color="grey",
            linestyle="--",
            label=f"weak ({Path(weak_models[0]).name})",
        )
    left.set_ylabel("test accuracy")
    left.set_title(f"weak model {Path(weak_models[0]).name}")
    for weak_index, weak in enumerate(weak_models):
        for loss_index, loss in enumerate(losses):
            points = [(size(row), row["pgr"]) for row in rows if row["weak"] == weak and row["loss"] == loss]
            line(
                right,
                points,
                color=f"C{loss_index}",
                alpha=1.0 - 0.6 * weak_index / max(len(weak_models), 1),
                linestyle=["-", "--", ":", "-."][weak_index % 4],
                label=f"{Path(weak).name}, {loss}",
            )
    right.axhline(0.0, color="grey", linewidth=1)
    right.set_ylabel("performance gap recovered")
    right.set_title("PGR")
    for axis in (left, right):
        axis.set_xlabel("strong model parameters" if rows and rows[0]["strong_parameters"] else "strong model (order)")
        if rows and rows[0]["strong_parameters"]:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(figure, path, title)
