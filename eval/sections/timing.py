"""Where the time went: each stage output's wall time (from its manifest), and PPO's split by phase."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section
from eval.sections.common import dig, number

PHASES = ("generation", "forward", "scoring", "optimisation")


def build(ctx: Context) -> Section | None:
    outputs = [output for output in ctx.runs.outputs if output.wall_time_s]
    if not outputs:
        return None
    section = Section("timing", "Where the time went")
    total = sum(output.wall_time_s for output in outputs)
    section.text(f"Total wall time of the stages: **{total:.1f} s** ({total / 60:.1f} min), from their manifests.")
    section.table(
        ["output", "stage", "directory", "wall time (s)", "share (%)"],
        [
            [
                output.name,
                output.stage,
                str(output.path),
                output.wall_time_s,
                round(100 * output.wall_time_s / total, 1),
            ]
            for output in outputs
        ],
    )
    section.figure(
        figures.bars(
            {output.name: output.wall_time_s for output in outputs},
            ctx.figure_path("wall_time"),
            "wall time per stage output",
            "seconds",
        ),
        "Wall time of each stage output (manifest `wall_time_s`), imports excluded.",
    )
    rows = []
    for output in outputs:
        split = {phase: number(dig(output.metrics, "time_split", phase)) for phase in PHASES}
        if any(value is not None for value in split.values()):
            rows.append([output.name, *(split[phase] for phase in PHASES), output.wall_time_s])
    if rows:
        section.table(["output", *(f"{phase} (s)" for phase in PHASES), "wall time (s)"], rows)
    section.data = {"wall_time_s": {output.name: output.wall_time_s for output in outputs}}
    return section
