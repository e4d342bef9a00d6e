"""The reward model's figures: held-out rewards of chosen against rejected responses, and its calibration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.plots import plt, save_figure


def plot_reward_histogram(chosen: Sequence[float], rejected: Sequence[float], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(min(chosen), min(rejected)), max(max(chosen), max(rejected)), 40)
    axis.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (mean {np.mean(chosen):.2f})", color="tab:green")
    axis.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (mean {np.mean(rejected):.2f})", color="tab:red")
    axis.set_xlabel("reward")
    axis.set_ylabel("held-out responses")
    axis.set_title(title)
    axis.legend()
    save_figure(figure, path)


def plot_calibration(curves: dict[str, dict], path: Path) -> None:
    """Reliability diagram: share of pairs the RM orders like the reference, against its confidence."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", label="calibrated")
    for name, calibration in curves.items():
        rows = [row for row in calibration.get("bins", []) if row["pairs"]]
        if rows:
            axis.plot(
                [row["mean_confidence"] for row in rows],
                [row["share_right"] for row in rows],
                marker="o",
                label=f"{name} (ECE {calibration['ece']:.3f}, {calibration['pairs']} pairs)",
            )
    axis.set_xlabel("confidence max(σ(r_a − r_b), 1 − σ(r_a − r_b))")
    axis.set_ylabel("share of pairs ordered as the reference orders them")
    axis.set_xlim(0.5, 1.0)
    axis.set_ylim(0.0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)
