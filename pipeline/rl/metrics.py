"""What a PPO run reports: one log line per step (summary_line), one at the end (outcome_line), and the training
half of metrics.json (training_metrics).
"""

from __future__ import annotations

from typing import Any

from pipeline.rl.config import PPOConfig
from pipeline.rl.prompts import PromptSets


def summary_line(entry: dict[str, Any], max_steps: int) -> str:
    """One log line per step: rewards, KL and β, response length and EOS, entropy, clipping, critic, speed."""
    reward = f"gold {entry['gold_reward']:.3f}" if entry.get("gold_reward") is not None else ""
    if entry.get("rm_reward") is not None:
        reward += f" rm {entry['rm_reward']:.3f}"
    return (
        f"step {entry['step']}/{max_steps}: {reward.strip()} | KL k1 {entry['kl_k1']:.3f} k3 {entry['kl_k3']:.3f} β "
        f"{entry['kl_coef']:.4f} | len {entry['response_length']:.1f} eos {entry['finished_fraction']:.2f} entropy "
        f"{entry['entropy']:.3f} clip {entry['policy_clip_fraction']:.3f} ev {entry['explained_variance']:.2f} | "
        f"{entry['samples_per_second']:.1f} samples/s"
    )


def outcome_line(metrics: dict[str, Any]) -> str:
    """One log line: the gold (and RM) reward of the SFT model and of the policy, its KL, and the verdict."""
    parts = [
        f"{name} {metrics[f'{name}_before']} -> {metrics[f'{name}_after']}"
        for name in ("gold_reward", "gold_reward_greedy", "rm_reward")
        if f"{name}_after" in metrics
    ]
    parts.append(f"KL exact {metrics['kl_to_reference']['exact']} nats")
    if metrics.get("judgement"):
        parts.append(metrics["judgement"]["reason"])
    return "; ".join(parts)


def training_metrics(
    log_history: list[dict[str, Any]],
    config: PPOConfig,
    counts: dict[str, Any],
    prompt_sets: PromptSets,
    train_seconds: float,
    start_step: int,
    checkpoint: str | None,
    beta: float,
) -> dict[str, Any]:
    """metrics.json: what training did (β, steps, episodes, prompts) and how fast."""
    steps_run = config.max_steps - start_step
    recent = log_history[-max(1, len(log_history) // 10) :]  # the last tenth of training, for the timing split
    return {
        "final_kl_coef": round(beta, 6),
        "steps": config.max_steps,
        "episodes": log_history[-1]["episodes"] if log_history else 0,
        **counts,
        **prompt_sets.as_dict(),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / steps_run, 3) if steps_run else None,
        "samples_per_second": round(sum(e["samples_per_second"] for e in recent) / len(recent), 2) if recent else None,
        "tokens_per_second": round(sum(e["tokens_per_second"] for e in recent) / len(recent), 1) if recent else None,
        "time_split": {
            name: round(sum(e.get(f"time_{name}", 0.0) for e in log_history), 2)
            for name in ("generation", "forward", "scoring", "optimisation")
        },
        "resumed_from": checkpoint,
    }
