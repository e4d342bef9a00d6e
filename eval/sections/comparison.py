"""Every policy on one scale, beside what the SFT model gives for free: gold reward against KL to the SFT model.

The free baselines (all measured by the stages through pipeline.policy_eval and pipeline.best_of_n; the report
renders them and measures nothing here):
  * the sharpening frontier: the SFT model sampled at lower temperatures (exact KL to it at temperature 1);
  * Best-of-N with the reward model, at the plug-in exact KL of the Best-of-N distribution over the distinct
    samples (the analytic log N − (N−1)/N drawn dashed: it is only a bound);
  * the KL-regularised optimum π* ∝ π_SFT·exp(r/β) of PPO's objective, estimated on the same samples;
and the policies: PPO (its path during training, on training prompts with the k1 estimator, and its final
point) and DPO. A policy *beats sharpening* when its sampled gold exceeds the frontier's at its KL by the margin
of pipeline.policy_eval.BEATS_MARGIN and its greedy gold did not fall below the SFT model's; otherwise it has
learned a temperature, not a preference.
"""

from __future__ import annotations

from typing import Any

from eval import figures
from eval.collect import StageOutput
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number


def policy_point(output: StageOutput) -> dict[str, Any]:
    """What a PPO or DPO stage measured of its policy and of the SFT model (older metrics.json layouts included)."""
    metrics = output.metrics
    kl = metrics.get("kl_to_sft") or metrics.get("kl_to_reference") or {}
    after, before = metrics.get("gold_reward_after"), metrics.get("gold_reward_before")
    if isinstance(after, dict):  # DPO: {"greedy": ..., "sampled": ...}
        sampled, greedy = number(after.get("sampled")), number(after.get("greedy"))
        sft_sampled, sft_greedy = number(dig(before, "sampled")), number(dig(before, "greedy"))
    else:  # PPO: sampled at the top level, greedy beside it
        sampled, greedy = (
            number(metrics.get("gold_reward_sampled", after)),
            number(metrics.get("gold_reward_greedy_after")),
        )
        sft_sampled, sft_greedy = number(before), number(metrics.get("gold_reward_greedy_before"))
    return {
        "stage": output.stage,
        "gold_sampled": sampled,
        "gold_greedy": greedy,
        "kl_exact": number(kl.get("exact", kl.get("k3"))) if isinstance(kl, dict) else None,
        "sft_gold_sampled": sft_sampled,
        "sft_gold_greedy": sft_greedy,
        "judgement": metrics.get("judgement"),
        "sharpening": metrics.get("sharpening") or [],
        "final_norm_learning_rate": output.recipe.get("final_norm_learning_rate"),
    }


def yes_no(value: Any) -> str:
    return "—" if value is None else "**yes**" if value else "no"


def build(ctx: Context) -> Section | None:
    sft = ctx.runs.main("sft")
    policies = ctx.runs.of_stage("ppo") + ctx.runs.of_stage("dpo")
    reward = ctx.runs.main("reward")
    bon = reward.json("best_of_n.json") if reward is not None else None
    bon_table = bon["table"] if isinstance(bon, dict) and bon.get("table") and "gold" in bon["table"][0] else None
    if sft is None or not (policies or bon_table):
        return None
    section = Section("comparison", "Gold reward against KL: every policy beside the free baselines")
    notes: list[str] = []  # shown under the figure, which comes first
    notes.append(
        "Each point is measured by its stage on the held-out test prompts (samples at temperature 1; KL = the exact "
        "per-position KL to the SFT model summed along each sampled response). The **sharpening frontier** is the SFT "
        "model sampled at lower temperatures: no training at all. A policy **beats sharpening** when its sampled gold "
        "exceeds the frontier's at the same KL by the required margin and its greedy gold did not fall below the SFT "
        "model's; otherwise it learned a temperature, not a preference."
    )
    world = sft.metrics.get("toy_world") or next(
        (p.metrics["toy_world"] for p in policies if p.metrics.get("toy_world")), None
    )
    if world:
        knobs = ", ".join(f"{key} {value}" for key, value in world.items() if key not in ("scenario", "seed"))
        notes.append(
            f"The toy world: scenario **{world.get('scenario', 'plain')}**, seed {world.get('seed')} ({knobs})."
        )
    strangers = [p.name for p in policies if ctx.runs.input_of(p, "model_name_or_path") is not sft]
    if strangers:
        notes.append(f"Note: {', '.join(strangers)} did not start from {sft.name} (see their manifests' inputs).")

    points = {policy.name: policy_point(policy) for policy in policies}
    frontier_source = next((name for name, point in points.items() if point["sharpening"]), None)
    frontier = points[frontier_source]["sharpening"] if frontier_source else []
    curves: dict[str, dict[str, Any]] = {}
    if frontier:
        curves["SFT at lower temperatures (sharpening frontier)"] = {
            "kl": [p["kl_exact"] for p in frontier],
            "gold": [p.get("gold_reward") for p in frontier],
            "labels": [f"T={p['temperature']:g}" for p in frontier],
            "style": "frontier",
        }
    if bon_table:
        curves["Best-of-N with the RM (plug-in KL)"] = {
            "kl": [r["kl_nats"] for r in bon_table],
            "gold": [r["gold"] for r in bon_table],
            "labels": [f"N={r['n']}" for r in bon_table],
            "style": "line",
        }
        if "kl_bound_nats" in bon_table[0]:
            curves["Best-of-N at the analytic bound log N − (N−1)/N"] = {
                "kl": [r["kl_bound_nats"] for r in bon_table],
                "gold": [r["gold"] for r in bon_table],
                "labels": [],
                "style": "dashed",
            }
        optimum = [r for r in bon.get("kl_regularised") or [] if "gold" in r]
        if optimum:
            curves["π* ∝ π_SFT·exp(r/β) (KL-regularised optimum)"] = {
                "kl": [r["kl_nats"] for r in optimum],
                "gold": [r["gold"] for r in optimum],
                "labels": [f"β={r['beta']:g}" for r in optimum],
                "style": "line",
            }
    for output in ctx.runs.of_stage("ppo"):
        path = [
            (e["kl_k1"], e["gold_reward"])
            for e in output.log_history
            if number(e.get("kl_k1")) is not None and number(e.get("gold_reward")) is not None
        ]
        if path:
            curves[f"{output.name} during training (train prompts, KL k1)"] = {
                "kl": [p[0] for p in path],
                "gold": [p[1] for p in path],
                "labels": [],
                "style": "path",
            }
    dots = {
        "SFT (T = 1)": (
            0.0,
            points[frontier_source]["sft_gold_sampled"]
            if frontier_source
            else number(sft.metrics.get("gold_reward_sampled")),
        )
    }
    dots.update(
        {f"{name} ({point['stage']})": (point["kl_exact"], point["gold_sampled"]) for name, point in points.items()}
    )
    section.figure(
        figures.gold_against_kl(
            curves, dots, ctx.figure_path("gold_vs_kl"), "gold reward against KL to the SFT model"
        ),
        "Gold reward of sampled responses against KL(policy ‖ SFT). Lines: the free baselines (sharpening, "
        "Best-of-N, π*) and PPO's path during training; dots: the trained policies. A policy above the sharpening "
        "line at its KL learned more than a temperature.",
    )
    for note in notes:
        section.text(note)

    rows = []
    sft_point = next(iter(points.values())) if points else None
    if sft_point:
        rows.append(
            [
                sft.name,
                "sft",
                sft_point["sft_gold_sampled"],
                sft_point["sft_gold_greedy"],
                0.0,
                None,
                None,
                "—",
                "the reference",
            ]
        )
    for name, point in points.items():
        judgement = point["judgement"] or {}
        reason = judgement.get("reason", "no frontier measured (an older stage output)")
        if point["final_norm_learning_rate"]:
            reason += f"; trains its final norm at {point['final_norm_learning_rate']:g}, which learns a temperature"
        rows.append(
            [
                name,
                point["stage"],
                point["gold_sampled"],
                point["gold_greedy"],
                point["kl_exact"],
                judgement.get("frontier_gold_at_kl"),
                judgement.get("margin_over_frontier"),
                yes_no(judgement.get("beats_sharpening")),
                reason,
            ]
        )
    for row in bon_table or []:
        if "margin_over_frontier" in row and row["n"] > 1:
            rows.append(
                [
                    f"Best-of-{row['n']}",
                    "reward",
                    row["gold"],
                    None,
                    row["kl_nats"],
                    row["frontier_gold_at_kl"],
                    row["margin_over_frontier"],
                    yes_no(row["beats_sharpening"]),
                    f"{bon.get('prompts')} prompts, its own frontier",
                ]
            )
    section.table(
        [
            "policy",
            "stage",
            "gold (sampled)",
            "gold (greedy)",
            "KL exact",
            "frontier gold at that KL",
            "margin",
            "beats sharpening",
            "why",
        ],
        rows,
    )
    if frontier:
        section.table(
            ["temperature", "gold", "RM score", "KL exact (nats)", "finished"],
            [
                [p["temperature"], p.get("gold_reward"), p.get("reward_model"), p["kl_exact"], p.get("finished")]
                for p in frontier
            ],
            caption=f"The sharpening frontier as {frontier_source} measured it",
        )

    for trait in sorted(
        {name for policy in policies for name in (dig(policy.metrics, "policy_eval", "traits") or [])}
    ):
        section.table(
            ["model", "greedy", "sampled (T = 1)"],
            trait_rows(trait, sft.name, policies, frontier, bon_table or []),
            caption=f"Share of responses with the trait '{trait}' ({TRAIT_NOTES.get(trait, 'see the toy world')}): "
            "the SFT model, each policy, the SFT model at lower temperatures, and Best-of-N's picks",
        )

    histograms = rm_score_groups(policies)
    if histograms:
        section.figure(
            figures.histograms(
                histograms, ctx.figure_path("rm_histograms"), "reward-model scores of sampled responses", "RM score"
            ),
            "Distribution of the reward model's scores of each policy's sampled responses and of the SFT model's, "
            "from the stages' samples.json.",
        )
    section.data = {
        "reference": sft.name,
        "policies": points,
        "frontier_source": frontier_source,
        "curves": curves,
        "points": {name: {"kl": [xy[0]], "gold": [xy[1]]} for name, xy in dots.items()},
    }
    return section


TRAIT_NOTES = {
    "demo_flaw": "the flawed demonstrators' habit, an answer wrapped in 'sure, ... hope this helps.'",
    "sycophancy": "agreeing with the user's wrong guess, on the prompts with one",
    "correct_wrong_suggestion": "a right answer, on the prompts with a wrong guess",
    "correct_right_suggestion": "a right answer, on the prompts with a right guess",
    "correct_none_suggestion": "a right answer, on the prompts without a guess",
}


def trait_rows(
    trait: str,
    sft_name: str,
    policies: list[StageOutput],
    frontier: list[dict[str, Any]],
    bon_table: list[dict[str, Any]],
) -> list[list[Any]]:
    """The share of responses with `trait`: SFT and each policy (greedy, sampled), the frontier, Best-of-N's picks."""
    rows: list[list[Any]] = []
    for output in policies:
        summary = output.metrics.get("policy_eval") or {}
        if not rows:
            rows.append(
                [sft_name, dig(summary, "reference", "greedy", trait), dig(summary, "reference", "sampled", trait)]
            )
        rows.append([output.name, dig(summary, "policy", "greedy", trait), dig(summary, "policy", "sampled", trait)])
    rows += [
        [f"{sft_name} at T = {point['temperature']:g}", None, point.get(trait)]
        for point in frontier
        if point["temperature"] != 1.0
    ]
    rows += [
        [f"Best-of-{row['n']} (RM's pick)", None, row.get(trait)] for row in bon_table if row["n"] > 1 and trait in row
    ]
    return rows


def rm_score_groups(policies: list[StageOutput]) -> dict[str, list[float]]:
    """RM scores of sampled responses per policy (and of the SFT model, from the first policy's samples)."""
    groups: dict[str, list[float]] = {}
    for output in policies:
        for model in ("reference", "policy"):
            scores = [
                s["reward_model"]
                for s in output.samples
                if s.get("model") == model and s.get("strategy") == "sampled" and "reward_model" in s
            ]
            name = "SFT" if model == "reference" else output.name
            if scores and name not in groups:
                groups[name] = scores
    return groups if len(groups) > 1 else {}
