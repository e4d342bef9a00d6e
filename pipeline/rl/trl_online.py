"""`algorithm: grpo | rloo`: TRL's GRPOTrainer / RLOOTrainer on the same recipe, reward and reference as PPO.

So that online algorithms compare on one recipe, the PPO recipe's values are mapped onto TRL's configs:

    PPO recipe                           GRPO / RLOO
    per_device_train_batch_size (B)      B completions per rollout = B / num_generations prompts × num_generations
    num_mini_batches (M)                 steps_per_generation = M, per_device_train_batch_size = B / M
    ppo_epochs                           num_iterations (passes over each rollout)
    max_steps (rollouts)                 max_steps = rollouts × M × ppo_epochs (TRL counts optimizer steps)
    kl_coef (β)                          beta (GRPO: β·k3 per token in the loss; RLOO: β·Σ k1 in the reward)
    cliprange, temperature, response_length    epsilon, temperature, max_completion_length

The reward is the same function PPO uses (the reward model read at the last real token, or the gold
reward), wrapped as a TRL reward function with the same missing-EOS penalty; the reference is the SFT
model (with LoRA: the policy with adapters disabled, which TRL does itself). TRL's own baseline replaces
PPO's critic: the group mean (GRPO) or the leave-one-out mean of the other samples (RLOO).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.trainer.utils import get_peft_config

from pipeline.contract import write_json
from pipeline.errors import RecipeError, UserError
from pipeline.models import adamw, load_model, policy_parameter_groups
from pipeline.rl.evaluation import measure_policy, policy_metrics
from pipeline.rl.scoring import GoldScorer, make_scorer
from pipeline.training import GracefulInterrupt

logger = logging.getLogger(__name__)

TRAINERS = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}


def make_reward_function(scorer, gold: GoldScorer | None, eos_token_id: int, missing_eos_penalty: float | None):
    """A TRL reward function: (prompts, completions, completion_ids, ...) -> one float per completion.

    TRL cuts completion ids after the first EOS and keeps it, so a completion that ends with EOS finished;
    one that does not was cut by the length limit and gets the missing-EOS penalty, as in PPO.
    """

    def reward(prompts, completions, completion_ids, log_metric=None, **kwargs) -> list[float]:
        finished = [bool(ids) and ids[-1] == eos_token_id for ids in completion_ids]
        scores = scorer(prompts, completions, finished).float()
        if log_metric is not None:
            log_metric("score", scores.mean().item())
            if gold is not None:
                log_metric(
                    "gold_reward",
                    (scores if isinstance(scorer, GoldScorer) else gold(prompts, completions, finished)).mean().item(),
                )
            if not isinstance(scorer, GoldScorer):
                log_metric("rm_reward", scores.mean().item())
            log_metric("finished_fraction", sum(finished) / len(finished))
        if missing_eos_penalty is not None:
            scores = scores - missing_eos_penalty * (~torch.tensor(finished)).float()
        return scores.tolist()

    reward.__name__ = scorer.name  # TRL logs rewards/<name>/mean
    return reward


def trl_config(config):
    """TRL's config for config.algorithm, from the PPO recipe values (see the table in the module docstring)."""
    config_class, _ = TRAINERS[config.algorithm]
    if config.per_device_train_batch_size % config.num_generations:
        raise RecipeError(
            f"key 'per_device_train_batch_size' ({config.per_device_train_batch_size}) must be a multiple of "
            f"num_generations ({config.num_generations}) for {config.algorithm}: each prompt is sampled "
            "num_generations times."
        )
    updates_per_rollout = config.num_mini_batches * config.ppo_epochs
    return config_class(
        output_dir=config.output_dir,
        seed=config.seed,
        max_steps=config.max_steps * updates_per_rollout,
        per_device_train_batch_size=config.per_device_train_batch_size // config.num_mini_batches,
        steps_per_generation=config.num_mini_batches,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_iterations=config.ppo_epochs,
        num_generations=config.num_generations,
        max_completion_length=config.response_length,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        beta=config.kl_coef,
        epsilon=config.cliprange,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps * updates_per_rollout,
        save_strategy="steps",
        save_steps=config.save_steps * updates_per_rollout,
        save_total_limit=config.save_total_limit,
        use_cpu=config.use_cpu,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        disable_dropout=True,  # as PPO: sampling and training see the same network (N+ details: dropout off)
        report_to=config.report_to or "none",
        run_name=config.run_name,
    )


def final_norm_optimizer(policy, config) -> torch.optim.Optimizer | None:
    """With `final_norm_learning_rate`, AdamW with the policy's final norm in a group of its own (as PPO's
    build_optimizer); the Trainer still builds the learning-rate schedule over both groups. None otherwise.

    Unlike the Trainer's own AdamW this one decays every other weight alike (the toy recipes use no decay).
    """
    if config.final_norm_learning_rate is None:
        return None
    groups = policy_parameter_groups(policy, config.learning_rate, config.final_norm_learning_rate)
    return adamw(groups, config)


def train_with_trl(
    args, model_args, config, tokenizer, prompt_sets, checkpoint: str | None, recipe
) -> dict[str, Any] | None:
    """Train with GRPO or RLOO; save the policy as a full model; measure before/after like PPO. Returns metrics."""
    ppo_only = {
        "target_kl": config.target_kl is not None,
        "ptx_coef": config.ptx_coef > 0,
        "samples_per_prompt": config.samples_per_prompt != 1,
        "critic_warmup_steps": config.critic_warmup_steps > 0,
        "kl_in_loss": config.kl_in_loss,
        "kl_estimator": config.kl_estimator != "k1",
    }
    if any(ppo_only.values()):
        keys = ", ".join(key for key, is_set in ppo_only.items() if is_set)
        logger.warning(
            "%s: %s are options of the project's PPO; TRL's trainer ignores them (num_generations sets its groups)",
            config.algorithm,
            keys,
        )
    output_dir = Path(config.output_dir)
    trl_args = trl_config(config)
    policy = load_model(model_args, tokenizer, trust_remote_code=False)
    if not model_args.use_peft and len(tokenizer) != policy.config.get_text_config().vocab_size:
        raise UserError(
            "grpo/rloo without LoRA builds its reference from the model's path, whose vocabulary lacks the added pad "
            "token."
        )
    sft = load_model(model_args, tokenizer).eval().requires_grad_(False)  # for measuring before/after only

    _, trainer_class = TRAINERS[config.algorithm]
    interrupt = GracefulInterrupt()
    scorer = make_scorer(args.reward, args.reward_model_path, trl_args.device, args.eval_batch_size, tokenizer)
    gold = GoldScorer() if args.dataset == "toy" else None
    reward_function = make_reward_function(scorer, gold, tokenizer.eos_token_id, config.missing_eos_penalty)
    tokenizer.padding_side = "left"  # TRL pads prompts with the tokenizer: left, for generation
    trainer = trainer_class(
        model=policy,
        reward_funcs=reward_function,
        args=trl_args,
        train_dataset=datasets.Dataset.from_dict({"prompt": prompt_sets.train}),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[interrupt],
        optimizers=(final_norm_optimizer(policy, config), None),  # None, None: the Trainer builds both
    )
    accelerator = trainer.accelerator
    sft.to(accelerator.device)
    _, train_seconds = interrupt.run_training(trainer, checkpoint, output_dir)

    policy = accelerator.unwrap_model(trainer.model)
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    policy.eval()
    evaluation = measure_policy(
        accelerator,
        policy,
        sft,
        tokenizer,
        prompt_sets.eval,
        args,
        config,
        scorer if args.reward == "model" else None,
        gold,
    )
    tokenizer.padding_side = "right"
    if not accelerator.is_main_process:
        return None
    policy.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    history = trainer.state.log_history
    write_json(output_dir / "log_history.json", history)
    write_json(output_dir / "samples.json", evaluation.samples)
    from pipeline.rl.plots import plot_reward_and_kl

    plot_reward_and_kl(history, output_dir / "reward_kl.png", f"{config.algorithm.upper()}: {recipe.path}")
    metrics: dict[str, Any] = {"algorithm": config.algorithm, **policy_metrics(evaluation.summary, args)}
    rollouts = trainer.state.global_step // (config.num_mini_batches * config.ppo_epochs)
    metrics.update(
        {
            "final_kl_coef": config.kl_coef,
            "steps": rollouts,
            "optimizer_steps": trainer.state.global_step,
            "episodes": rollouts * config.per_device_train_batch_size * accelerator.num_processes,
            "num_generations": config.num_generations,
            **prompt_sets.as_dict(),
            "train_seconds": round(train_seconds, 2),
            "samples_per_second": round(
                rollouts * config.per_device_train_batch_size * accelerator.num_processes / train_seconds, 2
            )
            if train_seconds
            else None,
            "resumed_from": checkpoint,
        }
    )
    return metrics
