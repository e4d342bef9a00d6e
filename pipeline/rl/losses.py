"""The PPO losses on response tokens: clipped policy loss, clipped value loss, entropy.

Every loss is a sum over real tokens divided by `token_count`. By default that is the number of real
tokens in the tensors given, i.e. a token mean. Under gradient accumulation the caller passes the token
count of the whole mini-batch (of every process), so that the accumulated gradient is exactly the
gradient of the mini-batch's token mean, whatever the lengths of the micro-batches (dividing each
micro-batch mean by the number of micro-batches, the usual shortcut, weights short responses more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # what backward() is called on
    clip_fraction: torch.Tensor  # share of real tokens where the clipped term was the one used
    approx_kl: torch.Tensor | None = None  # k3 estimate of KL(old ‖ new), a health signal (policy loss only)


def _normaliser(mask: torch.Tensor, token_count: float | torch.Tensor | None) -> torch.Tensor:
    count = mask.sum() if token_count is None else torch.as_tensor(token_count, device=mask.device)
    return count.to(torch.float32).clamp(min=1)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    token_count: float | torch.Tensor | None = None,
) -> LossOutput:
    """PPO-clip (Schulman et al. 2017, eq. 7), per token: max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)),
    ρ = π/π_old."""
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    count = _normaliser(mask, token_count)
    with torch.no_grad():
        clip_fraction = ((clipped > unclipped).to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1)
        approx_kl = ((torch.expm1(log_ratio) - log_ratio) * mask).sum() / mask.sum().clamp(min=1)
    return LossOutput((per_token * mask).sum() / count, clip_fraction, approx_kl)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    token_count: float | torch.Tensor | None = None,
) -> LossOutput:
    """½·max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, −ε_v, ε_v).

    The value clipping of OpenAI's baselines PPO2, kept in RLHF by Ziegler et al.'s lm-human-preferences
    (N+ details). Note the max: the clipped error is a pessimistic bound, not a replacement.
    """
    mask = mask.to(values.dtype)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped_error, clipped_error)
    count = _normaliser(mask, token_count)
    with torch.no_grad():
        clip_fraction = ((clipped_error > unclipped_error).to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return LossOutput((per_token * mask).sum() / count, clip_fraction)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each next-token distribution; pass logits already divided by the temperature."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over real tokens: 1 = the critic predicts the returns, ≤ 0 = no better than their
    mean."""
    mask = mask.bool()
    returns, values = returns[mask], values[mask]
    variance = returns.var(unbiased=False)
    if returns.numel() < 2 or variance.item() == 0:
        return float("nan")
    return float(1.0 - (returns - values).var(unbiased=False) / variance)
