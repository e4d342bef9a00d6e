"""What a PPO run trains with: the accelerator, the policy (+ LoRA), its frozen reference and the critic, all
starting from the SFT model (or the reward model for the critic, as InstructGPT does), AdamW with a learning
rate per parameter group, and the rewards, KL coefficient and PPO-ptx batches that every step uses (PPOParts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from transformers import get_scheduler
from trl.trainer.utils import get_peft_config

from pipeline.errors import UserError
from pipeline.models import (
    adamw,
    check_lora_targets,
    linear_module_names,
    load_model,
    load_tokenizer,
    policy_parameter_groups,
)
from pipeline.resources import estimate_training_memory, warn_if_too_big
from pipeline.rl.config import PPOArguments, PPOConfig, PPOModelArguments
from pipeline.rl.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from pipeline.rl.prompts import pretraining_batches
from pipeline.rl.rollout import Reference
from pipeline.rl.scoring import GoldScorer, make_scorer
from pipeline.rl.value import ActorCritic, ValueModel

logger = logging.getLogger(__name__)


def make_accelerator(config: PPOConfig) -> Accelerator:
    """Accelerate with the recipe's device, mixed precision and trackers (logging under output_dir)."""
    accelerator = Accelerator(
        cpu=config.use_cpu,
        mixed_precision="bf16" if config.bf16 else "fp16" if config.fp16 else "no",
        log_with=config.report_to or None,
        project_dir=config.output_dir,
    )
    if config.tf32 is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
    return accelerator


def same_tokenizer(path: str, tokenizer) -> bool:
    """Whether the model at `path` reads the same tokens as `tokenizer` (False when it has no loadable tokenizer)."""
    try:
        other = load_tokenizer(path)
    except UserError:
        return False
    return other.get_vocab() == tokenizer.get_vocab()


def build_models(
    args: PPOArguments, model_args: PPOModelArguments, config: PPOConfig, tokenizer
) -> tuple[ActorCritic, Reference]:
    """Policy (+ LoRA), frozen reference and critic, all starting from the SFT model (or the RM for the critic)."""
    policy = load_model(model_args, tokenizer)
    if model_args.use_peft:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if model_args.lora_target_modules is None:  # GPT-2: attention and MLP, as the SFT stage adapts them
            gpt2_like = {"c_attn", "c_proj", "c_fc"} <= set(linear_module_names(policy))
            model_args.lora_target_modules = ["c_attn", "c_proj", "c_fc"] if gpt2_like else "all-linear"
        check_lora_targets(policy, model_args.lora_target_modules)
        if model_args.load_in_4bit or model_args.load_in_8bit:
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=config.gradient_checkpointing)
        policy = get_peft_model(policy, get_peft_config(model_args))
        reference = Reference(peft_policy=policy)  # the same weights with adapters off: no second copy
    else:
        reference = Reference(model=load_model(model_args, tokenizer))
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable()

    critic = None
    if args.value_model == "separate":
        path = args.value_model_path
        if path is None:
            # InstructGPT initialises the critic from the reward model; that needs the RM to read the policy's tokens.
            use_rm = args.reward == "model" and same_tokenizer(args.reward_model_path, tokenizer)
            path = args.reward_model_path if use_rm else model_args.model_name_or_path
        elif not same_tokenizer(path, tokenizer):
            raise UserError(
                f"value_model_path {path}: its tokenizer differs from the policy's; the critic reads the policy's "
                "tokens."
            )
        critic = ValueModel.from_pretrained(path, vocabulary_size=len(tokenizer))
        logger.info("critic: a separate value model with the body of %s", path)
    return ActorCritic(policy, critic), reference


def build_optimizer(
    actor_critic: ActorCritic, config: PPOConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with parameter groups: the policy at `learning_rate`, the critic at `value_learning_rate`, and
    optionally the policy's final norm at `final_norm_learning_rate`.

    Adam moves every weight by about the learning rate per step, whatever its size. So a freshly initialised
    value head would take the whole run to travel from 0 to the scale of the rewards at a policy-sized rate,
    and every advantage would be the raw (whitened) reward. The final norm's gain has the same problem the
    other way round: it sits near 1 while the other weights are ~0.03, so at 3e-5 it moves by 0.1% in a
    run, yet scaling it is how the policy becomes sharper on every prompt at once (gain / T samples at
    temperature T), the cheapest way to trade KL for reward when the SFT model is too random.
    """
    critic = actor_critic.value_head if actor_critic.value_head is not None else actor_critic.critic
    groups = policy_parameter_groups(actor_critic.policy, config.learning_rate, config.final_norm_learning_rate)
    groups.append(
        {
            "params": [p for p in critic.parameters() if p.requires_grad],
            "lr": config.value_learning_rate or config.learning_rate,
        }
    )
    optimizer = adamw(groups, config)
    total = config.max_steps * config.ppo_epochs * config.num_mini_batches
    warmup = int(config.warmup_steps * total) if 0 < config.warmup_steps < 1 else int(config.warmup_steps)
    return optimizer, get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total
    )


def warn_if_policy_too_big(
    accelerator: Accelerator, actor_critic: ActorCritic, tokenizer, train_prompts: list[str], config: PPOConfig
) -> None:
    """Warn when the policy's training micro-batches may not fit the device's memory (main process only)."""
    if accelerator.is_main_process:  # the policy's share; the critic and the reference come on top
        micro_batch = (
            config.per_device_train_batch_size // config.num_mini_batches // config.gradient_accumulation_steps
        )
        length = max(len(tokenizer(prompt)["input_ids"]) for prompt in train_prompts[:256]) + config.response_length
        estimate = estimate_training_memory(
            actor_critic.policy, micro_batch, length, config.gradient_checkpointing, config.bf16
        )
        warn_if_too_big(
            estimate, accelerator.device, f"the policy's PPO micro-batches of {micro_batch} x {length} tokens"
        )


def log_training_plan(
    counts: dict[str, Any], args: PPOArguments, model_args: PPOModelArguments, config: PPOConfig
) -> None:
    """One log line: how many parameters train (full or LoRA), which critic and reward, and β."""
    logger.info(
        "PPO: %d of %d parameters trainable (%s, critic: %s); reward: %s; β %.4g (%s, %s)",
        counts["trainable_parameters"],
        counts["parameters"],
        "LoRA" if model_args.use_peft else "full",
        args.value_model,
        args.reward,
        config.kl_coef,
        "adaptive" if config.target_kl else "fixed",
        config.kl_estimator,
    )


@dataclass
class PPOParts:
    """What every PPO step works with, built once by prepare_parts."""

    accelerator: Accelerator
    model: torch.nn.Module  # the ActorCritic, as accelerator.prepare returned it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reference: Reference
    tokenizer: Any
    scorer: Callable[..., torch.Tensor]  # the reward PPO optimises (reward model or gold)
    gold: GoldScorer | None  # the toy world's gold reward, measured beside a reward model's
    kl_control: FixedKLController | AdaptiveKLController
    ptx_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None  # PPO-ptx pretraining text (ptx_coef > 0)


def prepare_parts(
    accelerator: Accelerator,
    actor_critic: ActorCritic,
    reference: Reference,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    tokenizer,
    args: PPOArguments,
    config: PPOConfig,
    context: int | None,
) -> PPOParts:
    """The rewards, the actor-critic and optimizer prepared by Accelerate, the reference on the device, the KL
    controller and, with ptx_coef > 0, the PPO-ptx batches (cut to the model's `context`)."""
    scorer = make_scorer(args.reward, args.reward_model_path, accelerator.device, args.eval_batch_size, tokenizer)
    gold = GoldScorer() if args.dataset == "toy" else None
    model, optimizer = accelerator.prepare(actor_critic, optimizer)
    if reference.model is not None:
        reference.model.to(accelerator.device)
    kl_control = make_kl_controller(config.kl_coef, config.target_kl, config.kl_horizon)
    ptx_batches = None
    if config.ptx_coef > 0:
        ptx_length = min(args.ptx_max_length, context or args.ptx_max_length)  # documents are cut to the context
        ptx_batches = pretraining_batches(
            args.ptx_dataset, tokenizer, args.ptx_batch_size, ptx_length, config.seed, accelerator.device, toy=args
        )
    return PPOParts(
        accelerator, model, optimizer, scheduler, reference, tokenizer, scorer, gold, kl_control, ptx_batches
    )
