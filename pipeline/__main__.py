"""`python -m pipeline run recipes/<experiment>`: run a folder of recipes as one chain.

Examples:
    python -m pipeline run recipes/toy                  # run what is missing or stale, skip the rest
    python -m pipeline run recipes/toy --dry-run        # print the plan only
    python -m pipeline run recipes/toy --force          # re-run every stage from scratch
    python -m pipeline run recipes/toy --launcher "accelerate launch --config_file recipes/accelerate/cpu2.yaml"
    python -m pipeline stages                           # list the stages and whether they exist yet
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.chain import run_chain, run_stage_process
from pipeline.errors import UserError, run_cli
from pipeline.stages import STAGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the stages of a recipe folder in dependency order")
    run.add_argument("folder", type=Path, help="recipe folder, e.g. recipes/toy")
    run.add_argument("--force", action="store_true", help="re-run every stage from scratch")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.add_argument(
        "--launcher",
        default=None,
        help='command that starts each stage instead of `python`, e.g. "accelerate launch --config_file '
        'recipes/accelerate/cpu2.yaml"',
    )
    run.add_argument("--no-report", action="store_true", help="do not build the evaluation report at the end")
    commands.add_parser("stages", help="list the stages and their modules")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "stages":
        for spec in STAGES.values():
            print(f"{spec.name:<15} {spec.module:<28} {'ready' if spec.implemented else 'not implemented yet'}")
        return
    stages = run_chain(args.folder, force=args.force, dry_run=args.dry_run, launcher=args.launcher)
    if args.dry_run:
        return
    if not args.no_report and importlib.util.find_spec("eval.report") is not None:
        run_dirs = sorted({str(stage.output_dir.parent) for stage in stages})
        status = run_stage_process([sys.executable, "-m", "eval.report", *run_dirs], launcher=None)
        if status != 0:
            raise UserError(f"the report (python -m eval.report {' '.join(run_dirs)}) failed with exit status {status}")
    else:
        print("\nOutputs:")
        for stage in stages:
            print(f"  {stage.name:<20} {stage.output_dir}" + ("" if stage.output_dir.exists() else "  (not produced)"))


if __name__ == "__main__":
    run_cli(main)
