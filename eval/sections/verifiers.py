"""Process vs outcome verifiers: the share of test problems Best-of-N solves as N grows, picked by the process
verifier, the outcome verifier, majority vote over final answers, and the oracle (from the prm stage's
best_of_n.json and metrics.json)."""

from __future__ import annotations

from eval.context import Context
from eval.document import Section
from eval.sections.common import number

NAMES = {"process": "PRM", "outcome": "ORM", "majority": "majority vote", "oracle": "oracle (any right)"}


def build(ctx: Context) -> Section | None:
    outputs = ctx.runs.of_stage("prm")
    if not outputs:
        return None
    section = Section("verifiers", "Process vs outcome verifiers (Best-of-N)")
    section.text(
        "A verifier trained on the generator's own samples picks the best of N samples of each test problem. "
        "Process supervision (PRM) labels every step, outcome supervision (ORM) only the final answer; majority "
        "vote needs no verifier; the oracle picks a right sample whenever one exists (an upper bound)."
    )
    data = {}
    for output in outputs:
        metrics = output.metrics
        bon = output.json("best_of_n.json") or {}
        rows = bon.get("rows") or []
        if not rows:
            continue
        columns = [key for key in ("process", "outcome", "majority", "oracle") if key in rows[0]]
        section.table(
            ["N", *(NAMES[key] for key in columns)],
            [[row["n"], *(number(row[key]) for key in columns)] for row in rows],
            caption=f"{output.name}: share of {metrics.get('eval_split', 'held-out')} problems solved "
            f"({metrics.get('supervision')} verifier; position accuracy {metrics.get('position_accuracy')}, "
            f"first wrong step located {metrics.get('first_error_located')}).",
        )
        figure = output.path / "best_of_n.png"
        if figure.is_file():
            section.figure(figure, f"{output.name}: % solved against N (the stage's own plot).")
        data[output.name] = {"rows": rows, "headline": metrics.get("headline")}
    section.data = data
    return section
