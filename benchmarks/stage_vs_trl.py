"""The reward and DPO stages against TRL's trainers called directly, on the same model, data and settings.

    python benchmarks/stage_vs_trl.py                      # the toy SFT model (runs/toy/sft), 40 steps, 3 repetitions
    python benchmarks/stage_vs_trl.py --stages dpo --steps 20 --repeats 5

What the stage adds around TRL (recipe checks, data checks, its callbacks: interrupt handling, memory check)
should cost nothing per step. Each repetition runs, in this process and alternating, the stage's own
`main` on a recipe made from recipes/toy/<stage>.yaml (the stage's extras that are not training switched
off: no samples of the SFT model, no Best-of-N, no extra reward-model layers) and TRL's RewardTrainer /
DPOTrainer built here from the same model folder, the same pairs (the toy world's, as the stage loads them)
and the same config values (TRL's own defaults where the recipe sets nothing, except gradient checkpointing, which
TRL turns on by default and the CPU recipes turn off: compared with it on, the stage looked 1.3x faster). Both are
timed around `trainer.train()` (the stage reports it as train_seconds), so tokenization and evaluation are outside
the window for both. Steps/s ratio = stage / direct, median and range over the repetitions. The SFT stage has the
same comparison in benchmarks/sft_memory.py (stage vs direct). This is a benchmark, not a test: it prints, it does
not assert.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Recipe values that switch off what the stage does besides training, so both sides time the same work.
TRAINING_ONLY = {
    "reward": {
        "toy_policy_prompts": 0,
        "best_of_n_prompts": 0,
        "extra_layers": 0,
        "train_sampling_strategy": "random",
    },
    "dpo": {"toy_policy_prompts": 0, "num_eval_prompts": 4, "sharpening_temperatures": [1.0]},
}
#: The config values both sides share (everything else is each trainer's default, the same on both sides).
SHARED = (
    "per_device_train_batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_length",
    "gradient_checkpointing",
    "beta",
    "loss_type",
    "loss_weights",
    "seed",
)


def stage_recipe(stage: str, model: str, output_dir: Path, steps: int) -> dict:
    values = yaml.safe_load((REPO / "recipes" / "toy" / f"{stage}.yaml").read_text())
    values.update(TRAINING_ONLY[stage])
    values.update(
        model_name_or_path=model,
        output_dir=str(output_dir),
        max_steps=steps,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=steps,
        disable_tqdm=True,
    )
    values.pop("reward_model_path", None)
    values.pop("save_steps", None)
    values.pop("save_total_limit", None)
    return values


def run_stage(stage: str, recipe: dict, workdir: Path) -> float:
    """Steps/s of the stage's own run, from its metrics (train_seconds is the time of trainer.train())."""
    import importlib

    path = workdir / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module(f"pipeline.{stage}").main(["--config", str(path), "--force"])
    metrics = json.loads((Path(recipe["output_dir"]) / "metrics.json").read_text())
    return metrics["steps"] / metrics["train_seconds"]


def toy_pairs(stage: str, recipe: dict):
    """The training pairs the stage trains on (its own loader, so both sides see the same data)."""
    import importlib

    module = importlib.import_module(f"pipeline.{stage}")
    arguments = module.RECIPE_TYPES[0]
    known = set(arguments.__dataclass_fields__) - {"path_fields"}
    args = arguments(**{key: value for key, value in recipe.items() if key in known})
    train, _, _ = module.load_pairs(args, recipe["seed"])
    return train


def run_direct(stage: str, recipe: dict, workdir: Path) -> float:
    """Steps/s of TRL's trainer built here, as a TRL user would write it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(recipe["model_name_or_path"])
    common = {
        key: recipe[key]
        for key in SHARED
        if key in recipe and (stage == "dpo" or key not in ("beta", "loss_type", "loss_weights"))
    }
    settings = dict(
        output_dir=str(workdir / f"direct_{stage}"),
        max_steps=recipe["max_steps"],
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        logging_steps=recipe["max_steps"],
        dataloader_num_workers=0,
        **common,
    )
    pairs = toy_pairs(stage, recipe)
    if stage == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(recipe["model_name_or_path"], num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(
            model=model, args=RewardConfig(**settings), train_dataset=pairs, processing_class=tokenizer
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(recipe["model_name_or_path"])
        trainer = DPOTrainer(model=model, args=DPOConfig(**settings), train_dataset=pairs, processing_class=tokenizer)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    return trainer.state.global_step / (time.perf_counter() - start)


def default_model() -> str:
    path = REPO / "runs" / "toy" / "sft"
    if not (path / "manifest.json").is_file():
        raise SystemExit(
            "no toy SFT model: run `make demo` (or python -m pipeline.sft --config recipes/toy/sft.yaml) first, "
            "or pass --model"
        )
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="the SFT model both sides start from (default runs/toy/sft)")
    parser.add_argument("--stages", default="reward,dpo")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions of direct and stage per stage")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING)
    model = args.model or default_model()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {model}; {args.steps} steps per run")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        for stage in args.stages.split(","):
            recipe = stage_recipe(stage, model, workdir / stage, args.steps)
            rates: dict[str, list[float]] = {"direct": [], "stage": []}
            for repeat in range(args.repeats):
                rates["direct"].append(run_direct(stage, recipe, workdir))
                rates["stage"].append(run_stage(stage, recipe, workdir))
                print(
                    f"{stage} repeat {repeat + 1}: direct {rates['direct'][-1]:.3f}, "
                    f"stage {rates['stage'][-1]:.3f} steps/s",
                    flush=True,
                )
            rows.append((stage, rates))
    print(f"\n{'stage':<8} {'direct steps/s':>22} {'stage steps/s':>22} {'stage / direct':>24}")
    for stage, rates in rows:
        ratios = [s / d for s, d in zip(rates["stage"], rates["direct"])]
        cell = lambda values: f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"  # noqa: E731
        print(f"{stage:<8} {cell(rates['direct']):>22} {cell(rates['stage']):>22} {cell(ratios):>24}")


if __name__ == "__main__":
    main()
