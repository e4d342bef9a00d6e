"""From a scored rollout to advantages: per-token rewards, GAE and whitening.

Shapes: every tensor is [batch, response_length]; `mask` is 1 on the real response tokens (up to and
including the first EOS) and 0 on the padding after it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 of each row of `mask` (0 for an all-zero row).

    Works for left and right padding alike, which is why it is not `mask.sum(-1) - 1` (that is only right
    for right padding; reading a reward at padding is a classic RLHF bug).
    """
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask.long()).argmax(dim=-1)


def kl_penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = −β·KL_t on every response token, plus the sequence's score on its last real token.

    As in Ziegler et al. 2019 (eq. 2) and InstructGPT: the KL to the reference is a per-token penalty
    and the reward model's score arrives once, at the end (the EOS token, or the last token when the
    length limit cut the response). `kl` holds the chosen estimator per token (pipeline.kl).
    """
    if beta < 0:
        raise ValueError(f"the KL coefficient β must be >= 0, got {beta}")
    rewards = -beta * kl * mask
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """For rows in groups of `group_size` consecutive responses to one prompt: the mean score of the others.

    RLOO's baseline (Ahmadian et al. 2024), here taken off the score before the per-token rewards and GAE.
    It does not depend on the response it is subtracted from, so the policy gradient stays unbiased; it
    removes the prompt's difficulty from the score, which a young critic cannot predict.
    """
    groups = scores.view(-1, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return others.reshape(scores.shape)


def generalized_advantage_estimation(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016): advantages A_t and returns R_t = A_t + V_t.

        δ_t = r_t + γ·V_{t+1} − V_t,    A_t = δ_t + γλ·A_{t+1},

    with V and A = 0 after the last real token (the episode ends there). Written as the textbook
    backward recursion, which is as fast as anything else for responses of a few hundred tokens.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = advantages + values
    return advantages, returns


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes when running distributed, so that statistics are those of the global batch."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def masked_mean(values: torch.Tensor, mask: torch.Tensor, across_processes: bool = False) -> torch.Tensor:
    total = torch.stack([(values * mask).sum(), mask.sum().to(values.dtype)])
    if across_processes:
        total = _all_reduce_sum(total)
    return total[0] / total[1].clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, across_processes: bool = False) -> torch.Tensor:
    """Variance of the masked values (population variance: whitening divides by it, nothing is estimated)."""
    mean = masked_mean(values, mask, across_processes)
    return masked_mean((values - mean) ** 2, mask, across_processes)


def whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, across_processes: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − mean) / std over the real tokens of the whole batch (of every process); padding stays 0.

    N+ details: advantages are whitened per batch; `shift_mean=False` only rescales, which is the
    option for rewards, whose mean carries signal. The statistics are taken over every process's batch,
    so two processes whiten exactly as one process with the combined batch would.
    """
    mean = masked_mean(values, mask, across_processes)
    var = masked_var(values, mask, across_processes)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
