"""Find the finished stage outputs under the run directories the report is asked about.

A finished stage output is a directory with a `manifest.json` (the stage contract writes it last), so an
interrupted run is never reported as if it had finished. The manifest's `stage` field says what the
directory is; its file name does not matter (`runs/toy/pretrain_small` is a second `pretrain`). The
report reads what each stage measured (`metrics.json`, `log_history.json`, `samples.json`, other JSON
files) through this module, defensively: a stage written by someone else may lack a file or a key.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.contract import MANIFEST, METRICS
from pipeline.errors import UserError
from pipeline.stages import STAGES

logger = logging.getLogger(__name__)

STAGE_ORDER: tuple[str, ...] = tuple(STAGES)  # pretrain, sft, reward, ppo, dpo, prm, weak_to_strong
SKIP_DIRS = ("checkpoint-", "cache", "report_figures", "soft_labels", "adapter")
SEED_DIR = re.compile(r"seeds?\d*")  # runs/toy/seed0 ... of `--seeds`: their own chains, reported on their own


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable (logged: a report never crashes on it)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return None


@dataclass
class StageOutput:
    """One finished stage output directory and what it measured."""

    path: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.manifest.get("stage", "unknown"))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def wall_time_s(self) -> float | None:
        value = self.manifest.get("wall_time_s")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def recipe(self) -> dict[str, Any]:
        return self.manifest.get("recipe_values") or {}

    @property
    def inputs(self) -> dict[str, str]:
        return self.manifest.get("inputs") or {}

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.path / METRICS) or {}

    @cached_property
    def log_history(self) -> list[dict[str, Any]]:
        history = self.json("log_history.json")
        return history if isinstance(history, list) else []

    @cached_property
    def samples(self) -> list[dict[str, Any]]:
        samples = self.json("samples.json")
        return samples if isinstance(samples, list) else []

    def json(self, filename: str) -> Any | None:
        return read_json(self.path / filename)

    def has_model(self) -> bool:
        return (self.path / "config.json").is_file() and any(self.path.glob("*.safetensors"))

    def has_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()


@dataclass
class RunSet:
    """Every finished stage output found, in stage order, with lookups by stage and by input path."""

    run_dirs: list[Path]
    outputs: list[StageOutput] = field(default_factory=list)

    def of_stage(self, stage: str) -> list[StageOutput]:
        return [output for output in self.outputs if output.stage == stage]

    def missing_stages(self) -> list[str]:
        present = {output.stage for output in self.outputs}
        return [stage for stage in STAGE_ORDER if stage not in present and not STAGES[stage].optional]

    def resolve(self, value: str | None) -> StageOutput | None:
        """The stage output a recipe input names (`runs/toy/sft`), by path, else by directory name."""
        if not value:
            return None
        candidates = [Path(value)] + [run_dir / Path(value).name for run_dir in self.run_dirs]
        for candidate in candidates:
            resolved = candidate.resolve() if candidate.exists() else None
            for output in self.outputs:
                if resolved is not None and output.path.resolve() == resolved:
                    return output
        return None

    def input_of(self, output: StageOutput, key: str) -> StageOutput | None:
        return self.resolve(output.inputs.get(key))

    def main(self, stage: str) -> StageOutput | None:
        """The output of `stage` on the main chain: the one the next stage used, else the one named after the
        stage (`runs/toy/pretrain`, not `pretrain_small`), else the first found."""
        outputs = self.of_stage(stage)
        if not outputs:
            return None
        consumers = {"pretrain": ("sft",), "sft": ("ppo", "dpo", "reward")}.get(stage, ())
        for consumer in (output for name in consumers for output in self.of_stage(name)):
            used = self.input_of(consumer, "model_name_or_path")
            if used is not None and used.stage == stage:
                return used
        named = [output for output in outputs if output.name == stage]
        return named[0] if named else outputs[0]


def _finished_dirs(root: Path, depth: int) -> list[Path]:
    if (root / MANIFEST).is_file():
        return [root]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith((".",) + SKIP_DIRS) and not SEED_DIR.fullmatch(child.name):
            found += _finished_dirs(child, depth - 1)
    return found


def discover(run_dirs: list[str | Path], depth: int = 2) -> RunSet:
    """Every finished stage output in or under `run_dirs` (a run folder like runs/toy, or a stage output)."""
    roots = [Path(directory) for directory in run_dirs]
    for root in roots:
        if not root.is_dir():
            raise UserError(
                f"run directory {root} not found (expected e.g. runs/toy after `python -m pipeline run recipes/toy`)."
            )
    seen: set[Path] = set()
    outputs: list[StageOutput] = []
    for root in roots:
        for directory in _finished_dirs(root, depth):
            if directory.resolve() in seen:
                continue
            seen.add(directory.resolve())
            manifest = read_json(directory / MANIFEST)
            if not isinstance(manifest, dict):
                continue
            outputs.append(StageOutput(directory, manifest))
    rank = {stage: index for index, stage in enumerate(STAGE_ORDER)}
    outputs.sort(key=lambda output: (rank.get(output.stage, len(rank)), output.name != output.stage, output.name))
    return RunSet(roots, outputs)
