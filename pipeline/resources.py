"""Memory: an estimate of what a training run needs, checked against the machine before training starts, and
the peak a run really used (recorded in every stage's metrics.json by pipeline.contract).

The estimate is the usual back-of-the-envelope sum, written out because no library here offers it for an
arbitrary config (accelerate's `estimate-memory` counts weights only):
  weights              parameters x bytes per parameter (4-bit weights ~0.5 byte)
  gradients + AdamW    trainable parameters x (4 + 8) bytes (fp32 gradients and two fp32 moments)
  activations          per layer ~ batch x length x width x 34 bytes in 16-bit, 68 in fp32 (Korthikanti et
                       al. 2022, "Reducing Activation Recomputation", without the attention-score term, which
                       SDPA does not keep), one layer's worth plus each layer's input with gradient checkpointing
  logits               batch x length x vocabulary x 4 bytes x 3 (logits, their log-softmax and its gradient)
It is meant to catch the run that cannot fit (a 10x mistake), not to predict the peak within 10 %.
"""

from __future__ import annotations

import logging
import resource
import sys
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from pipeline.models import config_context_length

logger = logging.getLogger(__name__)

ADAM_AND_GRADIENT_BYTES = 12
#: Share of the available memory above which an estimate is warned about (the estimate is rough, allocators waste).
WARN_SHARE = 0.9


@dataclass
class MemoryEstimate:
    weights: float
    gradients_and_optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients_and_optimizer + self.activations + self.logits

    def describe(self) -> str:
        parts = ("weights", "gradients_and_optimizer", "activations", "logits")
        return (
            f"{gib(self.total)} ("
            + ", ".join(f"{name.replace('_', ' ')} {gib(getattr(self, name))}" for name in parts)
            + ")"
        )


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def estimate_training_memory(
    model: torch.nn.Module,
    batch_size: int,
    length: int,
    gradient_checkpointing: bool = False,
    half_precision: bool = False,
) -> MemoryEstimate:
    """Bytes a training step of `model` on `batch_size` sequences of `length` tokens needs (see the module doc)."""
    config = model.config
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    vocabulary = getattr(config, "vocab_size", 0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = batch_size * length
    per_layer = tokens * width * (34 if half_precision else 68)
    activations = per_layer * (1 + layers * 2 / 34) if gradient_checkpointing else per_layer * layers
    return MemoryEstimate(
        weights=weights,
        gradients_and_optimizer=trainable * ADAM_AND_GRADIENT_BYTES,
        activations=activations,
        logits=tokens * vocabulary * 4 * 3,
    )


def available_memory(device: torch.device) -> int | None:
    """Bytes a run can use: the GPU's total memory, or on a CPU the memory Linux reports available; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def warn_if_too_big(estimate: MemoryEstimate, device: torch.device, what: str) -> bool:
    """Log a warning naming the estimate when it exceeds the device's memory; True when it did."""
    available = available_memory(device)
    if available is None or estimate.total <= WARN_SHARE * available:
        logger.info(
            "memory estimate for %s: %s; %s available on %s", what, estimate.describe(), gib(available or 0), device
        )
        return False
    logger.warning(
        "%s probably does not fit: it needs about %s, and %s has %s. Lower the batch size or the sequence length, "
        "or use gradient_checkpointing, LoRA/QLoRA or a smaller model.",
        what,
        estimate.describe(),
        device,
        gib(available),
    )
    return True


class MemoryCheck(TrainerCallback):
    """Warns before the first step when the run's estimate exceeds the device's memory (Trainer-based stages)."""

    def __init__(self, length: int | None, sequences_per_example: int = 1):
        self.length = length
        self.sequences_per_example = sequences_per_example  # 2 for preference pairs: chosen and rejected

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero:
            return
        sequences = args.per_device_train_batch_size * self.sequences_per_example
        length = self.length or config_context_length(model.config) or 512
        estimate = estimate_training_memory(
            model, sequences, length, args.gradient_checkpointing, args.bf16 or args.fp16
        )
        warn_if_too_big(estimate, args.device, f"training on batches of {sequences} x {length} tokens")


def peak_memory() -> dict[str, float | str]:
    """The run's peak memory for metrics.json: what torch allocated on the GPU where one was used, else the
    process's peak resident set size (loading, training and evaluation included), and which of the two it is."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_memory_kind": "cuda_max_allocated",
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return {
        "peak_memory_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1),
        "peak_memory_kind": "process_max_rss",
    }
