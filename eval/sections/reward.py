"""The reward model: held-out pair accuracy, margins, calibration, its agreement with the gold reward, and
the Best-of-N curve (eval/best_of_n.py's JSON in the reward stage's output)."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number

KEYS = (
    "heldout_accuracy_before",
    "heldout_accuracy",
    "heldout_mean_margin",
    "heldout_loss",
    "heldout_pairs",
    "mode",
    "steps",
)
CORRELATIONS = ("rm_gold_pearson", "rm_gold_spearman", "rm_gold_spearman_within_prompt")


def _calibration_series(calibration: dict | None) -> tuple[list[float], list[float]]:
    bins = [b for b in (calibration or {}).get("bins", []) if "mean_confidence" in b]
    return [b["mean_confidence"] for b in bins], [b["share_right"] for b in bins]


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("reward")
    if not outputs:
        return None
    section = Section("reward", "Reward model")
    section.text(
        "Accuracy = share of held-out preference pairs where the reward model scores the chosen response above "
        "the rejected one (before and after training); margin = mean r_chosen − r_rejected; calibration compares "
        "σ(r_a − r_b) with how often the preferred response really is the better one (ECE, lower is better)."
    )
    section.table(
        ["output"] + list(KEYS) + ["ECE (held-out)"],
        [
            [o.name] + [o.metrics.get(k) for k in KEYS] + [dig(o.metrics, "heldout_calibration", "ece")]
            for o in outputs
        ],
    )
    data = {}
    for output in outputs:
        metrics = output.metrics
        entry = {key: metrics.get(key) for key in KEYS}
        entry["ece"] = dig(metrics, "heldout_calibration", "ece")
        entry["calibration"] = {
            "held_out": metrics.get("heldout_calibration"),
            "policy_samples": metrics.get("calibration_on_samples"),
        }
        entry["accuracy_by_kind"] = metrics.get("heldout_accuracy_by_kind")
        entry.update({key: metrics.get(key) for key in CORRELATIONS})
        by_kind = metrics.get("heldout_accuracy_by_kind") or {}
        if by_kind:
            section.table(
                ["pairs differing in", "pairs", "accuracy"],
                [[k, v.get("pairs"), v.get("accuracy")] for k, v in by_kind.items()],
                caption=f"{output.name}: held-out accuracy by what separates chosen from rejected",
            )
        if any(metrics.get(key) is not None for key in CORRELATIONS):
            section.text(
                f"{output.name}: on fresh samples of the policy, the RM score correlates with the gold reward: "
                f"Pearson {number(metrics.get('rm_gold_pearson'))}, Spearman "
                f"{number(metrics.get('rm_gold_spearman'))}, Spearman within a prompt "
                f"{number(metrics.get('rm_gold_spearman_within_prompt'))}."
            )
        curves = {
            "held-out pairs": _calibration_series(metrics.get("heldout_calibration")),
            "policy samples vs gold": _calibration_series(metrics.get("calibration_on_samples")),
            "perfect calibration": ([0.5, 1.0], [0.5, 1.0]),
        }
        section.figure(
            figures.lines(
                curves,
                ctx.figure_path(f"calibration_{output.name}"),
                f"{output.name}: calibration",
                "confidence max(p, 1 − p), p = σ(r_a − r_b)",
                "share of pairs ordered right",
                markers=True,
            ),
            f"{output.name}: calibration of the reward model's pairwise probabilities (from metrics.json).",
        )
        histogram = output.path / "reward_histogram.png"
        if histogram.is_file():
            section.figure(
                histogram,
                f"{output.name}: rewards of chosen vs rejected held-out responses (the reward stage's own plot).",
            )
            entry["histogram_figure"] = str(histogram)
        bon = output.json("best_of_n.json")
        if isinstance(bon, dict) and bon.get("table"):
            table = bon["table"]
            gold = "gold" in table[0]
            section.text(
                f"**Best-of-N** ({output.name}/best_of_n.json): the policy `{bon.get('policy')}` samples "
                f"{bon.get('samples_per_prompt')} responses for each of {bon.get('prompts')} held-out prompts; the RM "
                "picks the best of N (expected over all N-subsets). KL(best-of-N ‖ policy) = log N − (N−1)/N "
                "nats."
            )
            section.table(
                ["N", "KL (nats)", "RM reward of pick", "gold of pick", "gold of oracle pick"],
                [[r["n"], r.get("kl_nats"), r.get("reward"), r.get("gold"), r.get("gold_oracle")] for r in table],
            )
            ns = [r["n"] for r in table]
            panels = {"RM reward of the pick": {"RM picks": (ns, [r["reward"] for r in table])}}
            if gold:
                panels["gold reward of the pick"] = {
                    "RM picks": (ns, [r["gold"] for r in table]),
                    "gold picks (oracle)": (ns, [r["gold_oracle"] for r in table]),
                }
            section.figure(
                figures.panels(
                    panels, ctx.figure_path(f"best_of_n_{output.name}"), "Best-of-N", "N", columns=2, logx=True
                ),
                "Best-of-N: what the reward model sees (left) and what is true (right) as N grows.",
            )
            optimum = bon.get("kl_regularised")
            if optimum:
                section.text(
                    "**The KL-regularised optimum** π* ∝ π·exp(r/β) on the same samples: what PPO's objective "
                    "E[r] − β·KL allows at each β with this reward model (gold-tilted: with the gold reward as "
                    "r)."
                )
                section.table(
                    ["β", "KL (nats)", "RM reward", "gold", "gold-tilted: gold", "gold-tilted: KL"],
                    [
                        [
                            r["beta"],
                            r.get("kl_nats"),
                            r.get("reward"),
                            r.get("gold"),
                            r.get("gold_oracle"),
                            r.get("gold_oracle_kl_nats"),
                        ]
                        for r in optimum
                    ],
                )
            entry["best_of_n"] = {
                "table": table,
                "kl_regularised": optimum,
                "policy_mean_gold": bon.get("policy_mean_gold"),
                "policy": bon.get("policy"),
                "prompts": bon.get("prompts"),
                "samples_per_prompt": bon.get("samples_per_prompt"),
            }
        data[output.name] = entry
    section.data = data
    return section
