"""DPO: implicit-reward margins and accuracies over the steps, held-out before/after, gold reward, KL to SFT."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section
from eval.sections.common import numeric_keys, series

PANELS = {
    "implicit reward margin β·Δlog-ratio": ("rewards/margins", "eval_rewards/margins"),
    "implicit reward accuracy": ("rewards/accuracies", "eval_rewards/accuracies"),
    "implicit rewards": ("rewards/chosen", "rewards/rejected", "eval_rewards/chosen", "eval_rewards/rejected"),
    "log-probabilities": ("logps/chosen", "logps/rejected", "eval_logps/chosen", "eval_logps/rejected"),
}
SUMMARY = (
    "loss_type",
    "beta",
    "mode",
    "implicit_reward_accuracy",
    "implicit_reward_margin",
    "chosen_logp_fell",
    "gold_reward_greedy",
    "gold_reward_sampled",
    "steps",
    "train_seconds",
)


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("dpo")
    if not outputs:
        return None
    section = Section("dpo", "DPO")
    section.text(
        "Direct preference optimisation from the SFT model. The implicit reward of a response is "
        "β·(log π − log π_ref); its margin (chosen − rejected) and accuracy on preference pairs are DPO's own "
        "measure of how well the preferences were learnt. Watch the chosen log-probability: it often falls too."
    )
    section.table(["output"] + list(SUMMARY), [[o.name] + [o.metrics.get(k) for k in SUMMARY] for o in outputs])
    data = {}
    for output in outputs:
        history, metrics = output.log_history, output.metrics
        available = set(numeric_keys(history))
        panels = {
            title: {key: series(history, key) for key in keys if key in available} for title, keys in PANELS.items()
        }
        panels = {title: curves for title, curves in panels.items() if curves}
        section.figure(
            figures.panels(panels, ctx.figure_path(f"dpo_{output.name}"), f"{output.name}: DPO", "step", columns=2),
            f"{output.name}: DPO margins, accuracies, implicit rewards and log-probabilities (log_history.json).",
        )
        before, after = metrics.get("held_out_before") or {}, metrics.get("held_out_after") or {}
        if before or after:
            section.table(
                ["held-out pairs", "before", "after"],
                [[k, before.get(k), after.get(k)] for k in dict.fromkeys(list(before) + list(after))],
                caption=f"{output.name}: held-out preference pairs before and after DPO (metrics.json)",
            )
        gold_before, gold_after = metrics.get("gold_reward_before") or {}, metrics.get("gold_reward_after") or {}
        kl, wins = metrics.get("kl_to_sft") or {}, metrics.get("win_rate_vs_sft") or {}
        if gold_after:
            section.table(
                ["strategy", "gold reward of SFT", "gold reward after DPO"],
                [[s, gold_before.get(s), gold_after.get(s)] for s in gold_after],
            )
        if kl:
            section.table(["estimator", "KL to SFT (nats per response)"], [[k, v] for k, v in kl.items()])
        data[output.name] = {
            "summary": {key: metrics.get(key) for key in SUMMARY},
            "held_out_before": before,
            "held_out_after": after,
            "gold_reward_before": gold_before,
            "gold_reward_after": gold_after,
            "kl_to_sft": kl,
            "win_rate_vs_sft": wins,
            "curves": {key: {"step": s[0], "value": s[1]} for curves in panels.values() for key, s in curves.items()},
        }
    section.data = data
    return section
