"""Direct Preference Optimization (DPO, and its relatives IPO, hinge, robust, ...) from the SFT model: the policy
learns the preference pairs directly, with no reward model and no sampling, against a frozen reference.

    python -m pipeline.dpo --config recipes/toy/dpo.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.dpo --config recipes/gpt2/dpo.yaml

Outputs and metrics: docs/stages/dpo.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import DPOTrainer
from trl.trainer.utils import get_peft_config

from pipeline.contract import write_json
from pipeline.errors import run_cli
from pipeline.finetuning import build_policy, keep_adapters_in_fp32, merge_into_base, mode_name, save_fine_tuned
from pipeline.models import fit_max_length, load_tokenizer, parameter_counts
from pipeline.preference.config import RECIPE_TYPES, DPOModelArguments, DPOTrainingConfig, check_combination
from pipeline.preference.evaluation import (
    compare_with_sft,
    dpo_metrics,
    evaluation_prompts,  # noqa: F401  (read through this module by tests/test_splits.py)
    final_evaluation,
    held_out_numbers,
    log_results,
)
from pipeline.preference.models import load_reference
from pipeline.preference.pairs import load_pairs, prepare_pairs  # noqa: F401  (load_pairs: as evaluation_prompts)
from pipeline.preference.plots import write_curves
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.resources import MemoryCheck
from pipeline.training import GracefulInterrupt, open_trainer_run, training_figures

logger = logging.getLogger("pipeline.dpo")


def build_trainer(
    model_args: DPOModelArguments,
    training_args: DPOTrainingConfig,
    train_set: datasets.Dataset,
    held_out: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    callbacks: Sequence[TrainerCallback] = (),
) -> DPOTrainer:
    """TRL's DPOTrainer on the SFT model; with LoRA/QLoRA, TRL wraps the policy in the adapters itself."""
    trainer = DPOTrainer(
        model=build_policy(model_args, tokenizer, training_args),
        ref_model=load_reference(model_args, tokenizer, training_args),
        args=training_args,
        train_dataset=train_set,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
    )
    if trainer.args.device.type == "cpu":
        keep_adapters_in_fp32(trainer.model)
    return trainer


def log_training_plan(trainer: DPOTrainer, model_args: DPOModelArguments, training_args: DPOTrainingConfig) -> None:
    """One log line: mode, loss, beta, trainable parameters, the reference, and how many pairs."""
    counts = parameter_counts(trainer.model)
    logger.info(
        "DPO (%s, loss %s, beta %g): %d of %d parameters trainable; reference: %s; %d train / %d held-out pairs",
        mode_name(model_args),
        "+".join(training_args.loss_type),
        training_args.beta,
        counts["trainable_parameters"],
        counts["parameters"],
        "the policy with adapters disabled" if trainer.ref_model is None else "a frozen copy of the SFT model",
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
    )


def main(argv: Sequence[str] | None = None) -> None:
    # Recipe: the SFT model, the pairs, TRL's DPOConfig (a finished run of the same recipe is not run again)
    args, model_args, training_args, recipe = parse_recipe(RECIPE_TYPES, argv, "dpo", __doc__)
    check_combination(model_args, training_args, recipe.path)
    training_args.max_length = fit_max_length(
        model_args.model_name_or_path,
        training_args.max_length,
        recipe.path,
        "max_length" in recipe.values,
        training_args.trust_remote_code,
    )
    opened = open_trainer_run(recipe, "dpo", training_args)
    if opened is None:
        return
    run, checkpoint = opened
    output_dir = Path(training_args.output_dir)

    # Data: training and held-out pairs, prompts shortened to max_prompt_length, pairs over max_length counted
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    train_set, held_out_pairs, data = prepare_pairs(args, model_args, training_args, tokenizer)

    # Model and trainer: the policy and its reference, both the SFT model
    interrupt = GracefulInterrupt()
    callbacks = [interrupt, MemoryCheck(training_args.max_length, 2)]
    trainer = build_trainer(model_args, training_args, train_set, held_out_pairs, tokenizer, callbacks=callbacks)
    log_training_plan(trainer, model_args, training_args)

    # Training, with the held-out pairs measured before and after
    before_raw = trainer.evaluate()
    train_result, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)
    trainer.state.log_history.insert(0, {**before_raw, "step": 0})  # train() started a new history
    held_out = {
        "before": held_out_numbers(before_raw, "eval"),
        "after": held_out_numbers(final_evaluation(trainer), "eval"),
    }

    # Save: the model, or for LoRA/QLoRA the adapter (merged into the full model unless merge_adapters is false)
    merge = merge_into_base(model_args, tokenizer, output_dir, training_args.trust_remote_code)
    final_model = save_fine_tuned(
        trainer, model_args.use_peft, tokenizer, output_dir, merge if args.merge_adapters else None
    )
    if final_model is None:  # not the main process
        return
    merged = final_model if model_args.use_peft and args.merge_adapters else None

    # Evaluation: the policy against the SFT model on held-out prompts, and the curves over the steps
    comparison = compare_with_sft(args, model_args, trainer, merged, tokenizer, held_out_pairs)
    write_json(output_dir / "samples.json", comparison.samples)
    write_curves(trainer, training_args, output_dir, recipe.path)

    # Metrics
    training = training_figures(trainer, train_result, train_seconds, checkpoint)
    metrics = dpo_metrics(
        args, model_args, training_args, trainer, held_out, comparison.summary, data, training, merged is not None
    )
    run.finish(resolved_recipe("dpo", args, model_args, training_args), metrics)
    log_results(metrics, held_out, args.dataset == "toy", output_dir)


if __name__ == "__main__":
    run_cli(main)
