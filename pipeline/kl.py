"""KL divergence to a reference model: the three sample estimators and the exact value.

Convention (Schulman, "Approximating KL divergence", 2020): tokens x are sampled from the policy π,
and r = π_ref(x) / π(x). Then, per sampled token,

    k1 = −log r = log π(x) − log π_ref(x)      unbiased for KL(π‖π_ref), high variance, can be < 0
    k2 = ½ (log r)²                            biased (exact to 2nd order), low variance, ≥ 0
    k3 = (r − 1) − log r                       unbiased, low variance, ≥ 0 for every sample

Shared by PPO (per-token KL penalty), DPO (KL to SFT on held-out prompts) and the report's
KL-estimator study, so that every stage reports KL in the same units (nats).
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token k1, k2, k3 from the log-probabilities of the sampled tokens under π and π_ref."""
    log_ratio = ref_logprobs - logprobs  # log r
    return {
        "k1": -log_ratio,
        "k2": 0.5 * log_ratio.pow(2),
        # expm1 keeps (r − 1) accurate when r is close to 1, where most tokens are.
        "k3": torch.expm1(log_ratio) - log_ratio,
    }


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(π‖π_ref) of the full next-token distributions at each position (last dimension = vocabulary)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(dim=-1)


def sequence_kl(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token values over the real (mask = 1) tokens of each sequence: KL of whole responses."""
    return (per_token * mask).sum(dim=-1)
