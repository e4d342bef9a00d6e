"""Plots written next to a stage's outputs (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(log_history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Training and evaluation loss against the optimizer step, from a Trainer's `state.log_history`."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axis = plt.subplots(figsize=(6, 4))
    if train:
        axis.plot(*zip(*train), label="train loss")
    if evaluation:
        axis.plot(*zip(*evaluation), marker="o", label="eval loss")
    return _save(figure, axis, path, title, "step", "cross-entropy (nats/token)")


def plot_best_of_n_solve_rates(rows: list[dict[str, float]], path: str | Path, title: str) -> Path:
    """Share of problems solved against N (log scale) for each way of picking one of N samples (as in Figure 3 of
    "Let's Verify Step by Step": process and outcome verifiers, majority vote, and the oracle)."""
    styles = {"process": "-o", "outcome": "-s", "majority": "--^", "oracle": ":"}
    names = {"process": "process verifier (PRM)", "outcome": "outcome verifier (ORM)", "majority": "majority vote"}
    figure, axis = plt.subplots(figsize=(6, 4))
    ns = [row["n"] for row in rows]
    for key, style in styles.items():
        if key in rows[0]:
            axis.plot(ns, [100 * row[key] for row in rows], style, label=names.get(key, key))
    axis.set_xscale("log", base=2)
    return _save(figure, axis, path, title, "N = solutions sampled per problem", "% of problems solved (best of N)")


def _save(figure, axis, path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Label, grid and legend, then write the figure and close it."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def save_figure(figure, path: str | Path, title: str | None = None) -> Path:
    """Give the figure its title (if any), lay it out, write it as a PNG and close it; returns the path."""
    if title is not None:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
