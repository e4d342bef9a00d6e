"""PPO (RLHF): improve the SFT model against a reward, with a per-token KL penalty that keeps it near itself.

    python -m pipeline.ppo --config recipes/toy/ppo.yaml
    accelerate launch --config_file accelerate_config.yaml -m pipeline.ppo --config recipes/gpt2/ppo.yaml

`algorithm: grpo | rloo` runs TRL's GRPOTrainer / RLOOTrainer on the same recipe, reward and reference instead.
Outputs and metrics: docs/stages/ppo.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedModel, set_seed

from pipeline.contract import open_stage_run, write_json
from pipeline.errors import run_cli
from pipeline.models import load_tokenizer, parameter_counts, saved_context_length
from pipeline.policy_eval import PolicyEvaluation
from pipeline.recipes import parse_recipe, resolved_recipe
from pipeline.rl.config import (
    RECIPE_TYPES,
    PPOArguments,
    PPOConfig,
    check_recipe,
    prompt_length_limit,
)
from pipeline.rl.evaluation import measure_policy, policy_metrics
from pipeline.rl.loop import resume, train_ppo
from pipeline.rl.metrics import outcome_line, training_metrics
from pipeline.rl.plots import plot_reward_and_kl
from pipeline.rl.prompts import PromptSets, load_prompt_sets
from pipeline.rl.setup import (
    PPOParts,
    build_models,
    build_optimizer,
    log_training_plan,
    make_accelerator,
    prepare_parts,
    warn_if_policy_too_big,
)
from pipeline.tracking import loggable

logger = logging.getLogger("pipeline.ppo")


def main(argv: Sequence[str] | None = None) -> None:
    # --- recipe: parsed and checked before any model loads; the output directory opened (or resumed) -----
    args, model_args, config, recipe = parse_recipe(RECIPE_TYPES, argv, "ppo", __doc__)
    check_recipe(args, model_args, config, recipe.path)
    context = saved_context_length(model_args.model_name_or_path)
    prompt_limit = prompt_length_limit(config, context, recipe.path)
    accelerator = make_accelerator(config)
    output_dir = Path(config.output_dir)
    opened = open_stage_run(recipe, "ppo", output_dir, config.seed, accelerator.is_main_process, config=config)
    if opened is None:
        return
    run, checkpoint = opened
    set_seed(config.seed)

    # --- data: the policy's tokenizer, prompts to train on and held-out ones to measure on ---------------
    tokenizer = load_tokenizer(model_args.model_name_or_path)  # pad distinct from EOS, so EOS stays a learnable action
    prompt_sets = load_prompts(args, config, tokenizer, prompt_limit)
    if config.algorithm != "ppo":  # TRL's GRPO or RLOO, with the same reward and reference
        from pipeline.rl.trl_online import train_with_trl

        metrics = train_with_trl(args, model_args, config, tokenizer, prompt_sets, checkpoint, recipe)
        if metrics is not None:
            run.finish(resolved_recipe("ppo", args, model_args, config), metrics)
        return

    # --- models: policy, frozen reference, critic and reward; the optimizer ------------------------------
    actor_critic, reference = build_models(args, model_args, config, tokenizer)
    counts = parameter_counts(actor_critic)
    optimizer, scheduler = build_optimizer(actor_critic, config)
    parts = prepare_parts(accelerator, actor_critic, reference, optimizer, scheduler, tokenizer, args, config, context)
    log_training_plan(counts, args, model_args, config)
    warn_if_policy_too_big(accelerator, actor_critic, tokenizer, prompt_sets.train, config)

    # --- the PPO loop: rollouts, rewards, advantages and updates, step by step (resumed from a checkpoint) --
    start_step, log_history = resume(parts, checkpoint)
    if config.report_to:
        tracked = loggable(resolved_recipe("ppo", args, model_args, config))
        accelerator.init_trackers(config.run_name or output_dir.name, config=tracked)
    train_seconds = train_ppo(parts, config, prompt_sets.train, output_dir, start_step, log_history)

    # --- the policy against the SFT model on held-out prompts; the saved policy; metrics -----------------
    evaluation = measure(parts, prompt_sets.eval, args, config)
    policy = save_policy(accelerator, parts.model, tokenizer, output_dir)
    if not accelerator.is_main_process:
        return
    write_json(output_dir / "log_history.json", log_history)
    write_json(output_dir / "samples.json", evaluation.samples)
    plot_reward_and_kl(log_history, output_dir / "reward_kl.png", f"PPO: {recipe.path}")
    beta = parts.kl_control.value
    training = training_metrics(log_history, config, counts, prompt_sets, train_seconds, start_step, checkpoint, beta)
    metrics = ppo_metrics(evaluation, args, training, policy)
    run.finish(resolved_recipe("ppo", args, model_args, config), metrics)
    logger.info("%s; outputs in %s", outcome_line(metrics), output_dir)


def load_prompts(args: PPOArguments, config: PPOConfig, tokenizer, prompt_limit: int) -> PromptSets:
    """The recipe's training prompts and held-out ones (prompts over `prompt_limit` tokens are left out)."""
    prompt_sets = load_prompt_sets(
        args.datasets or args.dataset,
        tokenizer,
        max_prompt_tokens=prompt_limit,
        num_eval=args.num_eval_prompts,
        seed=config.seed,
        split=args.dataset_split,
        max_prompts=args.max_prompts,
        toy_prompts=args.toy_prompts,
        toy=args,
    )
    logger.info("prompts: %d for training, %d held out for measuring", len(prompt_sets.train), len(prompt_sets.eval))
    return prompt_sets


def measure(parts: PPOParts, prompts: list[str], args: PPOArguments, config: PPOConfig) -> PolicyEvaluation:
    """The policy against the SFT model (its reference) and the SFT model's sharpening frontier, on `prompts`."""
    accelerator = parts.accelerator
    return measure_policy(
        accelerator,
        accelerator.unwrap_model(parts.model).policy,
        parts.reference.model,
        parts.tokenizer,
        prompts,
        args,
        config,
        parts.scorer if args.reward == "model" else None,
        parts.gold,
    )


def save_policy(accelerator: Accelerator, model, tokenizer, output_dir: Path) -> PreTrainedModel:
    """The trained policy as a full model (LoRA merged into it) + tokenizer, loadable with from_pretrained."""
    policy = accelerator.unwrap_model(model).policy
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()  # the end of the run: the reference is no longer needed
    if accelerator.is_main_process:
        policy.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    return policy


def ppo_metrics(
    evaluation: PolicyEvaluation, args: PPOArguments, training: dict[str, Any], policy: PreTrainedModel
) -> dict[str, Any]:
    """metrics.json: the SFT model and the policy on held-out prompts, what training did, and the saved size."""
    return {
        "algorithm": "ppo",
        **policy_metrics(evaluation.summary, args),
        **training,
        "saved_parameters": sum(p.numel() for p in policy.parameters()),
    }


if __name__ == "__main__":
    run_cli(main)
