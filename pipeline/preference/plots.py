"""The curves of a DPO run over the steps: loss, implicit reward margin and accuracy, and the log-probabilities of
the chosen and rejected responses, on training batches and held-out pairs (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from trl import DPOTrainer

from pipeline.contract import write_json
from pipeline.plots import plot_loss_curves, save_figure  # also selects matplotlib's file-only backend
from pipeline.preference.config import DPOTrainingConfig


def plot_dpo_curves(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Implicit reward margins/accuracy and chosen/rejected log-probabilities over the steps (train and held-out)."""
    figure, (rewards_axis, logps_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for prefix, style in (("", "-"), ("eval_", "o--")):
        for key, axis, label, colour in (
            ("rewards/margins", rewards_axis, "margin", "C0"),
            ("rewards/accuracies", rewards_axis, "accuracy", "C1"),
            ("logps/chosen", logps_axis, "chosen", "C2"),
            ("logps/rejected", logps_axis, "rejected", "C3"),
        ):
            points = [
                (entry["step"], entry[prefix + key])
                for entry in log_history
                if prefix + key in entry and "step" in entry
            ]
            if points:
                axis.plot(
                    *zip(*points), style, color=colour, label=f"{label} ({'held-out' if prefix else 'train batches'})"
                )
    rewards_axis.set_title("implicit reward β·log(π/π_ref): chosen − rejected")
    rewards_axis.set_ylabel("margin (nats·β) / accuracy")
    logps_axis.set_title("log-probability of the responses (as in the loss)")
    logps_axis.set_ylabel("log π(y|x) (nats)")
    for axis in (rewards_axis, logps_axis):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, path, title)


def write_curves(trainer: DPOTrainer, training_args: DPOTrainingConfig, output_dir: Path, recipe_path: Path) -> None:
    """log_history.json, loss_curve.png and dpo_curves.png in output_dir."""
    write_json(output_dir / "log_history.json", trainer.state.log_history)
    loss = "+".join(training_args.loss_type)
    plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png", f"DPO ({loss}): {recipe_path}")
    plot_dpo_curves(
        trainer.state.log_history,
        output_dir / "dpo_curves.png",
        f"DPO ({loss}, β={training_args.beta}): {recipe_path}",
    )
