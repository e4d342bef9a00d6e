"""What every section of the report gets: the stage outputs found, the options, where figures go, and
models loaded once and shared (the decoding, KL and comparison studies use the same checkpoints)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.collect import RunSet, StageOutput

logger = logging.getLogger(__name__)


@dataclass
class Options:
    """The report's knobs (command-line flags of eval.report). Defaults keep the toy report near 30 s on 2 cores."""

    studies: bool = True  # the studies that load models and sample (decoding, tokenizers, comparison, KL)
    skip: tuple[str, ...] = ()  # sections left out by name (eval/sections/<name>.py)
    decoding_prompts: int = 16  # prompts per strategy where a stage's samples cannot be reused
    decoding_max_new_tokens: int = 32
    kl_prompts: int = 32
    kl_samples_per_prompt: int = 8
    kl_max_new_tokens: int = 24
    kl_pair: tuple[str, str] | None = None  # (policy, reference) stage-output names; default chosen from the runs
    tokenizer_documents: int = 2000
    tokenizer_train_steps: int = 0  # > 0: bits/char from a tiny GPT trained this many steps per tokenizer
    seed: int = 0


@dataclass
class Context:
    runs: RunSet
    out_dir: Path
    options: Options = field(default_factory=Options)
    _models: dict[Path, Any] = field(default_factory=dict)
    _reward_models: dict[Path, Any] = field(default_factory=dict)

    @property
    def figures_dir(self) -> Path:
        return self.out_dir / "report_figures"

    def figure_path(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"

    def model(self, output: StageOutput):
        """(causal LM, tokenizer) of a stage output, loaded once."""
        from eval.scoring import load_causal_lm

        key = output.path.resolve()
        if key not in self._models:
            logger.info("loading %s", output.path)
            self._models[key] = load_causal_lm(output.path)
        return self._models[key]

    def reward_model(self, output: StageOutput):
        """(sequence-classification model, tokenizer) of a reward stage output, loaded once."""
        key = output.path.resolve()
        if key not in self._reward_models:
            from pipeline.reward_model import load_reward_model

            model, tokenizer = load_reward_model(output.path)  # with the pooling it was trained with
            self._reward_models[key] = (model, tokenizer)
        return self._reward_models[key]

    def toy_recipe(self, stage: str = "pretrain") -> dict[str, Any] | None:
        """The toy-world settings of the main `stage` run (the main pretraining run when there is none), or
        None when the runs are not on the toy world."""
        run = self.runs.main(stage) or self.runs.main("pretrain")
        recipe = run.recipe if run else {}
        if run is not None and recipe.get("dataset", "toy") != "toy":
            return None
        return recipe

    def toy_prompts(self, n: int, stage: str = "pretrain") -> list[str] | None:
        """`n` held-out toy-world prompts (the split the stages report: their toy_eval_split) of the world `stage` was
        trained on (the toy SFT and preference recipes drop addition, pretraining keeps it), or None off the
        toy world."""
        recipe = self.toy_recipe(stage)
        if recipe is None:
            return None
        from pipeline.data.toy_world import ToyWorld, eval_split

        return ToyWorld.from_recipe(recipe).prompts(n, split=eval_split(recipe))
