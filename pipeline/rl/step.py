"""One PPO step: sample a batch of rollouts, score them, turn scores and KL into per-token rewards, estimate
advantages with GAE, run the PPO epochs over mini-batches, and return the step's log entry.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from accelerate import Accelerator

from pipeline.kl import kl_estimates, sequence_kl
from pipeline.rl.advantages import (
    generalized_advantage_estimation,
    kl_penalised_rewards,
    leave_one_out_baseline,
    masked_mean,
    masked_var,
    whiten,
)
from pipeline.rl.config import PPOConfig
from pipeline.rl.losses import explained_variance
from pipeline.rl.rollout import collect_rollout, select
from pipeline.rl.scoring import GoldScorer
from pipeline.rl.setup import PPOParts
from pipeline.rl.update import ppo_update


def gathered_mean(accelerator: Accelerator, values: torch.Tensor) -> float:
    """The mean of `values` over every process."""
    return accelerator.gather(values.float().to(accelerator.device)).mean().item()


def ppo_step(step: int, parts: PPOParts, prompts: list[str], config: PPOConfig) -> dict[str, Any]:
    """Rollout -> score -> per-token rewards -> GAE -> PPO epochs. Returns the step's log entry."""
    accelerator, model, optimizer, scheduler = parts.accelerator, parts.model, parts.optimizer, parts.scheduler
    reference, scorer, gold, kl_control = parts.reference, parts.scorer, parts.gold, parts.kl_control
    started = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed * 100_003 + step * 1_009 + accelerator.process_index)  # resumable sampling
    actor_critic = accelerator.unwrap_model(model)
    with accelerator.autocast():  # the precision the update's forward passes use, so that π/π_old starts at 1
        rollout = collect_rollout(
            actor_critic,
            reference,
            parts.tokenizer,
            prompts,
            config.response_length,
            config.temperature,
            config.forward_batch_size,
            timings,
            with_exact_kl=config.kl_estimator == "exact",
        )
    device, mask = rollout.response_mask.device, rollout.response_mask

    scoring_started = time.perf_counter()
    finished = rollout.finished.tolist()
    raw_scores = scorer(rollout.prompts, rollout.texts, finished).to(device)
    gold_scores = (
        raw_scores
        if isinstance(scorer, GoldScorer)
        else gold(rollout.prompts, rollout.texts, finished).to(device)
        if gold
        else None
    )
    scores = raw_scores.clone()
    if config.missing_eos_penalty is not None:
        # Responses must learn to end. N+ details' "EOS trick" replaces such a score by a constant; subtracting a
        # penalty instead keeps the reward's judgement of the text, and makes the penalty a recipe value.
        scores[~rollout.finished] -= config.missing_eos_penalty
    if config.samples_per_prompt > 1:
        scores = scores - leave_one_out_baseline(scores, config.samples_per_prompt)
    timings["scoring"] = time.perf_counter() - scoring_started

    # Per-token rewards: −β·KL_t with the chosen estimator, and the score at the last real token (Ziegler et al.).
    kl = {name: value * mask for name, value in kl_estimates(rollout.logprobs, rollout.ref_logprobs).items()}
    if rollout.exact_kl is not None:
        kl["exact"] = rollout.exact_kl * mask
    beta = kl_control.value
    rewards = kl_penalised_rewards(scores, kl[config.kl_estimator], mask, beta)
    advantages, returns = generalized_advantage_estimation(rewards, rollout.values, mask, config.gamma, config.lam)
    kl_loss_coef = beta if config.kl_in_loss else 0.0
    if config.whiten_advantages:
        # Whitening divides the whole reward objective by the advantages' std: the direct KL term must be too.
        if kl_loss_coef:
            kl_loss_coef /= math.sqrt(masked_var(advantages, mask, across_processes=True).item() + 1e-8)
        advantages = whiten(advantages, mask)

    optimisation_started = time.perf_counter()
    batch = {**select(rollout, slice(None)), "advantages": advantages, "returns": returns}
    generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
    train_policy = step > config.critic_warmup_steps
    update_stats = ppo_update(
        accelerator,
        model,
        optimizer,
        scheduler,
        batch,
        config,
        generator,
        parts.ptx_batches,
        train_policy,
        reference=reference if kl_loss_coef else None,
        kl_loss_coef=kl_loss_coef,
    )
    timings["optimisation"] = time.perf_counter() - optimisation_started

    sequence = {name: sequence_kl(value, mask) for name, value in kl.items()}
    kl_control.update(
        gathered_mean(accelerator, sequence[config.kl_estimator]), len(prompts) * accelerator.num_processes
    )
    seconds = time.perf_counter() - started
    response_tokens = accelerator.reduce(mask.sum().float(), reduction="sum").item()
    entry = {
        "step": step,
        "episodes": step * len(prompts) * accelerator.num_processes,
        "score": gathered_mean(accelerator, raw_scores),
        "rm_reward": None if isinstance(scorer, GoldScorer) else gathered_mean(accelerator, raw_scores),
        "gold_reward": gathered_mean(accelerator, gold_scores) if gold_scores is not None else None,
        "total_reward": gathered_mean(accelerator, rewards.sum(dim=1)),
        **{f"kl_{name}": gathered_mean(accelerator, value) for name, value in sequence.items()},
        "kl_coef": beta,
        "entropy": masked_mean(rollout.entropy, mask, across_processes=True).item(),
        "response_length": gathered_mean(accelerator, mask.sum(dim=1)),
        "finished_fraction": gathered_mean(accelerator, rollout.finished),
        "explained_variance": explained_variance(rollout.values, returns, mask),
        **update_stats,
        "learning_rate": scheduler.get_last_lr()[0],
        "samples_per_second": len(prompts) * accelerator.num_processes / seconds,
        "tokens_per_second": response_tokens / seconds,
        **{f"time_{name}": round(value, 4) for name, value in timings.items()},
    }
    return {
        key: (round(value, 5) if isinstance(value, float) and math.isfinite(value) else value)
        for key, value in entry.items()
    }
