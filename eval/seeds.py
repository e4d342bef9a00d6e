"""`python -m eval.seeds SEED_DIR [SEED_DIR ...]`: the headline figures of a chain run with several seeds.

    python -m eval.seeds runs/toy/seed0 runs/toy/seed1 runs/toy/seed2 --output runs/toy/seeds

What `python -m pipeline run recipes/toy --seeds 3` calls at the end. One run of a stage is an anecdote: this
report gives, for every headline figure of every stage output found in all the seed folders, the median and
the range (min..max) over the seeds beside each seed's value (figures a stage did not measure, such as the
share of the flawed demonstrators' habit in the plain world, are left out), and counts per policy in how
many seeds it beat the sharpening frontier (pipeline.policy_eval.judge). It reads what the stages wrote (metrics.json)
and loads no model. Written into --output: report.md, report.html, report.json (per-seed values included) and a
figure of every seed's policies and frontier, gold reward against KL to the SFT model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval import figures
from eval.collect import RunSet, discover
from eval.document import Section, render_markdown
from eval.html import render_html
from eval.sections.common import dig, number
from pipeline.contract import write_atomic, write_json
from pipeline.errors import UserError, run_cli

BEST_OF = 16  # the Best-of-N row quoted as a headline


def at(*keys: str) -> Callable[[dict], Any]:
    """How to read a figure from metrics.json: the value at `keys` (None where a stage did not measure it)."""
    return lambda metrics: dig(metrics, *keys)


# Per stage: (figure, how to read it from metrics.json). Policies (ppo, dpo) are read from their `judgement`, which
# holds the same numbers for both stages by construction (pipeline.policy_eval.judge).
POLICY_HEADLINES: list[tuple[str, Callable[[dict], Any]]] = [
    ("gold, sampled", at("judgement", "gold_sampled")),
    ("gold, greedy", at("judgement", "gold_greedy")),
    ("SFT gold, greedy", at("judgement", "reference_gold_greedy")),
    ("exact KL to SFT (nats)", at("judgement", "kl_exact")),
    ("frontier gold at that KL", at("judgement", "frontier_gold_at_kl")),
    ("margin over the frontier", at("judgement", "margin_over_frontier")),
    ("beats sharpening", at("beats_sharpening")),
    ("habit share, greedy", at("demo_flaw_after", "greedy")),
    ("habit share, sampled", at("demo_flaw_after", "sampled")),
    ("RM score, sampled", at("policy_eval", "policy", "sampled", "reward_model")),
    ("SFT RM score, sampled", at("policy_eval", "reference", "sampled", "reward_model")),
    ("sycophancy, sampled", at("sycophancy_after", "sampled")),
    ("sycophancy, greedy", at("sycophancy_after", "greedy")),
    ("SFT sycophancy, sampled", at("sycophancy_before", "sampled")),
    ("SFT sycophancy, greedy", at("sycophancy_before", "greedy")),
    ("right | wrong guess, sampled", at("correct_wrong_suggestion_after", "sampled")),
    ("right | no guess, sampled", at("correct_none_suggestion_after", "sampled")),
]
HEADLINES: dict[str, list[tuple[str, Callable[[dict], Any]]]] = {
    "pretrain": [
        ("validation perplexity", at("perplexity")),
        ("gold, greedy", at("gold_reward_greedy")),
        ("gold, sampled", at("gold_reward_sampled")),
    ],
    "sft": [
        ("gold, greedy", at("gold_reward_greedy")),
        ("gold, sampled", at("gold_reward_sampled")),
        ("gold before SFT (its input model), greedy", at("gold_reward_before", "greedy")),
        ("gold before SFT (its input model), sampled", at("gold_reward_before", "temperature_1.0")),
        ("habit share, greedy", at("traits_after", "demo_flaw", "greedy")),
        ("habit share, sampled", at("traits_after", "demo_flaw", "temperature_1.0")),
        ("sycophancy, greedy", at("traits_after", "sycophancy", "greedy")),
        ("sycophancy, sampled", at("traits_after", "sycophancy", "temperature_1.0")),
    ],
    "reward": [
        ("pair accuracy (test)", at("heldout_accuracy")),
        ("pair accuracy (validation)", at("validation_accuracy")),
        ("SFT mean gold (Best-of-N prompts)", at("policy_mean_gold")),
        (f"Best-of-{BEST_OF} gold", at("best_of_n", str(BEST_OF), "gold")),
        (f"Best-of-{BEST_OF} KL, plug-in (nats)", at("best_of_n", str(BEST_OF), "kl_nats")),
        (f"Best-of-{BEST_OF} margin over the frontier", at("best_of_n", str(BEST_OF), "margin_over_frontier")),
        (f"Best-of-{BEST_OF} beats sharpening", at("best_of_n", str(BEST_OF), "beats_sharpening")),
        (f"Best-of-{BEST_OF} habit share", at("best_of_n", str(BEST_OF), "demo_flaw")),
        (f"Best-of-{BEST_OF} sycophancy", at("best_of_n", str(BEST_OF), "sycophancy")),
        ("prefers the user's wrong guess (probe)", at("sycophancy_probe", "guess_preferred")),
    ],
    "ppo": POLICY_HEADLINES,
    "dpo": [*POLICY_HEADLINES, ("implicit reward accuracy", at("implicit_reward_accuracy"))],
    "prm": [
        ("solved, one sample (the generator)", at("solve_rate_n1")),
        *[
            (f"solved, best of {n}: {name}", at("best_of_n", str(n), key))
            for n in (4, 16, 64)
            for key, name in (
                ("process", "PRM"),
                ("outcome", "ORM"),
                ("majority", "majority vote"),
                ("oracle", "oracle"),
            )
        ],
        ("accuracy at the labelled positions", at("position_accuracy")),
        ("first wrong step located", at("first_error_located")),
    ],
    "weak_to_strong": [
        ("weak accuracy", at("weak_accuracy_median")),
        ("strong ceiling accuracy", at("ceiling_accuracy_median")),
        ("student accuracy, cross-entropy", at("w2s_accuracy_median_xent")),
        ("PGR, cross-entropy", at("pgr_median_xent")),
        ("student accuracy, confidence loss", at("w2s_accuracy_median_logconf")),
        ("PGR, confidence loss", at("pgr_median_logconf")),
    ],
}


def aggregate(values: Sequence[Any]) -> dict[str, Any]:
    """Median and range of the seeds' numbers; for yes/no figures the count of yes."""
    present = [value for value in values if value is not None]
    if present and all(isinstance(value, bool) for value in present):
        return {"yes": sum(present), "of": len(present)}
    numbers = [number(value) for value in present if number(value) is not None]
    if not numbers:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(numbers), 4),
        "min": round(min(numbers), 4),
        "max": round(max(numbers), 4),
        "n": len(numbers),
    }


def headline_table(seed_runs: list[RunSet]) -> list[dict[str, Any]]:
    """One row per (stage output, figure) present in every seed: the seeds' values and their aggregate."""
    names = [[output.name for output in runs.outputs] for runs in seed_runs]
    common = [name for name in names[0] if all(name in other for other in names[1:])]
    rows = []
    for name in common:
        outputs = [next(output for output in runs.outputs if output.name == name) for runs in seed_runs]
        for figure, read in HEADLINES.get(outputs[0].stage, []):
            values = [read(output.metrics) for output in outputs]
            if all(value is None for value in values):
                continue
            rows.append(
                {"output": name, "stage": outputs[0].stage, "figure": figure, "values": values, **aggregate(values)}
            )
    return rows


def format_row(row: dict[str, Any]) -> list[str]:
    if "yes" in row:
        summary = f"{row['yes']} of {row['of']} seeds"
    elif row["median"] is None:
        summary = "n/a"
    else:
        summary = f"{row['median']:.4g} ({row['min']:.4g} .. {row['max']:.4g})"
    values = [
        "yes" if v is True else "no" if v is False else "n/a" if v is None else f"{number(v):.4g}"
        for v in row["values"]
    ]
    return [row["output"], row["figure"], summary, " / ".join(values)]


def frontier_figure(seed_runs: list[RunSet], path: Path) -> Path | None:
    """Every seed's sharpening frontier (a line in the seed's colour) and its PPO, DPO and Best-of-N points (one
    marker per kind of policy), gold reward against exact KL to the SFT model."""
    markers = {"ppo": "o", "dpo": "s", "reward": "^"}
    figure, axis = figures.plt.subplots(figsize=(7.6, 5.0))
    drawn = False
    for index, runs in enumerate(seed_runs):
        colour = f"C{index}"
        points = [
            (output.stage, output.metrics.get("judgement") or {}, output.metrics.get("sharpening") or [])
            for output in runs.of_stage("ppo") + runs.of_stage("dpo")
        ]
        frontier = next((sharpening for _, _, sharpening in points if sharpening), [])
        if frontier:
            axis.plot(
                [p.get("kl_exact") for p in frontier],
                [p.get("gold_reward") for p in frontier],
                color=colour,
                linewidth=1.2,
                label=f"seed {index}: SFT at lower temperatures",
            )
        for stage, judgement, _ in points:
            x, y = number(judgement.get("kl_exact")), number(judgement.get("gold_sampled"))
            if x is not None and y is not None:
                axis.scatter([x], [y], color=colour, marker=markers[stage], s=70, edgecolors="black", zorder=4)
                drawn = True
        reward = runs.main("reward")
        best_of = dig(reward.metrics, "best_of_n", str(BEST_OF)) if reward is not None else None
        if (
            isinstance(best_of, dict)
            and number(best_of.get("kl_nats")) is not None
            and number(best_of.get("gold")) is not None
        ):
            axis.scatter(
                [best_of["kl_nats"]],
                [best_of["gold"]],
                color=colour,
                marker=markers["reward"],
                s=70,
                edgecolors="black",
                zorder=4,
            )
            drawn = True
    if not drawn:
        figures.plt.close(figure)
        return None
    for label, marker in (("PPO", "o"), ("DPO", "s"), (f"Best-of-{BEST_OF}", "^")):
        axis.scatter([], [], color="white", edgecolors="black", marker=marker, label=label)
    axis.set(
        title=f"{len(seed_runs)} seeds: every policy against its seed's sharpening frontier",
        xlabel="KL(policy ‖ SFT), nats per response",
        ylabel="gold reward (sampled responses)",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return figures.save(figure, path)


def build_seed_report(seed_dirs: Sequence[str | Path], output: str | Path) -> dict[str, Any]:
    """Write the seeds report into `output`; returns report.json's content."""
    if len(seed_dirs) < 2:
        raise UserError("give at least two seed folders (e.g. runs/toy/seed0 runs/toy/seed1).")
    seed_runs = [discover([directory]) for directory in seed_dirs]
    empty = [str(directory) for directory, runs in zip(seed_dirs, seed_runs) if not runs.outputs]
    if empty:
        raise UserError(f"no finished stage output in {', '.join(empty)}.")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = headline_table(seed_runs)
    section = Section("headlines", f"Headline figures over {len(seed_runs)} seeds")
    section.text(
        "Median (min .. max) over the seeds of what each stage measured on the held-out split it names (the toy "
        "world's test split unless its recipe says otherwise), then every seed's value in seed order. Each seed runs "
        "the whole chain with its own training seed and toy-world seed (recipes in each seed folder's recipes/). A "
        "policy *beats sharpening* when its sampled gold exceeds the SFT model's at a lower temperature, at the same "
        "KL, by the margin, and its greedy gold did not fall. Best-of-16 is measured on the reward stage's Best-of-N "
        "prompts, against the frontier on those prompts; PPO and DPO on their 256 evaluation prompts."
    )
    section.table(["output", "figure", "median (range)", "per seed"], [format_row(row) for row in rows])
    section.figure(
        frontier_figure(seed_runs, out / "seeds_gold_vs_kl.png"),
        "gold reward against exact KL to the SFT model, every seed",
    )
    section.data = {"rows": rows}
    title = f"Seeds report: {', '.join(str(d) for d in seed_dirs)}"
    report = {
        "title": title,
        "seed_dirs": [str(d) for d in seed_dirs],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rows": rows,
    }
    write_atomic(out / "report.md", render_markdown(title, [section], out))
    write_atomic(out / "report.html", render_html(title, [section]))
    write_json(out / "report.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m eval.seeds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "seed_dirs", nargs="+", type=Path, help="one run folder per seed, e.g. runs/toy/seed0 runs/toy/seed1"
    )
    parser.add_argument("--output", type=Path, required=True, help="where to write the report, e.g. runs/toy/seeds")
    args = parser.parse_args(argv)
    report = build_seed_report(args.seed_dirs, args.output)
    for row in report["rows"]:
        print(" | ".join(format_row(row)))
    print(f"\nreport: {args.output / 'report.md'}")


if __name__ == "__main__":
    run_cli(main)
