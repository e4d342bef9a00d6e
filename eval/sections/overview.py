"""Which stages ran (and which did not), one headline figure each, and each one against its target or the free
baseline it has to beat (wall times are in the timing section, at the end)."""

from __future__ import annotations

from eval.collect import StageOutput
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number

# The number that says how each stage went, by stage: (label, path in metrics.json), first found wins.
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "pretrain": [("perplexity", ("perplexity",))],
    "sft": [("gold reward (greedy)", ("gold_reward_greedy",)), ("eval loss", ("eval_loss",))],
    "reward": [("held-out accuracy", ("heldout_accuracy",)), ("accuracy", ("eval_accuracy",))],
    "ppo": [("gold reward after", ("gold_reward_after",)), ("RM reward after", ("rm_reward_after",))],
    "dpo": [
        ("gold reward (sampled)", ("gold_reward_sampled",)),
        ("implicit reward accuracy", ("implicit_reward_accuracy",)),
    ],
    "weak_to_strong": [("PGR median (logconf)", ("pgr_median_logconf",)), ("PGR median (xent)", ("pgr_median_xent",))],
}


def headline(output: StageOutput) -> tuple[str | None, float | None]:
    for label, path in HEADLINES.get(output.stage, []):
        value = number(dig(output.metrics, *path))
        if value is not None:
            return label, value
    return None, None


def verdict(output: StageOutput) -> str:
    """The stage against what it has to beat: the sharpening frontier (PPO, DPO), the toy world's targets
    (reward model), the model it started from (SFT), the weak model and the ceiling (weak-to-strong)."""
    metrics = output.metrics
    judgement = metrics.get("judgement")
    if isinstance(judgement, dict) and "beats_sharpening" in judgement:
        margin, kl = number(judgement.get("margin_over_frontier")), number(judgement.get("kl_exact"))
        words = "beats sharpening" if judgement["beats_sharpening"] else "does NOT beat sharpening"
        return words + (f" by {margin:+.3f} gold at {kl:.2f} nats" if margin is not None and kl is not None else "")
    targets = metrics.get("targets")
    if isinstance(targets, dict):
        return "; ".join(
            f"{name.replace('_', ' ')} {target['value']:.3g} {'meets' if target['met'] else 'MISSES'} "
            f"{target['target']}"
            for name, target in targets.items()
            if isinstance(target, dict)
            and {"value", "target", "met"} <= set(target)
            and number(target["value"]) is not None
        )
    before, after = number(dig(metrics, "gold_reward_before", "greedy")), number(metrics.get("gold_reward_greedy"))
    if output.stage == "sft" and before is not None and after is not None:
        return f"greedy gold {before:.3f} before (the model it started from) → {after:.3f}"
    weak, ceiling = number(metrics.get("weak_accuracy_median")), number(metrics.get("ceiling_accuracy_median"))
    if output.stage == "weak_to_strong" and weak is not None and ceiling is not None:
        zero_shot = number(metrics.get("zero_shot_accuracy_median"))
        also = f", strong zero-shot {zero_shot:.3f}" if zero_shot is not None else ""
        return f"weak model {weak:.3f}, strong ceiling {ceiling:.3f}{also} (test accuracy, medians)"
    return ""


def build(ctx: Context) -> Section:
    section = Section("overview", "Runs and headline figures")
    outputs = ctx.runs.outputs
    total = sum(output.wall_time_s or 0.0 for output in outputs)
    rows, data_outputs = [], []
    for output in outputs:
        label, value = headline(output)
        share = (output.wall_time_s or 0.0) / total if total else None
        rows.append([output.name, output.stage, f"{label} = {value:.4g}" if label else "", verdict(output)])
        data_outputs.append(
            {
                "name": output.name,
                "stage": output.stage,
                "path": str(output.path),
                "wall_time_s": output.wall_time_s,
                "share": share,
                "started_at": output.manifest.get("started_at"),
                "recipe_file": output.manifest.get("recipe_file"),
                "headline": {"label": label, "value": value} if label else None,
            }
        )
    missing = ctx.runs.missing_stages()
    section.text(
        f"Run directories: {', '.join(f'`{d}`' for d in ctx.runs.run_dirs)}. Found {len(outputs)} finished stage "
        "outputs (a directory counts when its manifest.json exists; the stage contract writes it last)."
    )
    section.table(["output", "stage", "headline", "against its target or the free baseline"], rows)
    if missing:
        section.text(
            "Stages with no finished output here (their sections are left out): "
            + ", ".join(f"`{s}`" for s in missing)
            + "."
        )
    section.data = {"outputs": data_outputs, "total_wall_time_s": total, "missing_stages": missing}
    return section
