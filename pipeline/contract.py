"""The stage contract: how a stage owns its output directory.

A finished output directory holds the model (safetensors) and tokenizer, `recipe.yaml` (every value
the run used), `metrics.json`, and `manifest.json` (stage, recipe fingerprint, inputs and their
hashes, package versions, seed, wall time). The manifest is written last and atomically, so a
directory without one is never a finished run: a killed run leaves checkpoints and a `run.json`
marker, and running the same recipe again resumes from the last checkpoint.

Only the main process writes here; the other processes of a multi-process run only read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.distributed import wait_for_everyone
from pipeline.errors import RecipeError, UserError
from pipeline.recipes import Recipe
from pipeline.stages import stage_inputs

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.json"
RESOLVED_RECIPE = "recipe.yaml"
IN_PROGRESS = "run.json"
LOCK = ".lock"
#: Recipe keys that may name a local path a stage reads, besides its registry inputs (pipeline.stages).
READ_PATH_KEYS = (
    "reward_model_path",
    "ref_model_name_or_path",
    "value_model_path",
    "eval_dataset",
    "strong_model",
    "weak_model",
)
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "evaluate", "bitsandbytes")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The finished run's manifest, or None: also when the file is damaged, which is never trusted as finished."""
    return read_json_object(Path(directory) / MANIFEST)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when the file is absent or damaged (a warning says which)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("%s is damaged (%s): the run it describes is treated as unfinished", path, error)
        return None
    if not isinstance(value, dict):
        logger.warning("%s is damaged (not a JSON object): the run it describes is treated as unfinished", path)
        return None
    return value


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def input_fingerprint(value: str) -> str:
    """What an input is, as a hash the chain runner can compare without loading anything.

    A finished stage directory is its manifest's hash (which covers its recipe and inputs); a file is
    its content's hash; anything else (a hub name, the built-in `toy` data) is its name.
    """
    path = Path(value)
    if (path / MANIFEST).is_file():
        return "stage:" + file_sha256(path / MANIFEST)
    if path.is_file():
        return "file:" + file_sha256(path)
    if path.is_dir():
        return "dir-unfinished:" + str(path)
    return "name:" + value


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def project_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def directory_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


class AlreadyFinished(Exception):
    """The output directory holds a finished run of this very recipe: nothing to do."""


@dataclass
class StageRun:
    """One run of one stage into `output_dir`: prepare (lock, resume or refuse), then finish."""

    recipe: Recipe
    output_dir: Path
    inputs: dict[str, str]
    seed: int
    is_main_process: bool = True
    started_at: float = field(default_factory=time.time)
    hub: Any = None  # a hub.HubTarget: push the finished output there
    _lock_handle: Any = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.input_fingerprints = {key: input_fingerprint(value) for key, value in self.inputs.items() if value}

    # -- start -------------------------------------------------------------------------------------

    def start(self) -> str | None:
        """Prepare the directory and return the checkpoint to resume from, if any.

        Raises `AlreadyFinished` when the directory holds a finished run of the same recipe and inputs,
        and `RecipeError` when it holds another recipe's run and `--force` was not given.
        """
        if self.is_main_process:
            self._prepare()
        wait_for_everyone()
        checkpoint = last_checkpoint(self.output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        return checkpoint

    def _prepare(self) -> None:
        self._check_apart_from_inputs()
        if self.recipe.force:
            self._check_is_a_run()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        manifest = read_manifest(self.output_dir)
        if manifest is None and (self.output_dir / MANIFEST).is_file():
            (self.output_dir / MANIFEST).unlink()  # damaged: the run is re-done, and never looks finished meanwhile
        if manifest is not None and not self.recipe.force:
            if self.matches(manifest):
                raise AlreadyFinished(str(self.output_dir))
            raise RecipeError(
                f"{self.recipe.path}: output_dir {self.output_dir} already holds a finished '{manifest.get('stage')}' "
                f"run of a different recipe ({manifest.get('recipe_file')}). Re-run with --force to replace it, "
                "or choose another output_dir."
            )
        marker = self.output_dir / IN_PROGRESS
        if manifest is None and marker.is_file() and not self.recipe.force:
            previous = read_json_object(marker) or {}
            if previous.get("recipe_fingerprint") != self.recipe.fingerprint and last_checkpoint(self.output_dir):
                raise RecipeError(
                    f"{self.recipe.path}: output_dir {self.output_dir} holds an unfinished run of a different recipe "
                    f"({previous.get('recipe_file')}). Re-run with --force to discard it, or choose another "
                    "output_dir."
                )
        if self.recipe.force:
            self._clear()
        write_json(
            marker,
            {
                "stage": self.recipe.stage,
                "recipe_file": str(self.recipe.path),
                "recipe_fingerprint": self.recipe.fingerprint,
                "pid": os.getpid(),
                "started_at": self.started_at,
            },
        )

    def matches(self, manifest: dict[str, Any]) -> bool:
        return (
            manifest.get("recipe_fingerprint") == self.recipe.fingerprint
            and manifest.get("input_fingerprints") == self.input_fingerprints
        )

    def _check_apart_from_inputs(self) -> None:
        """Refuse an output_dir (or a cache_dir) that is, contains or lies inside a local path the recipe reads:
        writing there would overwrite the stage's own input (with --force, delete it before it is read)."""
        written = {"output_dir": str(self.output_dir)}
        if isinstance(self.recipe.values.get("cache_dir"), str) and self.recipe.values["cache_dir"]:
            written["cache_dir"] = self.recipe.values["cache_dir"]
        for written_key, written_value in written.items():
            output = Path(written_value).resolve()
            for key in dict.fromkeys((*self.inputs, *READ_PATH_KEYS)):
                value = self.recipe.values.get(key)
                if not isinstance(value, str) or not value or not Path(value).exists():
                    continue
                path = Path(value).resolve()
                if path == output or output in path.parents or path in output.parents:
                    relation = "is" if path == output else "contains" if output in path.parents else "lies inside"
                    raise RecipeError(
                        f"{self.recipe.path}: key '{written_key}' ({written_value}) {relation} key '{key}' ({value}), "
                        f"which the stage reads: what it writes would overwrite its own input. Choose a {written_key} "
                        "apart from every input."
                    )

    def _check_is_a_run(self) -> None:
        """--force replaces a run of this project (a manifest or an in-progress marker), never another folder."""
        if not self.output_dir.is_dir():
            return
        entries = [path for path in self.output_dir.iterdir() if path.name != LOCK]
        if entries and not (self.output_dir / MANIFEST).is_file() and not (self.output_dir / IN_PROGRESS).is_file():
            raise RecipeError(
                f"{self.recipe.path}: --force would delete {self.output_dir}, which holds {len(entries)} entries but "
                f"no run of this project (no {MANIFEST} or {IN_PROGRESS}). Choose another output_dir, or empty it "
                "yourself."
            )

    def _lock(self) -> None:
        # flock is released by the kernel when the process dies, so a killed run never leaves a stale lock.
        self._lock_handle = open(self.output_dir / LOCK, "w")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecipeError(
                f"{self.recipe.path}: another run is writing into {self.output_dir} right now. "
                "Wait for it to end or choose another output_dir."
            ) from None

    def _clear(self) -> None:
        """--force: start from scratch. The manifest goes first so the directory never looks finished."""
        (self.output_dir / MANIFEST).unlink(missing_ok=True)
        for path in self.output_dir.iterdir():
            if path.name == LOCK:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    # -- finish ------------------------------------------------------------------------------------

    def finish(self, resolved: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
        """Write recipe.yaml, metrics.json, the model card (README.md, where a model was saved) and, last and
        atomically, manifest.json."""
        if not self.is_main_process:
            return {}
        from pipeline.resources import peak_memory  # here, not at the top: readers of manifests need no torch

        wall_time = time.time() - self.started_at
        metrics = {**metrics, **peak_memory(), "wall_time_s": round(wall_time, 2)}
        write_atomic(self.output_dir / RESOLVED_RECIPE, yaml.safe_dump(resolved, sort_keys=False))
        write_json(self.output_dir / METRICS, metrics)
        from pipeline.model_card import write_model_card

        write_model_card(self.output_dir, self.recipe.stage, resolved, metrics)
        files = sorted(p.name for p in self.output_dir.iterdir() if p.name not in (LOCK, IN_PROGRESS))
        manifest = {
            "stage": self.recipe.stage,
            "recipe_file": str(self.recipe.path),
            "recipe_fingerprint": self.recipe.fingerprint,
            "recipe_values": self.recipe.values,
            "inputs": self.inputs,
            "input_fingerprints": self.input_fingerprints,
            "seed": self.seed,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started_at)),
            "wall_time_s": round(wall_time, 2),
            "packages": package_versions(),
            "project_commit": project_commit(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "argv": sys.argv},
            "files": files,
            "size_bytes": directory_size(self.output_dir),
        }
        write_json(self.output_dir / MANIFEST, manifest)
        (self.output_dir / IN_PROGRESS).unlink(missing_ok=True)
        logger.info("finished %s -> %s (%.1f s)", self.recipe.stage, self.output_dir, wall_time)
        if self.hub is not None:
            self._push()
        return manifest

    def _push(self) -> None:
        from pipeline.hub import push_output

        try:
            push_output(self.output_dir, self.hub, self.recipe.stage)
        except Exception as error:  # the hub raises many kinds; the finished output stays as it is
            raise UserError(
                f"{self.output_dir} is finished, but pushing it to {self.hub.repo_id} failed: {error}. Push it "
                f"again with `hf upload {self.hub.repo_id} {self.output_dir}`."
            ) from None


def open_stage_run(
    recipe: Recipe,
    stage: str,
    output_dir: str | os.PathLike,
    seed: int,
    is_main_process: bool,
    max_steps: int | None = None,
    config: Any = None,
) -> tuple[StageRun, str | None] | None:
    """Open a stage's output directory: (the run, the checkpoint to resume from or None), or None when the
    directory already holds a finished run of this very recipe and inputs (then there is nothing to do).
    `max_steps`: a Trainer stage's, so that the checkpoint is one it can resume from (`resumable`). `config`: the
    stage's training config; with `push_to_hub: true` the run pushes its finished output (see pipeline.hub)."""
    from pipeline.hub import take_over_push

    hub = take_over_push(config, Path(output_dir), str(recipe.path)) if is_main_process else None
    if config is not None and getattr(config, "push_to_hub", False):
        config.push_to_hub = False  # the other processes: only the main one pushes, once, at the end
    run = StageRun(recipe, Path(output_dir), stage_inputs(stage, recipe.values), seed, is_main_process, hub=hub)
    try:
        checkpoint = run.start()
        return run, resumable(checkpoint, max_steps) if max_steps is not None else checkpoint
    except AlreadyFinished:
        logger.info("%s already holds a finished run of this recipe; nothing to do (--force re-runs it)", output_dir)
        return None


def resumable(checkpoint: str | None, max_steps: int) -> str | None:
    """The checkpoint to resume from: not one at `max_steps` or past it. Trainer resumed from its last step enters
    the epoch loop before it checks the step count and trains one step too many (transformers 5.x), so a run
    killed after its final checkpoint and before its outputs resumes from the checkpoint before that one, or
    starts over: the same result (runs are deterministic), a little more time."""
    if checkpoint is None or max_steps <= 0 or int(Path(checkpoint).name.rsplit("-", 1)[-1]) < max_steps:
        return checkpoint
    earlier = last_checkpoint(Path(checkpoint).parent, before_step=max_steps)
    logger.info("%s is at max_steps: resuming from %s instead", checkpoint, earlier or "the start")
    return earlier


def last_checkpoint(output_dir: Path, before_step: int | None = None) -> str | None:
    """The newest complete `checkpoint-N` (with N < `before_step`, if given); an incomplete one is passed over
    with a warning, so that a run resumes from the one before it rather than with fresh optimizer moments
    (Trainer would silently start them anew)."""
    checkpoints = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.split("-")[-1]
        if not suffix.isdigit() or (before_step is not None and int(suffix) >= before_step):
            continue
        missing = checkpoint_missing(path)
        if missing:
            logger.warning("%s is incomplete (%s): passed over for resuming", path, missing)
        else:
            checkpoints.append((int(suffix), path))
    return str(max(checkpoints)[1]) if checkpoints else None


def checkpoint_missing(path: Path) -> str | None:
    """What a checkpoint folder lacks to resume from, or None when complete. Trainer and the PPO stage both write
    trainer_state.json last; besides it a resume needs the weights and the optimizer's state (optimizer.pt, or
    the sharded folders FSDP and DeepSpeed write)."""
    if read_json_object(path / "trainer_state.json") is None:
        return "no readable trainer_state.json"
    names = [entry.name for entry in path.iterdir()]
    if not any(
        name.endswith((".safetensors", ".bin")) or name.startswith(("pytorch_model", "global_step")) for name in names
    ):
        return "no weights"
    if not any(name.startswith(("optimizer", "global_step")) for name in names):
        return "no optimizer state"
    return None
