"""PPO (and TRL's GRPO/RLOO through the same stage): reward, gold reward and KL over the steps, before/after."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section
from eval.sections.common import numeric_keys, series

# Panel title -> log-history keys drawn in it (those present are drawn; others skipped).
PANELS = {
    "rewards (mean per response)": ("rm_reward", "gold_reward", "total_reward", "reward"),
    "KL to the reference (nats per response)": ("kl_k1", "kl_k2", "kl_k3", "kl"),
    "β (KL coefficient)": ("kl_coef",),
    "entropy (nats per token)": ("entropy",),
    "response length (tokens)": ("response_length", "completions/mean_length"),
    "clip fraction": ("policy_clip_fraction", "value_clip_fraction", "clip_ratio/region_mean"),
    "explained variance": ("explained_variance",),
}
SUMMARY = (
    "algorithm",
    "gold_reward_before",
    "gold_reward_after",
    "gold_reward_gain",
    "rm_reward_before",
    "rm_reward_after",
    "rm_reward_gain",
    "final_kl_coef",
    "steps",
    "episodes",
    "samples_per_second",
    "train_seconds",
)


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("ppo")
    if not outputs:
        return None
    section = Section("ppo", "PPO")
    section.text(
        "Online RL from the SFT model: the reward model's score (or the gold reward), the gold reward that judges "
        "it, and the KL of the policy to the frozen SFT reference per response (k1 = log π/π_ref, k2 = ½(log r)², "
        "k3 = (r − 1) − log r, summed over the response), over the PPO steps as the stage logged them."
    )
    section.table(["output"] + list(SUMMARY), [[o.name] + [o.metrics.get(k) for k in SUMMARY] for o in outputs])
    data = {}
    for output in outputs:
        history = output.log_history
        available = set(numeric_keys(history))
        panels = {
            title: {key: series(history, key) for key in keys if key in available} for title, keys in PANELS.items()
        }
        panels = {title: curves for title, curves in panels.items() if curves}
        section.figure(
            figures.panels(panels, ctx.figure_path(f"ppo_{output.name}"), f"{output.name}: PPO", "step"),
            f"{output.name}: rewards, KL and diagnostics per PPO step (log_history.json).",
        )
        kl = output.metrics.get("kl_to_reference") or output.metrics.get("kl_to_sft") or {}
        if kl:
            section.table(
                ["estimator", "KL to the reference after training (nats per response)"],
                [[k, v] for k, v in kl.items()],
                caption=f"{output.name}: KL on held-out prompts (metrics.json)",
            )
        data[output.name] = {
            "summary": {key: output.metrics.get(key) for key in SUMMARY},
            "kl_to_reference": kl,
            "curves": {key: {"step": s[0], "value": s[1]} for curves in panels.values() for key, s in curves.items()},
        }
    section.data = data
    return section
