"""PPO vs DPO vs Best-of-N vs SFT on one scale: gold reward against KL to the SFT model, win rates against
SFT (by gold reward and by the reward model), and the reward model's score distribution per policy.

The report measures PPO, DPO and SFT itself, all on the same held-out prompts with the same seed and length
limit, through pipeline.policy_eval (the code the DPO stage measures itself with): so the points share
prompts and units even where the stages measured themselves differently. KL is the exact per-position KL
summed along each sampled response (see eval/kl_study.py), averaged over prompts. Best-of-N comes from the
reward stage's best_of_n.json, at its analytic KL log N − (N−1)/N. With `--no-studies` the stages' own
numbers are plotted instead.
"""

from __future__ import annotations

import logging
from typing import Any

from eval import figures
from eval import metrics as local_metrics
from eval.collect import StageOutput
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number

logger = logging.getLogger(__name__)


def gold_scorer(prompts, responses, finished) -> list[float]:
    """The toy world's gold reward through its local `evaluate` metric."""
    result = local_metrics.load("gold_reward").compute(predictions=list(responses), prompts=list(prompts), finished=[bool(f) for f in finished])
    return list(result["scores"])


def rm_scorer(ctx: Context, reward: StageOutput):
    from pipeline.reward_model import score

    model, tokenizer = ctx.reward_model(reward)

    def scorer(prompts, responses, finished) -> list[float]:
        return score(model, tokenizer, list(prompts), list(responses), finished=[bool(f) for f in finished])

    return scorer


def measure(ctx: Context, sft: StageOutput, policies: list[StageOutput], reward: StageOutput | None) -> dict[str, Any]:
    """Each policy against SFT on the same prompts (pipeline.policy_eval.evaluate_policy), plus the RM scores."""
    from pipeline.policy_eval import evaluate_policy

    prompts = ctx.toy_prompts(ctx.options.compare_prompts, stage="sft")
    sft_model, tokenizer = ctx.model(sft)
    scorer = rm_scorer(ctx, reward) if reward is not None else None
    results = {}
    for policy in policies:
        model, _ = ctx.model(policy)
        evaluation = evaluate_policy(model, tokenizer, prompts, reference=sft_model, gold=gold_scorer, scorer=scorer,
                                     max_new_tokens=ctx.options.compare_max_new_tokens, seed=ctx.options.seed)
        results[policy.name] = {"stage": policy.stage, "summary": evaluation.summary,
                                "rm_scores_policy": [s["reward_model"] for s in evaluation.samples
                                                     if s["model"] == "policy" and s["strategy"] == "sampled" and "reward_model" in s],
                                "rm_scores_sft": [s["reward_model"] for s in evaluation.samples
                                                  if s["model"] == "reference" and s["strategy"] == "sampled" and "reward_model" in s]}
    return {"prompts": len(prompts), "max_new_tokens": ctx.options.compare_max_new_tokens, "seed": ctx.options.seed, "policies": results}


def stage_reported(policies: list[StageOutput], sft: StageOutput | None) -> dict[str, dict[str, float | None]]:
    """What each stage measured itself: (KL to SFT, gold reward of sampled responses)."""
    points = {}
    if sft is not None:
        points[sft.name] = {"kl": 0.0, "gold": number(sft.metrics.get("gold_reward_sampled"))}
    for policy in policies:
        metrics = policy.metrics
        kl = metrics.get("kl_to_sft") or metrics.get("kl_to_reference") or {}
        points[policy.name] = {
            "kl": number(kl.get("exact", kl.get("k3"))) if isinstance(kl, dict) else None,
            "gold": number(metrics.get("gold_reward_sampled", metrics.get("gold_reward_after"))),
        }
    return points


def build(ctx: Context) -> Section | None:
    sft = ctx.runs.main("sft")
    policies = ctx.runs.of_stage("ppo") + ctx.runs.of_stage("dpo")
    reward = ctx.runs.main("reward")
    bon = reward.json("best_of_n.json") if reward is not None else None
    bon_table = bon["table"] if isinstance(bon, dict) and bon.get("table") and "gold" in bon["table"][0] else None
    if sft is None or not (policies or bon_table):
        return None
    section = Section("comparison", "PPO vs DPO vs Best-of-N vs SFT")
    strangers = [p.name for p in policies if ctx.runs.input_of(p, "model_name_or_path") is not sft]
    if strangers:
        section.text(f"Note: {', '.join(strangers)} did not start from {sft.name} (see their manifests' inputs); their KL is still "
                     f"measured to {sft.name}, the reference of this comparison.")
    data: dict[str, Any] = {"reference": sft.name, "stage_reported": stage_reported(policies, sft)}
    measured = None
    if ctx.options.studies and ctx.toy_prompts(1, stage="sft") is not None and sft.has_model() and any(p.has_model() for p in policies):
        measured = measure(ctx, sft, [p for p in policies if p.has_model()], reward)
        data["measured"] = measured
    points: dict[str, tuple[list[float], list[float]]] = {}
    if measured:
        summaries = measured["policies"]
        first = next(iter(summaries.values()))["summary"]
        points[f"{sft.name} (reference)"] = ([0.0], [first["reference"]["sampled"]["gold_reward"]])
        for name, result in summaries.items():
            s = result["summary"]
            points[f"{name} ({result['stage']})"] = ([s["kl"]["exact"]["mean"]], [s["policy"]["sampled"]["gold_reward"]])
        section.text(f"Measured by the report: {measured['prompts']} held-out toy prompts, responses of up to "
                     f"{measured['max_new_tokens']} tokens, seed {measured['seed']}; greedy and sampled (temperature 1, no "
                     "top-k/top-p) responses of each policy and of the SFT model on the same prompts. KL = exact per-position "
                     "KL to SFT summed along each sampled response (k1/k3 beside it); win rate = share of prompts where the "
                     "policy's response scores above SFT's (ties count ½).")
        rows = [[sft.name, "sft", first["reference"]["greedy"].get("gold_reward"), first["reference"]["sampled"].get("gold_reward"),
                 first["reference"]["sampled"].get("reward_model"), 0.0, 0.0, 0.0, None, None, None]]
        for name, result in summaries.items():
            s = result["summary"]
            rows.append([name, result["stage"], s["policy"]["greedy"].get("gold_reward"), s["policy"]["sampled"].get("gold_reward"),
                         s["policy"]["sampled"].get("reward_model"), s["kl"]["exact"]["mean"], s["kl"]["k1"]["mean"], s["kl"]["k3"]["mean"],
                         dig(s, "win_rate", "gold_reward", "sampled"), dig(s, "win_rate", "gold_reward", "greedy"),
                         dig(s, "win_rate", "reward_model", "sampled")])
        section.table(["policy", "stage", "gold (greedy)", "gold (sampled)", "RM (sampled)", "KL exact", "KL k1", "KL k3",
                       "win rate vs SFT, gold (sampled)", "win rate, gold (greedy)", "win rate, RM (sampled)"], rows)
    else:
        for name, point in data["stage_reported"].items():
            if point["kl"] is not None and point["gold"] is not None:
                points[name] = ([point["kl"]], [point["gold"]])
        section.text("Points as each stage measured itself (gold reward of sampled responses; KL to SFT by the exact sum or "
                     "k3): prompts and settings may differ between stages.")
    if bon_table:
        points["Best-of-N (RM picks)"] = ([r["kl_nats"] for r in bon_table], [r["gold"] for r in bon_table])
        section.text(f"Best-of-N from {reward.name}/best_of_n.json ({bon.get('prompts')} prompts, its own samples of "
                     f"`{bon.get('policy')}`): gold reward of the RM's pick against the analytic KL log N − (N−1)/N; N = "
                     + ", ".join(str(r["n"]) for r in bon_table) + ".")
    section.figure(
        figures.scatter(points, ctx.figure_path("gold_vs_kl"), "gold reward against KL to SFT", "KL(policy ‖ SFT), nats per response",
                        "gold reward (sampled responses)", connect=["Best-of-N (RM picks)"],
                        annotations={"Best-of-N (RM picks)": [f"N={r['n']}" for r in bon_table]} if bon_table else None),
        "Gold reward against KL to the SFT model: where each method lands, and Best-of-N as N grows.",
    )
    data["points"] = {name: {"kl": xy[0], "gold": xy[1]} for name, xy in points.items()}
    if measured and reward is not None:
        groups = {f"{sft.name} (reference)": next(iter(measured["policies"].values()))["rm_scores_sft"]}
        groups.update({name: result["rm_scores_policy"] for name, result in measured["policies"].items()})
        section.figure(figures.histograms(groups, ctx.figure_path("rm_histograms"), "reward-model scores of sampled responses", "RM score"),
                       f"Distribution of {reward.name}'s scores of each policy's sampled responses on the same prompts.")
    section.data = data
    return section
