"""Small matplotlib helpers (Agg backend, no display) shared by the report's sections.

Each helper draws one kind of figure and writes it atomically (temporary file + rename), so a report
being rewritten never leaves a half-written PNG behind.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Series = tuple[Sequence[float], Sequence[float]]


def save(figure, path: Path, tight: bool = True) -> Path:
    """Write `figure` as a PNG at `path` atomically and close it.

    `tight=False` keeps the layout set by hand: tight_layout renders the figure once more to measure its
    labels, which doubles the cost of the large multi-panel figures (about a second each on 2 cores).
    """
    buffer = io.BytesIO()
    if tight:
        figure.tight_layout()
    # A fixed "Software" tag and no date make the PNG bytes depend on the figure only.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)
    return path


def lines(
    series: Mapping[str, Series],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    markers: bool = False,
    reference: tuple[float, str] | None = None,
) -> Path | None:
    """One axis, one line per named series; None when there is nothing to draw."""
    series = {name: xy for name, xy in series.items() if len(xy[0])}
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for name, (xs, ys) in series.items():
        axis.plot(xs, ys, marker="o" if markers or len(xs) == 1 else None, markersize=3, label=name)
    if reference is not None:
        axis.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        axis.set_xscale("log", base=2)
    if logy:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def panels(
    panels_series: Mapping[str, Mapping[str, Series]],
    path: Path,
    title: str,
    xlabel: str,
    columns: int = 3,
    logx: bool = False,
) -> Path | None:
    """Several small line plots (one per named panel, each with its series) in one figure."""
    panels_series = {name: s for name, s in panels_series.items() if any(len(xy[0]) for xy in s.values())}
    if not panels_series:
        return None
    columns = min(columns, len(panels_series))
    rows = -(-len(panels_series) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, (name, series) in zip(axes.flat, panels_series.items()):
        for label, (xs, ys) in series.items():
            axis.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=label)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel(xlabel, fontsize=8)
        if logx:
            axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels_series) :]:
        axis.axis("off")
    figure.suptitle(title)
    height = 3.0 * rows  # margins in inches: the suptitle above, the x labels below
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.55 / height, top=1 - 0.75 / height, hspace=0.6, wspace=0.28)
    return save(figure, path, tight=False)


def bars(
    values: Mapping[str, float | None],
    path: Path,
    title: str,
    ylabel: str,
    errors: Mapping[str, tuple[float, float]] | None = None,
    points: Mapping[str, Sequence[float]] | None = None,
    horizontal_line: float | None = None,
) -> Path | None:
    """One bar per name; optional (low, high) error bars and individual points (e.g. seeds) on top."""
    names = [name for name, value in values.items() if value is not None]
    if not names:
        return None
    figure, axis = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.8))
    heights = [values[name] for name in names]
    positions = range(len(names))
    yerr = None
    if errors:
        yerr = [
            [max(0.0, values[n] - errors[n][0]) if n in errors else 0 for n in names],
            [max(0.0, errors[n][1] - values[n]) if n in errors else 0 for n in names],
        ]
    axis.bar(positions, heights, yerr=yerr, capsize=4, color="#4c72b0", alpha=0.85)
    for position, name in zip(positions, names):
        for value in (points or {}).get(name, []):
            if value is not None:
                axis.plot(position, value, "k.", markersize=6)
    if horizontal_line is not None:
        axis.axhline(horizontal_line, color="grey", linewidth=1)
    axis.set_xticks(
        list(positions), names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    axis.set(title=title, ylabel=ylabel)
    axis.grid(alpha=0.3, axis="y")
    return save(figure, path)


def histograms(
    groups: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str, bins: int = 30
) -> Path | None:
    """Overlaid histograms of several groups of values on shared bins."""
    groups = {name: list(values) for name, values in groups.items() if len(values)}
    if not groups:
        return None
    low = min(min(values) for values in groups.values())
    high = max(max(values) for values in groups.values())
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for name, values in groups.items():
        axis.hist(values, bins=edges, alpha=0.55, label=f"{name} (n={len(values)})")
    axis.set(title=title, xlabel=xlabel, ylabel="count")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def grouped_bars(
    panels_values: Mapping[str, Mapping[str, Mapping[str, float | None]]], path: Path, title: str, columns: int = 2
) -> Path | None:
    """One panel per metric; in each, one group of bars per category (e.g. strategy), one bar per series
    (e.g. model)."""
    if not panels_values:
        return None
    columns = min(columns, len(panels_values))
    rows = -(-len(panels_values) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.0 * columns, 3.2 * rows), squeeze=False)
    for axis, (panel, by_series) in zip(axes.flat, panels_values.items()):
        categories = list(dict.fromkeys(c for values in by_series.values() for c in values))
        width = 0.8 / max(1, len(by_series))
        for index, (name, values) in enumerate(by_series.items()):
            xs = [i + (index - (len(by_series) - 1) / 2) * width for i in range(len(categories))]
            ys = [values.get(c) if values.get(c) is not None else float("nan") for c in categories]
            axis.bar(xs, ys, width=width, label=name)
        axis.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=7)
        axis.set_title(panel, fontsize=9)
        axis.grid(alpha=0.3, axis="y")
        if len(by_series) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels_values) :]:
        axis.axis("off")
    figure.suptitle(title)
    height = 3.2 * rows  # margins in inches: the suptitle above, the rotated category names below
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.95 / height, top=1 - 0.7 / height, hspace=0.8, wspace=0.2)
    return save(figure, path, tight=False)


def gold_against_kl(
    curves: Mapping[str, Mapping[str, Any]],
    dots: Mapping[str, tuple[float | None, float | None]],
    path: Path,
    title: str,
) -> Path | None:
    """The alignment picture: curves of free baselines and training paths (each {"kl", "gold", "labels", "style"};
    style frontier | line | dashed | path) and one dot per trained policy, gold reward against KL to the SFT model."""
    styles = {
        "frontier": {"color": "black", "linewidth": 2.2, "marker": "s", "markersize": 4},
        "line": {"marker": "o", "markersize": 4},
        "dashed": {"linestyle": "--", "color": "grey", "linewidth": 1},
        "path": {"linewidth": 1, "alpha": 0.6},
    }
    drawn = False
    figure, axis = plt.subplots(figsize=(7.6, 5.0))
    for name, curve in curves.items():
        pairs = [(x, y) for x, y in zip(curve["kl"], curve["gold"]) if x is not None and y is not None]
        if not pairs:
            continue
        drawn = True
        axis.plot(*zip(*pairs), label=name, **styles.get(curve.get("style", "line"), {}))
        for (x, y), note in zip(pairs, curve.get("labels") or []):
            axis.annotate(note, (x, y), textcoords="offset points", xytext=(3, 4), fontsize=6)
    for name, (x, y) in dots.items():
        if x is not None and y is not None:
            drawn = True
            axis.scatter([x], [y], s=80, label=name, zorder=4, edgecolors="black")
    if not drawn:
        plt.close(figure)
        return None
    axis.set(title=title, xlabel="KL(policy ‖ SFT), nats per response", ylabel="gold reward (sampled responses)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return save(figure, path)
