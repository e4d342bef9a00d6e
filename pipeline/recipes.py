"""Recipes: one YAML file per stage run, parsed into the stage's dataclasses.

A recipe is a flat YAML mapping whose first key names the stage (`stage: pretrain`; optional when the
command names the stage); the other keys are fields of the stage's dataclasses (its own arguments plus a
`transformers`/TRL config), exactly as in TRL's scripts and the alignment-handbook, and TRL's own spellings
of the few keys named differently here are accepted (TRL_ALIASES). Any key can be overridden on the command line:

    python -m pipeline.pretrain --config recipes/toy/pretrain.yaml --max_steps 50

`HfArgumentParser` provides `--help` and builds the dataclasses. What it does not do, and this module
adds, is to reject a bad recipe *before* any model or data is loaded, with a message that names the key
and the file: unknown keys (with a "did you mean"), values of the wrong type (YAML 1.1 reads `1e-3` as a
string, so numeric strings are accepted for floats), values out of range, and missing paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import RecipeError

# Command-line flags that steer a run but are not recipe values (and so do not change its fingerprint).
RUN_FLAGS = ("--force",)

# TRL's names for keys this project spells its own way, so that a TRL script's recipe runs unchanged. A recipe
# may use either spelling, not both; the run records the project's. An alias applies only where the stage has no
# key of that name itself (DPO's `beta` stays DPO's β; in the PPO stage `beta` is GRPO's KL coefficient).
TRL_ALIASES: dict[str, str] = {
    "dataset_name": "dataset",
    "dataset_config": "dataset_config_name",
    "dataset_train_split": "dataset_split",
    "reward_model_name_or_path": "reward_model_path",  # TRL's GRPO script
    "num_ppo_epochs": "ppo_epochs",  # TRL's PPOConfig
    "num_iterations": "ppo_epochs",  # GRPOConfig: passes over each batch of generations
    "max_completion_length": "response_length",  # GRPOConfig
    "beta": "kl_coef",  # GRPOConfig
    "epsilon": "cliprange",  # GRPOConfig
}

# TRL keys with no counterpart here: refused with the reason, never silently ignored.
TRL_REFUSED: dict[str, str] = {
    "dataset_test_split": "this project holds out `eval_fraction` of the training data (DPO and reward can also "
    "read `eval_dataset` with `eval_split`)",
    "total_episodes": "give `max_steps` instead (each step takes per_device_train_batch_size prompts per process)",
    "reward_funcs": "the PPO stage scores with `reward_model_path` (or `reward: gold` on the toy world)",
    "use_vllm": "generation runs in transformers here",
}


@dataclass
class Recipe:
    """What was asked for: the file, the stage, and the user's values after command-line overrides."""

    path: Path
    stage: str
    values: dict[str, Any]
    force: bool = False

    @property
    def fingerprint(self) -> str:
        return recipe_fingerprint(self.values)


def recipe_fingerprint(values: dict[str, Any]) -> str:
    """A stable hash of the user's recipe values; the chain runner compares it with a manifest's."""
    canonical = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key written twice in one mapping (PyYAML would silently keep the last value)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in lines:
                raise _DuplicateKey(key, lines[key], key_node.start_mark.line + 1)
            lines[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: construct_mapping names it
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_recipe_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe YAML with the safe loader; every problem names the file (and the line for YAML errors)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"recipe file {path} not found. Pass an existing file with --config, e.g. recipes/toy/pretrain.yaml."
        )
    try:
        mapping = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except _DuplicateKey as error:
        raise RecipeError(
            f"{path}: key '{error.key}' is written twice, at lines {error.first_line} and {error.second_line}; keep "
            "one."
        ) from None
    except UnicodeDecodeError as error:
        raise RecipeError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}).") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"{path}: invalid YAML{where}: {problem}.") from None
    if mapping is None:
        raise RecipeError(f"{path}: the recipe is empty. It needs at least `stage:` and `output_dir:`.")
    if not isinstance(mapping, dict):
        raise RecipeError(
            f"{path}: a recipe must be a YAML mapping of `key: value` lines, got a {type(mapping).__name__}."
        )
    return mapping


def split_command_line(argv: Sequence[str]) -> tuple[str | None, dict[str, Any], bool]:
    """Split `--config FILE --key value ... --force` into (file, overrides, force).

    Override values are read as YAML scalars, so `--max_steps 10` is an int and `--bf16 false` a bool,
    the same types the key would have in the file.
    """
    config, overrides, force = None, {}, False
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item == "--force":
            force = True
            index += 1
            continue
        if not item.startswith("--"):
            raise RecipeError(f"unexpected argument {item!r}: use --config FILE and --key value pairs.")
        key, _, inline_value = item[2:].partition("=")
        if inline_value or "=" in item:
            value = inline_value
            index += 1
        elif index + 1 < len(items) and not items[index + 1].startswith("--"):
            value = items[index + 1]
            index += 2
        else:  # a bare flag such as `--bf16` means true, as in HfArgumentParser
            value = "true"
            index += 1
        if key == "config":
            config = value
            continue
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key] = value
    return config, overrides, force


def _as_recipe_keys(overrides: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Command-line spellings that `--help` (HfArgumentParser) shows, as recipe keys: `--report-to` for report_to,
    and a bare `--no_merge_adapters` / `--no-merge-adapters` for `merge_adapters: false`."""
    keys = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in fields and name.startswith("no_") and name[3:] in fields and value is True:
            name, value = name[3:], False
        keys[name] = value
    return keys


def _apply_aliases(values: dict[str, Any], fields: dict[str, Any], where: str, prefix: str) -> dict[str, Any]:
    """`values` with TRL's spellings (TRL_ALIASES) renamed to this project's; both spellings at once is an error."""
    renamed: dict[str, Any] = {}
    for key, value in values.items():
        name = TRL_ALIASES.get(key) if key not in fields else None
        if name is None or name not in fields:
            if key in renamed:
                raise RecipeError(f"{where}: '{prefix}{key}' is given twice, once under a TRL alias; keep one.")
            renamed[key] = value
            continue
        if name in values or name in renamed:
            raise RecipeError(
                f"{where}: '{prefix}{key}' is TRL's name for '{prefix}{name}', and both are given; keep one."
            )
        renamed[name] = value
    return renamed


def _refuse_unknown(keys: list[str], fields: dict[str, Any], stage: str, where: str, noun: str, prefix: str) -> None:
    """The first key no dataclass of the stage has, as one error naming `where` it came from and the closest key."""
    unknown = [key for key in keys if key not in fields]
    if unknown and unknown[0] in TRL_REFUSED:
        raise RecipeError(
            f"{where}: TRL's {noun} '{prefix}{unknown[0]}' has no counterpart in stage '{stage}': "
            f"{TRL_REFUSED[unknown[0]]}."
        )
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = (
            f" Did you mean '{prefix}{close[0]}'?"
            if close
            else f" Run `python -m pipeline.{stage} --help` for the {noun}s."
        )
        raise RecipeError(f"{where}: unknown {noun} '{prefix}{unknown[0]}' for stage '{stage}'.{hint}")


# --- type checking ---------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation`, or raise _Mismatch. Conversions are the safe ones only."""
    if annotation is Any or annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if value is None and type(None) in arguments:
            return None
        # Try the strict types before `str`, which would accept almost anything.
        for argument in sorted((a for a in arguments if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, argument)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise _Mismatch
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        for member in annotation:
            if value == member.value or value == member:
                return member.value if isinstance(value, str) else value
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if origin in (list, tuple, set, Sequence) or annotation in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        (element,) = typing.get_args(annotation)[:1] or (Any,)
        return [_coerce(item, element) for item in items]
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    return value  # an annotation we do not know how to check: let the dataclass judge


def _field_types(dataclass_types: Sequence[type]) -> dict[str, tuple[type, Any]]:
    fields: dict[str, tuple[type, Any]] = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        for field in dataclasses.fields(dataclass_type):
            if field.init:
                fields.setdefault(field.name, (dataclass_type, hints.get(field.name, Any)))
    return fields


# --- value checks that the dataclasses themselves do not make ------------------------------------------

_POSITIVE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "logging_steps",
    "save_steps",
)
_NON_NEGATIVE = ("weight_decay", "warmup_steps", "max_grad_norm", "seed", "save_total_limit")


def _check_ranges(values: dict[str, Any], path: Path) -> None:
    for key in _POSITIVE:
        if key in values and isinstance(values[key], (int, float)) and values[key] <= 0:
            raise RecipeError(f"{path}: key '{key}' must be > 0, got {values[key]}.")
    for key in _NON_NEGATIVE:
        if key in values and isinstance(values[key], (int, float)) and values[key] < 0:
            raise RecipeError(f"{path}: key '{key}' must be >= 0, got {values[key]}.")


def require_positive(settings: Any, *keys: str, allow_none: bool = False) -> None:
    """For a recipe dataclass's __post_init__: each of `keys` must be > 0 (or None, with allow_none)."""
    for key in keys:
        value = getattr(settings, key)
        if allow_none and value is None:
            continue
        if value <= 0:
            raise ValueError(f"key '{key}' must be > 0{' or null' if allow_none else ''}, got {value}")


def require_non_negative(settings: Any, *keys: str) -> None:
    """For a recipe dataclass's __post_init__: each of `keys` must be >= 0."""
    for key in keys:
        if getattr(settings, key) < 0:
            raise ValueError(f"key '{key}' must be >= 0, got {getattr(settings, key)}")


def check_paths(args: Any, path: Path) -> None:
    """Fields listed in the dataclass's `path_fields` ({field: "file" | "dataset" | "model"}) must exist.

    Models and data sets may also be hub names; the built-in data set is called `toy`.
    """
    for name, kind in getattr(type(args), "path_fields", {}).items():
        value = getattr(args, name)
        for item in value if isinstance(value, list) else [value]:
            if item in (None, ""):
                continue
            if kind == "model" and looks_like_hub_id(item):
                continue
            if kind == "dataset" and (item == "toy" or looks_like_hub_id(item)):
                continue
            if not Path(item).exists():
                hint = " (is it the output of an earlier stage that has not run yet?)" if kind == "model" else ""
                raise RecipeError(f"{path}: key '{name}': path {item} does not exist{hint}.")


_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".gz", ".csv", ".parquet", ".yaml", ".yml", ".safetensors", ".bin")


def looks_like_hub_id(name: str) -> bool:
    """`gpt2` or `openai-community/gpt2`; not `./gpt2`, `runs/toy/sft`, `/abs/path` or `data/train.jsonl`."""
    if Path(name).exists() or name.lower().endswith(_FILE_SUFFIXES):
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None


# --- the entry point stages call --------------------------------------------------------------------


def parse_recipe(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None,
    stage: str,
    description: str = "",
    require_paths: bool = True,
) -> tuple[Any, ...]:
    """Parse `--config FILE [--key value ...] [--force]` into the stage's dataclasses plus a `Recipe`.

    Returns `(*dataclass_instances, recipe)`. Raises `RecipeError` naming the key and the file for
    any problem, before the caller loads a model or data set. `require_paths=False` skips the checks
    that input paths exist (to validate recipes whose inputs are produced by earlier stages).
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help(dataclass_types, stage, description)
        raise SystemExit(0)
    config, overrides, force = split_command_line(argv)
    if config is None:
        raise RecipeError(
            f"no recipe given: run `python -m pipeline.{stage} --config recipes/<experiment>/{stage}.yaml`."
        )
    path = Path(config)
    fields = _field_types(dataclass_types)
    values = _apply_aliases(read_recipe_file(path), fields, str(path), "")
    overrides = _apply_aliases(_as_recipe_keys(overrides, fields), fields, "command line", "--")
    _refuse_unknown([key for key in overrides if key != "stage"], fields, stage, "command line", "option", "--")
    values.update(overrides)

    # A recipe without `stage:` (a TRL script's recipe) runs as the stage the command names.
    recipe_stage = values.pop("stage", stage)
    if recipe_stage != stage:
        raise RecipeError(
            f"{path}: this recipe is for stage '{recipe_stage}' but was given to pipeline.{stage}; "
            f"run it with `python -m pipeline.{recipe_stage} --config {path}`."
        )
    recipe = Recipe(path=path, stage=stage, values=dict(values), force=force)
    if values.get("resume_from_checkpoint") not in (None, False):
        raise RecipeError(
            f"{path}: key 'resume_from_checkpoint' is not used: a stage resumes by itself from the last complete "
            "checkpoint in its output_dir. Remove the key; to start over, run with --force."
        )

    _refuse_unknown(list(values), fields, stage, str(path), "key", "")

    per_type: dict[type, dict[str, Any]] = {dataclass_type: {} for dataclass_type in dataclass_types}
    for key, value in values.items():
        owner, annotation = fields[key]
        try:
            per_type[owner][key] = _coerce(value, annotation)
        except _Mismatch:
            raise RecipeError(
                f"{path}: key '{key}' expects {_type_name(annotation)}, got {value!r} ({type(value).__name__})."
            ) from None
    _check_ranges({key: value for kwargs in per_type.values() for key, value in kwargs.items()}, path)

    instances = []
    for dataclass_type, kwargs in per_type.items():
        try:
            instance = dataclass_type(**kwargs)
        except (ValueError, TypeError) as error:
            raise RecipeError(f"{path}: {error}") from None
        if require_paths:
            check_paths(instance, path)
        instances.append(instance)
    return (*instances, recipe)


def _print_help(dataclass_types: Sequence[type], stage: str, description: str) -> None:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        dataclass_types,
        prog=f"python -m pipeline.{stage}",
        description=(description + "\n\n" if description else "")
        + "Every option below is also a recipe key. Values on the command line override the recipe file. "
        + "--debug (before or after --config) shows Python tracebacks for user errors.",
    )
    parser.add_argument("--config", required=True, help=f"recipe YAML file, e.g. recipes/toy/{stage}.yaml")
    parser.add_argument("--force", action="store_true", help="re-run even if the output is finished, replacing it")
    for action in parser._actions:
        # argparse %-formats every help string (for its own "%(default)s"): a "20%" in a field's help would crash
        # --help.
        if action.help and action.help is not argparse.SUPPRESS and "%(" not in action.help:
            action.help = action.help.replace("%", "%%")
    parser.print_help()


def resolved_recipe(stage: str, *instances: Any) -> dict[str, Any]:
    """Every value the run used, defaults included, for `recipe.yaml` in the output directory."""
    resolved: dict[str, Any] = {"stage": stage}
    for instance in instances:
        values = instance.to_dict() if hasattr(instance, "to_dict") else dataclasses.asdict(instance)
        for key, value in values.items():
            resolved.setdefault(key, value.value if isinstance(value, enum.Enum) else value)
    return json.loads(json.dumps(resolved, default=str))
