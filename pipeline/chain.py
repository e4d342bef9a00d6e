"""The chain runner: run a recipe folder's stages in dependency order, like `make` for training runs.

A stage depends on another when one of its recipe values names the other's `output_dir`
(`model_name_or_path: runs/toy/sft`). A stage is skipped when its output holds a manifest whose recipe
and input fingerprints match the current ones and nothing upstream re-runs; an unfinished output is
resumed from its last checkpoint by the stage itself. Each stage runs in its own process, optionally
through a launcher such as `accelerate launch --config_file recipes/accelerate/cpu2.yaml`; the command
is built as an argument list and never passes through a shell.

Without a launcher, on Linux, a stage's process is forked from the runner after the runner has imported
the modules of the stages to run, and with them torch, transformers, TRL and PEFT (about 7 s per fresh
interpreter on 2 CPU cores, a minute over the toy chain), and runs the stage module as `python -m` would.
The runner itself runs no tensor code, so the child starts from a clean state, and it reads the project's own
modules from disk again; it is still its own process, with its own exit status, and an interrupt waits for it
to checkpoint and stop.

With `--seeds N` the whole chain runs N times, once per seed, each into a folder of its own: seed k's
recipes are written to `<run dir>/seed<k>/recipes/` (from the folder's, with `seed` and `toy_seed` raised
by k and every output directory moved under `<run dir>/seed<k>/`), so that a seed run is an ordinary chain
whose recipes say exactly what ran, and skipping, resuming and fingerprints work per seed as for one run.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.contract import directory_size, input_fingerprint, last_checkpoint, read_manifest, write_atomic
from pipeline.data.toy_world import ToyWorldKeys
from pipeline.errors import RecipeError, UserError
from pipeline.recipes import read_recipe_file, recipe_fingerprint
from pipeline.stages import STAGES, recipe_stage, stage_inputs

logger = logging.getLogger(__name__)

CHAIN_FILE = "chain.yaml"
PROJECT_PACKAGES = ("pipeline", "eval")


@dataclass
class PlannedStage:
    recipe_path: Path
    stage: str
    output_dir: Path
    values: dict
    depends_on: list[str] = field(default_factory=list)
    action: str = "run"  # run | skip | not-implemented | blocked
    reason: str = ""
    wall_time_s: float | None = None
    size_bytes: int | None = None

    @property
    def name(self) -> str:
        return self.recipe_path.stem


def load_recipes(folder: Path) -> list[PlannedStage]:
    """Every recipe of the folder (or those listed in its chain.yaml), in file order."""
    if not folder.is_dir():
        raise RecipeError(f"recipe folder {folder} not found (try recipes/toy).")
    chain_file = folder / CHAIN_FILE
    if chain_file.is_file():
        listing = read_recipe_file(chain_file).get("stages")
        if not isinstance(listing, list) or not listing:
            raise RecipeError(f"{chain_file}: expected `stages:` with a list of recipe files of this folder.")
        paths = [folder / name for name in listing]
    else:
        paths = sorted(folder.glob("*.yaml"))
    stages = []
    for path in paths:
        values = read_recipe_file(path)
        stage = recipe_stage(path, values)
        del values["stage"]
        if not values.get("output_dir"):
            raise RecipeError(f"{path}: missing key 'output_dir'.")
        stages.append(PlannedStage(path, stage, Path(values["output_dir"]), values))
    if not stages:
        raise RecipeError(f"recipe folder {folder} holds no *.yaml recipes.")
    return stages


def _mentions(values: dict, directory: Path) -> bool:
    """Does any recipe value name `directory` or a path inside it?"""
    for value in values.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                candidate = Path(item)
                if candidate == directory or directory in candidate.parents:
                    return True
    return False


def order_by_dependencies(stages: list[PlannedStage]) -> list[PlannedStage]:
    producers = {stage.output_dir: stage for stage in stages}
    for stage in stages:
        stage.depends_on = [
            producer.name
            for directory, producer in producers.items()
            if producer is not stage
            and _mentions({k: v for k, v in stage.values.items() if k != "output_dir"}, directory)
        ]
    ordered, done = [], set()
    remaining = list(stages)
    while remaining:
        ready = [stage for stage in remaining if set(stage.depends_on) <= done]
        if not ready:
            raise RecipeError("the recipes depend on each other in a cycle: " + ", ".join(s.name for s in remaining))
        for stage in ready:
            ordered.append(stage)
            done.add(stage.name)
            remaining.remove(stage)
    return ordered


def plan(folder: Path, force: bool = False) -> list[PlannedStage]:
    """Decide, for each stage, whether it runs and why (nothing is executed)."""
    ordered = order_by_dependencies(load_recipes(folder))
    by_name = {stage.name: stage for stage in ordered}
    for stage in ordered:
        upstream = [by_name[name] for name in stage.depends_on]
        manifest = read_manifest(stage.output_dir)
        if not STAGES[stage.stage].implemented:
            stage.action, stage.reason = "not-implemented", f"{STAGES[stage.stage].module} does not exist yet"
        elif any(up.action in ("not-implemented", "blocked") for up in upstream):
            stage.action, stage.reason = "blocked", "an upstream stage cannot run"
        elif force:
            stage.reason = "--force"
        elif any(up.action == "run" for up in upstream):
            stage.reason = "an upstream stage runs"
        elif manifest is None:
            checkpoint = last_checkpoint(stage.output_dir)
            stage.reason = f"unfinished: resumes from {Path(checkpoint).name}" if checkpoint else "no finished output"
        elif manifest.get("recipe_fingerprint") != recipe_fingerprint(stage.values):
            stage.reason = "recipe changed"
        elif manifest.get("input_fingerprints") != {
            key: input_fingerprint(value) for key, value in stage_inputs(stage.stage, stage.values).items()
        }:
            stage.reason = "an input changed"
        else:
            stage.action, stage.reason = "skip", "finished output matches recipe and inputs"
    return ordered


def format_plan(stages: list[PlannedStage]) -> str:
    lines = [f"{'recipe':<22} {'stage':<15} {'action':<16} {'output_dir':<28} reason"]
    for stage in stages:
        lines.append(
            f"{stage.name:<22} {stage.stage:<15} {stage.action:<16} {str(stage.output_dir):<28} {stage.reason}"
            + (f" (after {', '.join(stage.depends_on)})" if stage.depends_on else "")
        )
    return "\n".join(lines)


def stage_command(stage: PlannedStage, launcher: str | None, force: bool) -> list[str]:
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    command = [*prefix, "-m", STAGES[stage.stage].module, "--config", str(stage.recipe_path)]
    # A finished output that is stale (recipe or input changed) is replaced: that is the runner's decision.
    if force or read_manifest(stage.output_dir) is not None:
        command.append("--force")
    return command


def _run_module_as_main(module: str, argv: list[str]) -> None:
    """The child's side of a forked stage: run `module` as `python -m module argv` would."""
    sys.argv = [module, *argv]
    # The project's own modules are imported afresh from disk, as a new interpreter would (they are cheap; the
    # libraries are what preloading saves), so that code edited while a long chain runs is seen whole by the
    # stages still to come, never half old and half new.
    for name in [name for name in sys.modules if name.split(".")[0] in PROJECT_PACKAGES]:
        del sys.modules[name]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def can_fork_stages() -> bool:
    """Linux only: macOS offers fork, but forking a process that has loaded its system frameworks is unsafe there."""
    return sys.platform.startswith("linux") and os.environ.get("PIPELINE_CHAIN_SUBPROCESS") != "1"


def preload_stage_modules(stages: list[PlannedStage]) -> None:
    """Import the modules of the stages that will run, and so all they import, once, so that forked stages
    skip it (module definitions only: no model is loaded and no tensor code runs)."""
    for module in sorted({STAGES[stage.stage].module for stage in stages if stage.action == "run"}):
        importlib.import_module(module)


def run_stage_process(command: list[str], launcher: str | None) -> int:
    """Run one stage and return its exit status: forked from this process when possible (see the module
    doc), else as `command` in a fresh interpreter."""
    if launcher or not can_fork_stages():
        return subprocess.run(command).returncode
    module, argv = command[2], command[3:]  # [python, "-m", module, *argv]
    process = multiprocessing.get_context("fork").Process(target=_run_module_as_main, args=(module, argv), name=module)
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:
        process.join()  # the stage got the same interrupt: let it save its checkpoint and stop
        raise
    return process.exitcode if process.exitcode is not None else 1


def run_chain(
    folder: Path, force: bool = False, dry_run: bool = False, launcher: str | None = None
) -> list[PlannedStage]:
    stages = plan(folder, force=force)
    print(format_plan(stages), flush=True)
    if dry_run:
        return stages
    if not launcher and can_fork_stages():
        preload_stage_modules(stages)
    for stage in stages:
        if stage.action != "run":
            continue
        command = stage_command(stage, launcher, force)
        print(f"\n=== {stage.name}: {shlex.join(command)}", flush=True)
        started = time.time()
        returncode = run_stage_process(command, launcher)
        stage.wall_time_s = time.time() - started
        if returncode != 0:
            raise UserError(
                f"stage '{stage.name}' ({stage.recipe_path}) failed with exit status {returncode}; "
                "fix the problem above and run the chain again: finished stages are skipped, unfinished ones resume."
            )
        if read_manifest(stage.output_dir) is None:
            raise UserError(f"stage '{stage.name}' exited without writing {stage.output_dir}/manifest.json.")
    for stage in stages:
        if stage.output_dir.is_dir():
            stage.size_bytes = directory_size(stage.output_dir)
    print("\n" + format_summary(stages), flush=True)
    return stages


def format_summary(stages: list[PlannedStage]) -> str:
    total = sum(stage.wall_time_s or 0.0 for stage in stages)
    lines = [f"{'recipe':<22} {'action':<16} {'wall time':>10} {'share':>6} {'output size':>12}"]
    for stage in stages:
        seconds = f"{stage.wall_time_s:.1f} s" if stage.wall_time_s is not None else "-"
        share = f"{100 * stage.wall_time_s / total:.0f}%" if stage.wall_time_s and total else "-"
        size = f"{stage.size_bytes / 1e6:.1f} MB" if stage.size_bytes is not None else "-"
        lines.append(f"{stage.name:<22} {stage.action:<16} {seconds:>10} {share:>6} {size:>12}")
    lines.append(f"{'total':<22} {'':<16} {total:>8.1f} s")
    return "\n".join(lines)


# --- several seeds ------------------------------------------------------------------------------------------


def run_directory(stages: list[PlannedStage]) -> Path:
    """The folder that holds the chain's outputs (runs/toy for recipes/toy): the common parent of its output dirs."""
    return Path(os.path.commonpath([str(stage.output_dir.parent) for stage in stages]))


def _moved(value: object, moves: dict[Path, Path]) -> object:
    """`value` with any path inside one of the `moves`' old directories rewritten into the new one."""
    if isinstance(value, list):
        return [_moved(item, moves) for item in value]
    if not isinstance(value, str) or not value:
        return value
    candidate = Path(value)
    for old, new in moves.items():
        if candidate == old or old in candidate.parents:
            return str(new / candidate.relative_to(old))
    return value


def seed_recipe_values(values: dict, index: int, moves: dict[Path, Path]) -> dict:
    """One recipe's values for seed `index`: seeds raised by `index`, output and input directories moved."""
    seeded = {key: _moved(value, moves) for key, value in values.items()}
    seeded["seed"] = int(values.get("seed", 42)) + index
    seeded["toy_seed"] = int(values.get("toy_seed", ToyWorldKeys.toy_seed)) + index
    if isinstance(values.get("seeds"), list):  # a stage that runs several seeds itself (weak-to-strong): new ones
        seeded["seeds"] = [int(seed) + index * len(values["seeds"]) for seed in values["seeds"]]
    return seeded


def write_seed_recipes(folder: Path, index: int) -> Path:
    """Write seed `index`'s copy of the folder's recipes into <run dir>/seed<index>/recipes and return that folder.
    A file whose values did not change is left as it is."""
    stages = load_recipes(folder)
    target = run_directory(stages) / f"seed{index}"  # runs/toy/seed<index>
    moves = {stage.output_dir: target / stage.output_dir.name for stage in stages}
    recipes = target / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    if (folder / CHAIN_FILE).is_file():
        listing = {"stages": [stage.recipe_path.name for stage in stages]}
        _write_if_changed(recipes / CHAIN_FILE, f"# Written by --seeds from {folder / CHAIN_FILE}.\n", listing)
    for stage in stages:
        values = {"stage": stage.stage, **seed_recipe_values(stage.values, index, moves)}
        header = (
            f"# Written by `python -m pipeline run {folder} --seeds N` from {stage.recipe_path}: seed {index} of the "
            "chain\n"
            "# (seed and toy_seed raised by the seed's number, outputs under this folder). Edit the source, not this "
            "copy.\n"
        )
        _write_if_changed(recipes / stage.recipe_path.name, header, values)
    return recipes


def _write_if_changed(path: Path, header: str, values: dict) -> None:
    text = header + yaml.safe_dump(values, sort_keys=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, text)


def run_seeds(
    folder: Path, seeds: int, force: bool = False, dry_run: bool = False, launcher: str | None = None
) -> list[list[PlannedStage]]:
    """Run the folder's chain once per seed (see the module doc); returns each seed's stages."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}.")
    runs = []
    for index in range(seeds):
        seed_folder = write_seed_recipes(folder, index)
        print(f"\n##### seed {index + 1} of {seeds}: {seed_folder}", flush=True)
        runs.append(run_chain(seed_folder, force=force, dry_run=dry_run, launcher=launcher))
    return runs
