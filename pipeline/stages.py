"""The registry of stages: which module runs a recipe's `stage:` and which recipe keys are its inputs.

Kept free of heavy imports so that the chain runner can plan without loading torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from pipeline.errors import RecipeError


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    input_keys: tuple[str, ...]  # recipe keys naming models, stage outputs or data files the stage reads
    optional: bool = False  # a study beside the main chain: a report does not call it missing

    @property
    def implemented(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("pretrain", "pipeline.pretrain", ("dataset", "tokenizer_name_or_path")),
        StageSpec("sft", "pipeline.sft", ("model_name_or_path", "dataset")),
        StageSpec("reward", "pipeline.reward", ("model_name_or_path", "dataset")),
        StageSpec("ppo", "pipeline.ppo", ("model_name_or_path", "reward_model_path", "dataset")),
        StageSpec("dpo", "pipeline.dpo", ("model_name_or_path", "dataset")),
        StageSpec("prm", "pipeline.prm", ("model_name_or_path", "compare_with", "dataset"), optional=True),
        StageSpec("weak_to_strong", "pipeline.weak_to_strong", ("weak_model", "strong_model", "dataset")),
    )
}


def stage_inputs(stage: str, values: dict) -> dict[str, str]:
    """The input values of a recipe, by key, as the manifest records them."""
    keys = STAGES[stage].input_keys if stage in STAGES else ()
    return {key: str(values[key]) for key in keys if values.get(key) not in (None, "")}


def recipe_stage(path: object, values: dict) -> str:
    """The stage a recipe names by its `stage:` key, checked (the recipe's path only for the message)."""
    stage = values.get("stage")
    if stage is None:
        raise RecipeError(
            f"{path}: missing key 'stage' (one of {', '.join(STAGES)}); a recipe without it runs when the command "
            f"names the stage (`gpt-pipeline train --stage sft {path}`)."
        )
    if stage not in STAGES:
        raise RecipeError(f"{path}: unknown stage '{stage}'; the stages are {', '.join(STAGES)}.")
    return stage
