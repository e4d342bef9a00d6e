"""The two models of DPO: the policy being trained and its frozen reference, the SFT model (a second copy for
full fine-tuning, the policy with its adapters disabled for LoRA/QLoRA), and which pair to compare after training."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import DPOTrainer

from pipeline.finetuning import full_precision
from pipeline.models import load_model
from pipeline.preference.config import DPOModelArguments, DPOTrainingConfig


def load_reference(
    model_args: DPOModelArguments, tokenizer: PreTrainedTokenizerBase, training_args: DPOTrainingConfig
) -> PreTrainedModel | None:
    """The frozen SFT model for full fine-tuning, loaded from its saved path like the policy.

    None with LoRA/QLoRA (TRL takes the reference from the policy with its adapters disabled: no second copy)
    and with precompute_ref_log_probs (TRL computes the reference log-probs with the policy before training).
    Loaded here rather than by TRL because TRL would load it without the pad token the policy's embeddings
    were resized for, and fails on an in-memory model without `_name_or_path`.
    """
    if model_args.use_peft or training_args.precompute_ref_log_probs:
        return None
    reference = load_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)
    reference.requires_grad_(False)
    return reference.eval()


def policy_and_reference(
    trainer: DPOTrainer,
    model_args: DPOModelArguments,
    merged: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """What to compare after training: the saved policy, and the SFT model (None = adapters disabled)."""
    if merged is not None and (model_args.load_in_4bit or model_args.load_in_8bit):
        # QLoRA: the 4-bit base is only a training device; compare the saved full-precision model with the SFT model.
        sft = load_model(full_precision(model_args), tokenizer)
        return merged, sft.to(merged.device)
    if model_args.use_peft:
        return trainer.model, None
    if trainer.ref_model is not None:
        return trainer.model, trainer.ref_model
    return trainer.model, load_model(model_args, tokenizer).to(trainer.model.device)
