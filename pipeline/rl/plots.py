"""Reward and KL over the steps of an online RL run (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.plots import plt, save_figure


def plot_reward_and_kl(log_history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Left: the rewards (RM score, gold reward, what PPO optimised); right: mean per-sequence KL to the reference."""
    figure, (reward_axis, kl_axis) = plt.subplots(1, 2, figsize=(11, 4))
    curves = (
        ("rm_reward", "reward model score"),
        ("gold_reward", "gold reward"),
        ("total_reward", "score − β·KL (optimised)"),
        ("reward", "reward (TRL: score − penalties)"),
    )
    for key, label in curves:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and entry[key] is not None]
        if points:
            reward_axis.plot(*zip(*points), label=label)
    reward_axis.set_xlabel("step")
    reward_axis.set_ylabel("mean reward per response")
    reward_axis.grid(alpha=0.3)
    kl_curves = (("kl_k1", "k1"), ("kl_k2", "k2"), ("kl_k3", "k3"), ("kl", "TRL's kl (k3, mean per token)"))
    for key, label in kl_curves:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            kl_axis.plot(*zip(*points), label=label)
    kl_axis.set_xlabel("step")
    kl_axis.set_ylabel("KL to the reference (nats per response)")
    kl_axis.grid(alpha=0.3)
    for axis in (reward_axis, kl_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    return save_figure(figure, path, title)
