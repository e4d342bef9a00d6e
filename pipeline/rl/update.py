"""The optimisation half of a PPO iteration: several epochs over shuffled mini-batches of one rollout.

    for epoch in ppo_epochs:                       # reuse each rollout several times (Schulman et al. 2017)
        for mini-batch in shuffle(rollout):        # one optimizer step per mini-batch
            for micro-batch in mini-batch:         # gradient accumulation, for memory
                loss = policy loss + vf_coef·value loss − entropy_coef·entropy
                       (+ ptx_coef·(−log π(x_pretrain)))
                backward
            clip gradient norm, step, schedule

Every loss is normalised by the number of response tokens in the whole mini-batch (summed over
processes; see pipeline.rl.losses), so that accumulating micro-batches, or splitting the batch over
processes, gives the same gradient as one big batch would.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Protocol

import torch
from accelerate import Accelerator

from pipeline.kl import exact_kl
from pipeline.rl.losses import clipped_policy_loss, clipped_value_loss, entropy
from pipeline.rl.rollout import length_groups, response_logprobs, trim, trimmed_columns


class UpdateSettings(Protocol):
    """The recipe values an update reads (pipeline.rl.config.PPOConfig has them)."""

    temperature: float
    ppo_epochs: int
    num_mini_batches: int
    gradient_accumulation_steps: int
    cliprange: float
    cliprange_value: float
    vf_coef: float
    entropy_coef: float
    ptx_coef: float
    max_grad_norm: float


def global_token_count(mask: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """Real tokens of this mini-batch on all processes, divided by the number of processes.

    DDP averages gradients over processes; a loss that divides its per-process token sum by this
    number therefore yields, after averaging, the gradient of the global token mean.
    """
    count = mask.sum().float().reshape(1)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    return count[0] / accelerator.num_processes


def ppo_update(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batch: dict[str, torch.Tensor],
    settings: UpdateSettings,
    generator: torch.Generator,
    ptx_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
    train_policy: bool = True,
    reference=None,
    kl_loss_coef: float = 0.0,
) -> dict[str, float]:
    """Run the PPO epochs on `batch` (old log-probs, values, advantages, returns ...); return mean statistics.

    `model` is the prepared ActorCritic (DDP-wrapped under several processes). Gradients are only
    synchronised on the last micro-batch of a mini-batch (`accelerator.no_sync` before it).
    `train_policy=False` fits the critic alone (critic warm-up): the policy's gradients are dropped before
    the step (a value head's loss reaches the shared trunk too), so the optimizer leaves the policy and its
    Adam moments untouched.
    """
    frozen = [] if train_policy else list(accelerator.unwrap_model(model).policy.parameters())
    size = batch["response_ids"].shape[0]
    mini_batch_size = size // settings.num_mini_batches
    sums: dict[str, float] = defaultdict(float)
    token_total = 0.0
    steps = 0
    # The model stays in eval mode: dropout would make the first epoch's ratio π/π_old differ from 1 for no
    # reason, and PPO for LMs trains without it (N+ details: dropout off). Gradients flow in eval mode all the same.
    for _ in range(settings.ppo_epochs):
        order = torch.randperm(size, generator=generator).to(batch["response_ids"].device)
        for start in range(0, mini_batch_size * settings.num_mini_batches, mini_batch_size):
            mini_batch = order[start : start + mini_batch_size]
            token_count = global_token_count(batch["response_mask"][mini_batch], accelerator)
            # Micro-batches of similar response length, each cut to the columns it needs: the sum of their losses,
            # hence the gradient, is the mini-batch's, at the cost of the real tokens rather than the longest row's.
            micro_batches = [
                mini_batch[rows]
                for rows in length_groups(batch["response_mask"][mini_batch], settings.gradient_accumulation_steps)
            ]
            for index, rows in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                if ptx_batches is not None and settings.ptx_coef > 0 and train_policy:
                    with accelerator.no_sync(model):
                        ptx_loss = pretraining_loss(model, *next(ptx_batches)) / len(micro_batches)
                        accelerator.backward(settings.ptx_coef * ptx_loss)
                    sums["ptx_loss"] += ptx_loss.item()
                sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
                with sync:
                    selected = {name: value[rows] for name, value in batch.items()}
                    micro = trim(selected, *trimmed_columns(selected["query_mask"], selected["response_mask"]))
                    mask, length = micro["response_mask"], micro["response_mask"].shape[1]
                    input_ids = torch.cat([micro["query_ids"], micro["response_ids"]], dim=1)
                    attention_mask = torch.cat([micro["query_mask"], mask], dim=1)
                    logits, values = model(input_ids, attention_mask, length)
                    logits = logits.float() / settings.temperature  # the rollout's temperature (N+ details)
                    logprobs = response_logprobs(logits, micro["response_ids"], 1.0)
                    policy = clipped_policy_loss(
                        logprobs, micro["logprobs"], micro["advantages"], mask, settings.cliprange, token_count
                    )
                    value = clipped_value_loss(
                        values, micro["values"], micro["returns"], mask, settings.cliprange_value, token_count
                    )
                    mean_entropy = (entropy(logits) * mask).sum() / token_count
                    loss = settings.vf_coef * value.loss
                    if train_policy:
                        loss = loss + policy.loss - settings.entropy_coef * mean_entropy
                        if kl_loss_coef:  # the reference's full distributions are recomputed here, not stored
                            ref_logits = (
                                reference.logits(input_ids, attention_mask, length).float() / settings.temperature
                            )
                            kl_loss = (exact_kl(logits, ref_logits) * mask).sum() / token_count
                            loss = loss + kl_loss_coef * kl_loss
                            sums["kl_loss"] += kl_loss.item() * float(token_count)
                    accelerator.backward(loss)
                tokens = mask.sum().item()
                token_total += tokens
                scale = float(token_count)  # losses were divided by it; multiply back to get sums
                sums["policy_loss"] += policy.loss.item() * scale
                sums["value_loss"] += value.loss.item() * scale
                sums["entropy_after"] += mean_entropy.item() * scale
                sums["policy_clip_fraction"] += policy.clip_fraction.item() * tokens
                sums["value_clip_fraction"] += value.clip_fraction.item() * tokens
                sums["approx_kl"] += policy.approx_kl.item() * tokens
            for parameter in frozen:
                parameter.grad = None
            if settings.max_grad_norm and settings.max_grad_norm > 0:
                norm = accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                sums["grad_norm"] += float(norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    stats = {
        name: value / max(token_total, 1) for name, value in sums.items() if name not in ("grad_norm", "ptx_loss")
    }
    if "grad_norm" in sums:
        stats["grad_norm"] = sums["grad_norm"] / max(steps, 1)
    if "ptx_loss" in sums:
        stats["ptx_loss"] = sums["ptx_loss"] / max(steps, 1)
    stats["optimizer_steps"] = steps
    return stats


def pretraining_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """PPO-ptx (InstructGPT, eq. 2): −mean log π(x) over the real tokens of a batch of pretraining text."""
    logits, _ = model(input_ids, attention_mask, None)
    logprobs = response_logprobs(logits.float(), input_ids[:, 1:], 1.0)
    mask = attention_mask[:, 1:].to(logprobs.dtype)
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)
