"""`python -m pipeline.w2s.sweep`: the weak_to_strong stage over model pairs x seeds x losses, one table.

    python -m pipeline.w2s.sweep --config recipes/w2s/toy.yaml \
        --pairs runs/toy/pretrain_small:runs/toy/pretrain runs/toy/pretrain_small:runs/toy/pretrain_small \
        --seeds 0 1 2 --losses xent logconf --output_dir runs/w2s/sweep
    python -m pipeline.w2s.sweep --config recipes/w2s_sweep/w2s.yaml --output_dir runs/w2s_sweep/sweep \
        --models runs/w2s_sweep/pretrain_{xs,s,m,l}

Each pair runs the stage (with all its guarantees: manifest, resume, skip when finished) into
<output_dir>/<weak>_to_<strong>, and every pair shares one sub-run cache (<output_dir>/cache), so a weak
model's labels and a strong model's ceiling are trained once for the whole sweep. The sweep then writes
sweep.md (one row per pair and loss), sweep.json and sweep.png (PGR with seed spread); with `--models` (smallest
first: every weak < strong pair) also sweep_by_size.png, accuracy and PGR against the strong model's size, the
figures of Burns et al. (2023).
Any other `--key value` is passed to the stage as a recipe override.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.contract import read_json_object, write_atomic, write_json
from pipeline.errors import RecipeError, run_cli
from pipeline.w2s.plots import plot_sweep, plot_sweep_by_size

logger = logging.getLogger("pipeline.w2s.sweep")


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.w2s.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a weak_to_strong recipe: the settings shared by every pair")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--pairs", nargs="+", help="WEAK:STRONG model pairs (stage dirs or hub names)")
    models.add_argument(
        "--models", nargs="+", help="models from smallest to largest: every pair of a smaller weak and a larger strong"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the recipe's)")
    parser.add_argument("--losses", nargs="+", default=None, help="losses (default: the recipe's)")
    parser.add_argument(
        "--output_dir", required=True, help="the sweep's folder: one stage output per pair, shared cache"
    )
    parser.add_argument(
        "--force", action="store_true", help="re-run every pair from scratch (the shared cache is kept)"
    )
    return parser.parse_known_args(argv)


def pair_name(weak: str, strong: str) -> str:
    return f"{Path(weak).name}_to_{Path(strong).name}"


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    from pipeline.weak_to_strong import main as stage_main

    args, passthrough = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    output_dir = Path(args.output_dir)
    pairs = args.pairs or [f"{weak}:{strong}" for i, weak in enumerate(args.models) for strong in args.models[i + 1 :]]
    rows = []
    for pair in pairs:
        weak, sep, strong = pair.partition(":")
        if not sep or not weak or not strong:
            raise RecipeError(f"--pairs: expected WEAK:STRONG, got {pair!r}")
        run_dir = output_dir / pair_name(weak, strong)
        overrides = [
            "--weak_model",
            weak,
            "--strong_model",
            strong,
            "--output_dir",
            str(run_dir),
            "--cache_dir",
            str(output_dir / "cache"),
        ]
        if args.seeds:
            overrides += ["--seeds", json.dumps(args.seeds)]
        if args.losses:
            overrides += ["--losses", json.dumps(args.losses)]
        logger.info("pair %s -> %s", pair, run_dir)
        stage_main(["--config", args.config, *overrides, *passthrough, *(["--force"] if args.force else [])])
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        summary = metrics["summary"]
        sizes = {"weak_parameters": parameters(weak), "strong_parameters": parameters(strong)}
        for loss, row in summary["students"].items():
            rows.append(
                {
                    "pair": pair_name(weak, strong),
                    "weak": weak,
                    "strong": strong,
                    "loss": loss,
                    "weak_accuracy": summary["weak_accuracy"],
                    "ceiling_accuracy": summary["ceiling_accuracy"],
                    # {"median": None} where the task has no zero-shot baseline (not a prompt and an answer)
                    "zero_shot_accuracy": summary.get("zero_shot_accuracy", {"median": None}),
                    "zero_shot_auc": summary.get("zero_shot_auc", {"median": None}),
                    "w2s_accuracy": row["accuracy"],
                    "pgr": row["pgr"],
                    "pgr_na_reasons": row["pgr_na_reasons"],
                    **sizes,
                }
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "sweep.json", rows)
    table = format_sweep(rows)
    write_atomic(output_dir / "sweep.md", table)
    plot_sweep(rows, output_dir / "sweep.png", f"weak-to-strong sweep ({Path(args.config).name})")
    if args.models:
        title = f"weak-to-strong by size ({Path(args.config).name})"
        plot_sweep_by_size(rows, output_dir / "sweep_by_size.png", title)
    print(table)


def parameters(model: str) -> int | None:
    """A model's parameter count, as the stage that made it recorded it (None for a hub name)."""
    count = (read_json_object(Path(model) / "metrics.json") or {}).get("parameters")
    return count if isinstance(count, int) else None


def format_sweep(rows: list[dict]) -> str:
    def cell(stats: dict, digits: int = 3) -> str:
        if stats["median"] is None:
            return "n/a"
        return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}, {stats['max']:.{digits}f}]"

    lines = [
        "| weak | strong | loss | weak acc | w2s acc | ceiling acc | strong zero-shot acc | PGR (median [min, max]) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['weak']} | {row['strong']} | {row['loss']} | {cell(row['weak_accuracy'])} "
            f"| {cell(row['w2s_accuracy'])} | {cell(row['ceiling_accuracy'])} "
            f"| {cell(row['zero_shot_accuracy'])} | {cell(row['pgr'], 2)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_cli(main)
