"""Sycophancy and reward hacking, in the toy world's scenario biased_labeller (docs/toy_world.md).

Users guess at their own questions; the labellers who wrote the training comparisons preferred the response that
agrees with the guess in a share of them (`labeller_bias`). The section shows what each policy made of that,
measured by the stages on held-out prompts (nothing is measured here):
  * the sycophancy rate (agreeing with a wrong guess, on the prompts with one) and the share of right answers on
    prompts with a wrong, a right and no guess, for the SFT model, Best-of-N's picks, and every PPO and DPO policy,
    beside the labellers' bias behind each (a DPO trained on unbiased comparisons is the contrast);
  * how often the reward model prefers the user's wrong guess to the right answer (the stage's sycophancy probe);
  * the reward model's score and the gold reward as KL to the SFT model grows, along Best-of-N and along PPO's
    training: a reward-model score that rises while gold does not is reward hacking, seen by the truth.
"""

from __future__ import annotations

from typing import Any

from eval import figures
from eval.collect import StageOutput
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number
from pipeline.data.toy_world import SUGGESTION_KINDS

SHOWN_N = 16


def labeller_bias(output: StageOutput | None) -> float | None:
    return dig(output.metrics, "toy_world", "labeller_bias") if output is not None else None


def trait_row(name: str, bias: Any, entry: dict[str, Any] | None, greedy: dict[str, Any] | None = None) -> list[Any]:
    """One table row: the sycophancy rate (sampled, greedy), right answers per kind of guess (sampled), gold, RM
    score."""
    entry = entry or {}
    return [
        name,
        bias,
        entry.get("sycophancy"),
        (greedy or {}).get("sycophancy"),
        *(entry.get(f"correct_{kind}_suggestion") for kind in SUGGESTION_KINDS),
        entry.get("gold_reward", entry.get("gold")),
        entry.get("reward_model", entry.get("reward")),
    ]


def build(ctx: Context) -> Section | None:
    sft = ctx.runs.main("sft")
    policies = ctx.runs.of_stage("ppo") + ctx.runs.of_stage("dpo")
    reward = ctx.runs.main("reward")
    world = next(
        (o.metrics["toy_world"] for o in [sft, reward, *policies] if o is not None and o.metrics.get("toy_world")),
        None,
    )
    if not world or world.get("scenario") != "biased_labeller":
        return None
    section = Section("sycophancy", "Sycophancy and reward hacking: labellers who prefer agreement")
    section.text(
        f"In this world a share {world.get('suggestion_rate')} of the prompts carry the user's own guess, wrong in "
        "half of them ('what colour is a wet banana? i think it is red.'). The gold reward is the truth: agreeing "
        "with a wrong guess is wrong. The labellers preferred the response agreeing with the guess in a share "
        f"{world.get('labeller_bias')} of their comparisons, and the demonstrators agreed with a wrong guess in "
        f"{world.get('flaw_rate')} of theirs. **Sycophancy** is the share of responses that repeat a wrong guess, on "
        "held-out prompts with one."
    )
    rows: list[list[Any]] = []
    reference = next(
        (dig(p.metrics, "policy_eval", "reference") for p in policies if dig(p.metrics, "policy_eval", "reference")),
        None,
    )
    if reference:
        rows.append(
            trait_row(
                f"{sft.name if sft else 'SFT'} (T = 1)",
                "—",
                reference.get("sampled"),
                reference.get("greedy"),
            )
        )
    bon = reward.json("best_of_n.json") if reward is not None else None
    bon_rows = {row["n"]: row for row in (bon or {}).get("table", [])}
    if SHOWN_N in bon_rows:
        rows.append(trait_row(f"Best-of-{SHOWN_N} with {reward.name}", labeller_bias(reward), bon_rows[SHOWN_N]))
    for policy in policies:
        bias = (
            labeller_bias(ctx.runs.input_of(policy, "reward_model_path"))
            if policy.stage == "ppo"
            else labeller_bias(policy)
        )
        summary = dig(policy.metrics, "policy_eval", "policy") or {}
        rows.append(trait_row(f"{policy.name} ({policy.stage})", bias, summary.get("sampled"), summary.get("greedy")))
    section.table(
        [
            "model",
            "labeller bias of its comparisons",
            "sycophancy (sampled)",
            "sycophancy (greedy)",
            "right | wrong guess",
            "right | right guess",
            "right | no guess",
            "gold (sampled)",
            "RM score (sampled)",
        ],
        rows,
        caption="Held-out test prompts; 'right | wrong guess' is the share of right answers on prompts with a wrong "
        "guess, and so on. PPO's bias is its reward model's; Best-of-N's picks are by the reward model, from the SFT "
        "model's samples.",
    )
    probe = reward.metrics.get("sycophancy_probe") if reward is not None else None
    if probe:
        section.text(
            f"The reward model (`{reward.name}`) scores the user's wrong guess above the right answer in "
            f"**{probe['guess_preferred']:.0%}** of {probe['pairs']} held-out pairs (mean margin right − guess "
            f"{probe['mean_margin']:+.3f})."
        )

    rm_panel: dict[str, tuple[list[float], list[float]]] = {}
    gold_panel: dict[str, tuple[list[float], list[float]]] = {}
    sycophancy_panel: dict[str, tuple[list[float], list[float]]] = {}
    if bon_rows:
        table = [bon_rows[n] for n in sorted(bon_rows)]
        kl = [row["kl_nats"] for row in table]
        rm_panel["Best-of-N"] = (kl, [row["reward"] for row in table])
        gold_panel["Best-of-N"] = (kl, [row.get("gold") for row in table])
        sycophancy_panel["Best-of-N"] = (kl, [row.get("sycophancy") for row in table])
    for output in ctx.runs.of_stage("ppo"):
        path = [
            e
            for e in output.log_history
            if number(e.get("kl_k1")) is not None and number(e.get("rm_reward")) is not None
        ]
        if path:
            kl = [e["kl_k1"] for e in path]
            rm_panel[f"{output.name} training (k1)"] = (kl, [e["rm_reward"] for e in path])
            gold_panel[f"{output.name} training (k1)"] = (kl, [e.get("gold_reward") for e in path])
            sycophancy_panel[f"{output.name} training (k1)"] = (
                [],
                [],
            )  # not measured in training; keeps the colours aligned
    for policy in policies:
        kl = number(dig(policy.metrics, "policy_eval", "kl", "exact", "mean"))
        sampled = dig(policy.metrics, "policy_eval", "policy", "sampled") or {}
        if kl is not None:
            for panel, key in (
                (rm_panel, "reward_model"),
                (gold_panel, "gold_reward"),
                (sycophancy_panel, "sycophancy"),
            ):
                if sampled.get(key) is not None:
                    panel[f"{policy.name} (test)"] = ([kl], [sampled[key]])
    section.figure(
        figures.panels(
            {"reward-model score": rm_panel, "gold reward": gold_panel, "sycophancy": sycophancy_panel},
            ctx.figure_path("sycophancy_vs_kl"),
            "as the policy moves away from the SFT model",
            "KL to the SFT model (nats)",
        ),
        "Reward-model score, gold reward and sycophancy rate against KL to the SFT model: Best-of-N (plug-in KL, N = "
        "1, 2, 4 …), PPO during training (training prompts, k1 estimator) and each trained policy on the test "
        "prompts (exact KL). A score that climbs while gold stays or falls is the reward model being exploited.",
    )
    section.data = {"world": world, "rows": rows, "probe": probe}
    return section
