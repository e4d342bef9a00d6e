"""The project's command line: `gpt-pipeline` once installed, or `python -m pipeline`.

    gpt-pipeline train recipes/toy/sft.yaml             # one stage, the one its recipe names (stage: sft)
    gpt-pipeline train --stage grpo grpo.yaml           # a TRL script's recipe (no stage: key), as `trl grpo`
    gpt-pipeline run recipes/toy                        # a folder of recipes as one chain, then the report
    gpt-pipeline report runs/toy                        # the report of a run folder (runs/toy/report.html)
    gpt-pipeline stages                                 # the stages and their modules

Examples of `run` (`python -m pipeline` takes the same commands):
    python -m pipeline run recipes/toy                  # run what is missing or stale, skip the rest
    python -m pipeline run recipes/toy --dry-run        # print the plan only
    python -m pipeline run recipes/toy --force          # re-run every stage from scratch
    python -m pipeline run recipes/toy --seeds 3        # the whole chain per seed into runs/toy/seed<k>, then medians
    python -m pipeline run recipes/toy --launcher "accelerate launch --config_file recipes/accelerate/cpu2.yaml"
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.chain import run_chain, run_directory, run_seeds, run_stage_process
from pipeline.errors import RecipeError, UserError, run_cli
from pipeline.recipes import read_recipe_file
from pipeline.stages import STAGES, recipe_stage

# TRL's online trainers that are algorithms of the ppo stage here (`train --stage grpo R.yaml`).
ONLINE_ALGORITHMS = ("grpo", "rloo")


def build_parser(prog: str = "python -m pipeline") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="run one stage on a recipe file: the stage its `stage:` key names",
        description="Run one stage: `gpt-pipeline train R.yaml [options]` is `python -m pipeline.<stage> --config "
        "R.yaml [options]`. Options after the recipe override its keys (e.g. --max_steps 10, --force); "
        "`gpt-pipeline train R.yaml --help` lists them.",
    )
    train.add_argument(
        "--stage",
        choices=[*STAGES, *ONLINE_ALGORITHMS],
        default=None,
        help="the stage, for a recipe without `stage:` (a TRL script's recipe); grpo and rloo are the ppo stage "
        "with that algorithm, as `trl grpo --config R.yaml`",
    )
    train.add_argument("recipe", type=Path, help="recipe YAML file, e.g. recipes/toy/sft.yaml")
    train.add_argument("options", nargs=argparse.REMAINDER, help="the stage's own options (recipe keys)")
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
    run.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="run the whole chain N times, seed and toy_seed raised by 0..N-1, into <run dir>/seed<k>/ (recipes "
        "copied to <run dir>/seed<k>/recipes/); then one report per seed and the seeds report (median and range of "
        "every headline figure) in <run dir>/seeds/",
    )
    run.add_argument("--no-report", action="store_true", help="do not build the evaluation report at the end")
    # Listed for --help only: main() hands everything after `report` to the report (`report --help` is its help).
    commands.add_parser("report", help="build the report of run folders: `report runs/toy`, `report --help`")
    commands.add_parser("stages", help="list the stages and their modules")
    return parser


def cli() -> None:
    """The `gpt-pipeline` console command."""
    run_cli(lambda argv: main(argv, prog="gpt-pipeline"))


def train(recipe: Path, options: Sequence[str], stage: str | None = None) -> None:
    if not recipe.is_file():
        raise RecipeError(f"recipe file {recipe} not found.")
    values = read_recipe_file(recipe)
    if stage in ONLINE_ALGORITHMS:
        stage, options = "ppo", ["--algorithm", stage, *options]
    if stage is None or "stage" in values:
        named = recipe_stage(recipe, values)
        if stage not in (None, named):
            raise RecipeError(f"{recipe}: the recipe is for stage '{named}', the command line says --stage {stage}.")
        stage = named
    importlib.import_module(STAGES[stage].module).main(["--config", str(recipe), *options])


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline") -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:  # everything after it is the report's, --help included
        return report_module("eval.report", *argv[1:])
    args = build_parser(prog).parse_args(argv)
    if args.command == "train":
        return train(args.recipe, args.options, args.stage)
    if args.command == "stages":
        for spec in STAGES.values():
            print(f"{spec.name:<15} {spec.module:<28} {'ready' if spec.implemented else 'not implemented yet'}")
        return
    if args.seeds is not None:
        seed_runs = run_seeds(args.folder, args.seeds, force=args.force, dry_run=args.dry_run, launcher=args.launcher)
    else:
        seed_runs = [run_chain(args.folder, force=args.force, dry_run=args.dry_run, launcher=args.launcher)]
    if args.dry_run:
        return
    if args.no_report or importlib.util.find_spec("eval.report") is None:
        print("\nOutputs:")
        for stage in (stage for stages in seed_runs for stage in stages):
            print(f"  {stage.name:<20} {stage.output_dir}" + ("" if stage.output_dir.exists() else "  (not produced)"))
        return
    for stages in seed_runs:
        report_module("eval.report", *sorted({str(stage.output_dir.parent) for stage in stages}))
    if args.seeds is not None and args.seeds > 1:
        seed_dirs = [str(run_directory(stages)) for stages in seed_runs]
        report_module("eval.seeds", *seed_dirs, "--output", str(Path(seed_dirs[0]).parent / "seeds"))


def report_module(module: str, *arguments: str) -> None:
    status = run_stage_process([sys.executable, "-m", module, *arguments], launcher=None)
    if status != 0:
        raise UserError(f"the report (python -m {module} {' '.join(arguments)}) failed with exit status {status}")


if __name__ == "__main__":
    run_cli(main)
