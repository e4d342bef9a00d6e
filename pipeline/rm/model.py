"""The reward model: the input causal LM's body (plus optional identity blocks) under a fresh 1-output
sequence-classification head, full or LoRA; the LoRA adapter merged back into a plain reward model; and the
input model as a causal LM (the SFT policy) for its own samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import PreTrainedModel
from trl.trainer.reward_trainer import suppress_seqcls_warning

from pipeline.finetuning import choose_lora_targets, merge_adapter
from pipeline.models import add_identity_blocks, load_model
from pipeline.reward_model import set_pooling
from pipeline.rm.config import RewardModelArguments


def build_model(
    model_args: RewardModelArguments,
    tokenizer,
    trust_remote_code: bool,
    append_eos: bool = True,
    extra_layers: int = 0,
    seed: int = 0,
    pooling: str = "last",
) -> PreTrainedModel:
    """The causal LM's body (plus `extra_layers` identity blocks) with a freshly initialised 1-output `score` head
    (seeded by the caller)."""
    with suppress_seqcls_warning():  # "score.weight newly initialised", "lm_head unused": expected here
        model = load_model(model_args, tokenizer, head="sequence_classification", trust_remote_code=trust_remote_code)
    # Saved in config.json, so that pipeline.reward_model.score encodes responses as the model was trained.
    model.config.reward_append_eos = append_eos
    set_pooling(model, pooling)
    add_identity_blocks(model, extra_layers, seed)
    if model_args.use_peft:
        choose_lora_targets(model, model_args)
    return model


def merge_reward_model(
    model_args: RewardModelArguments,
    tokenizer,
    adapter_dir: Path,
    output_dir: Path,
    trust_remote_code: bool,
    append_eos: bool,
    pooling: str = "last",
) -> PreTrainedModel:
    """Base model + adapter (which carries the trained score head) merged into a plain reward model."""
    base = build_model(
        dataclasses.replace(model_args, use_peft=False), tokenizer, trust_remote_code, append_eos, pooling=pooling
    )
    return merge_adapter(base, adapter_dir, tokenizer, output_dir)


def load_policy(model_args: RewardModelArguments, tokenizer, trust_remote_code: bool) -> PreTrainedModel:
    """The input model as a causal LM (the SFT policy), for its own samples."""
    return load_model(
        dataclasses.replace(model_args, use_peft=False),
        tokenizer,
        head="causal_lm",
        trust_remote_code=trust_remote_code,
    )
