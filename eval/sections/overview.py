"""Which stages ran (and which did not), one headline figure each, and each one's wall time and share."""

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


def build(ctx: Context) -> Section:
    section = Section("overview", "Runs and headline figures")
    outputs = ctx.runs.outputs
    total = sum(output.wall_time_s or 0.0 for output in outputs)
    rows, data_outputs = [], []
    for output in outputs:
        label, value = headline(output)
        share = (output.wall_time_s or 0.0) / total if total else None
        rows.append(
            [
                output.name,
                output.stage,
                str(output.path),
                output.wall_time_s,
                None if share is None else round(100 * share, 1),
                f"{label} = {value:.4g}" if label else "",
            ]
        )
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
    section.table(["output", "stage", "directory", "wall time (s)", "share (%)", "headline"], rows)
    section.text(f"Total wall time of the stages: **{total:.1f} s** ({total / 60:.1f} min), from their manifests.")
    if missing:
        section.text(
            "Stages with no finished output here (their sections are left out): "
            + ", ".join(f"`{s}`" for s in missing)
            + "."
        )
    section.data = {"outputs": data_outputs, "total_wall_time_s": total, "missing_stages": missing}
    return section
