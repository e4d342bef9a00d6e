"""Losses for training on a weak supervisor's soft labels.

Both losses take 2-class logits `[batch, 2]` and soft targets `[batch, 2]` (rows sum to 1).

* `xent`: cross-entropy against the soft labels, -sum_c q_c log p_c (the reference's `xent_loss`;
  `torch.nn.functional.cross_entropy` accepts probability targets).
* `logconf`, the auxiliary confidence loss of Burns et al. (2023), section 4.3.2: the target mixes the
  weak label with the student's own *hardened* prediction,

      target = (1 - alpha_t) * weak_soft_label + alpha_t * onehot(student prediction thresholded),

  where the threshold is set per batch so that the hardened predictions have the weak labels' class
  balance: with q = mean weak probability of class 1 in the batch, threshold = the q-quantile of the
  student's p(class 0), and an example is hardened to class 0 iff p(class 0) >= threshold (exactly as the
  reference `logconf_loss_fn`, ties included). The hardened part is detached: it is a target, not a path
  for gradients. This lets a strong student disagree confidently with its weak supervisor instead of
  imitating its errors.

The coefficient alpha_t ramps up over the first `warmup_fraction` of training to its final `alpha`:

* ramp "linear" (this pipeline's default): alpha_t = alpha * min(1, progress / warmup_fraction).
* ramp "jump" (the reference code, openai/weak-to-strong loss.py): alpha_t = alpha * progress while
  progress <= warmup_fraction, then alpha. With the paper's alpha = 0.75 and warm-up 0.2 it climbs only
  to 0.15 and then jumps to 0.75; the linear ramp reaches 0.75 smoothly. The recipe chooses.

`progress` is the fraction of optimizer steps done (global_step / max_steps, as the reference's
step / nsteps). The threshold is a *batch* statistic: with gradient accumulation it is taken over each
micro-batch (the reference takes it over its full batch of 32), so keep micro-batches reasonably large.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LOSSES = ("xent", "logconf")
Ramp = Literal["linear", "jump"]


def aux_coefficient(progress: float, alpha: float, warmup_fraction: float, ramp: Ramp = "linear") -> float:
    """alpha_t at `progress` in [0, 1] of training (see the module docstring for the two ramps)."""
    if ramp == "linear":
        if warmup_fraction <= 0:
            return alpha
        return alpha * min(1.0, progress / warmup_fraction)
    if ramp == "jump":
        return alpha * (1.0 if progress > warmup_fraction else progress)
    raise ValueError(f"unknown ramp {ramp!r}; choose linear or jump")


def xent_loss(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of 2-class logits against soft targets (probability rows)."""
    return F.cross_entropy(logits.float(), soft_targets.float())


def hardened_predictions(probs: torch.Tensor, weak_targets: torch.Tensor) -> torch.Tensor:
    """One-hot student predictions thresholded so that their class balance matches the weak labels'."""
    positive_share = weak_targets[:, 1].float().mean()
    threshold = torch.quantile(probs[:, 0], positive_share)
    class0 = probs[:, 0] >= threshold
    return torch.stack([class0, ~class0], dim=1).to(probs.dtype)


def logconf_loss(logits: torch.Tensor, weak_targets: torch.Tensor, coefficient: float) -> torch.Tensor:
    """The auxiliary confidence loss with mixing coefficient alpha_t = `coefficient`."""
    logits, weak_targets = logits.float(), weak_targets.float()
    hardened = hardened_predictions(torch.softmax(logits, dim=-1).detach(), weak_targets)
    target = (1.0 - coefficient) * weak_targets + coefficient * hardened
    return F.cross_entropy(logits, target)


def soft_label_loss(
    name: str,
    logits: torch.Tensor,
    soft_targets: torch.Tensor,
    progress: float = 0.0,
    alpha: float = 0.75,
    warmup_fraction: float = 0.2,
    ramp: Ramp = "linear",
) -> torch.Tensor:
    """The named loss (`xent` or `logconf`) at training `progress`."""
    if name == "xent":
        return xent_loss(logits, soft_targets)
    if name == "logconf":
        return logconf_loss(logits, soft_targets, aux_coefficient(progress, alpha, warmup_fraction, ramp))
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
