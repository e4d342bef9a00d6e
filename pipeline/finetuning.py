"""The model a fine-tuning stage trains, described as TRL's scripts describe it: full, LoRA or QLoRA.

`ModelArguments` is TRL's `ModelConfig` with the checks every stage needs, written once; `build_policy`
loads a causal LM for full, LoRA or QLoRA training; `merge_adapter` writes base + adapter as a plain model;
`FineTuningDefaults` holds the training defaults the SFT, reward and DPO configs share.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from transformers import PreTrainedModel, TrainingArguments
from trl import ModelConfig

from pipeline.models import check_lora_targets, linear_module_names, load_model

logger = logging.getLogger("pipeline.finetuning")

# GPT-2's attention (c_attn, c_proj) and MLP (c_fc, c_proj) layers, all Conv1D. PEFT's own default for
# GPT-2 is c_attn alone; adapting the MLP too learns more for the same handful of parameters.
GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
# Where a LoRA/QLoRA stage keeps its adapter, inside its output directory.
ADAPTER_DIR = "adapter"


@dataclass
class FineTuningDefaults:
    """Defaults the fine-tuning stages' TRL configs share, put first in their bases (`class SFTTrainingConfig(
    FineTuningDefaults, SFTConfig)`) so that they override TRL's: fp32 (bf16 is slow on most CPUs), no gradient
    checkpointing, a cosine schedule, evaluation and a checkpoint every 100 steps (two kept), no tracker."""

    bf16: bool | None = False
    gradient_checkpointing: bool = False
    lr_scheduler_type: str = "cosine"
    logging_steps: float = 10
    eval_strategy: str = "steps"
    eval_steps: float = 100
    save_strategy: str = "steps"
    save_steps: float = 100
    save_total_limit: int = 2
    report_to: str | list[str] = "none"


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig (model_name_or_path, dtype, use_peft, lora_*, load_in_4bit, bnb_4bit_quant_type,
    use_bnb_nested_quant), checked before anything is loaded."""

    path_fields: ClassVar[dict[str, str]] = {"model_name_or_path": "model"}
    # What the stage starts from, for the error naming a missing model; and whether it can train in 4 bits.
    model_example: ClassVar[str] = "e.g. runs/toy/pretrain, or gpt2 on a GPU machine"
    quantization_refused: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != "all-linear":
            # ModelConfig turns a one-item list into a string, which PEFT would read as a regular expression
            # that must match the whole module path ("transformer.h.0.attn.c_attn"): keep it a list.
            self.lora_target_modules = [self.lora_target_modules]
        if not self.model_name_or_path:
            raise ValueError(f"missing key 'model_name_or_path' ({self.model_example})")
        if (self.load_in_4bit or self.load_in_8bit) and self.quantization_refused:
            raise ValueError(f"key 'load_in_4bit'/'load_in_8bit': {self.quantization_refused}")
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_peft:
            raise ValueError(
                "key 'load_in_4bit' (QLoRA) trains LoRA adapters on a frozen 4-bit model: set use_peft: true"
            )
        if self.use_peft and self.lora_r <= 0:
            raise ValueError(f"key 'lora_r' must be > 0, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"key 'lora_dropout' must be in [0, 1), got {self.lora_dropout}")


def mode_name(model_args: ModelConfig) -> str:
    """'full', 'lora' or 'qlora', as metrics.json and the report name a run."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        return "qlora"
    return "lora" if model_args.use_peft else "full"


def choose_lora_targets(model: PreTrainedModel, model_args: ModelConfig) -> None:
    """Default the LoRA targets (GPT-2 family: attention and MLP; other models: every linear layer) and check
    that the recipe's targets exist in the model, before PEFT would fail on them."""
    if model_args.lora_target_modules is None:
        gpt2_like = set(GPT2_LORA_TARGETS) <= set(linear_module_names(model))
        model_args.lora_target_modules = list(GPT2_LORA_TARGETS) if gpt2_like else "all-linear"
    check_lora_targets(model, model_args.lora_target_modules)


def build_policy(model_args: ModelConfig, tokenizer, training_args: TrainingArguments) -> PreTrainedModel:
    """The causal LM to train: as loaded (full, LoRA), or frozen and prepared for 4-bit training (QLoRA)."""
    from peft import prepare_model_for_kbit_training

    model = load_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)
    if model_args.use_peft:
        choose_lora_targets(model, model_args)
    if model_args.load_in_4bit or model_args.load_in_8bit:
        if training_args.device.type == "cpu":
            copy_out_of_checkpoint_file(model)
        # Freezes the base, casts norms/embeddings to fp32 and makes the inputs carry gradients.
        # (bitsandbytes already placed the quantized model on the device.)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    # On the training device already, so that the before-training samples are not generated on a CPU.
    return model.to(training_args.device)


def copy_out_of_checkpoint_file(model: torch.nn.Module) -> None:
    """On a CPU the weights bitsandbytes leaves unquantized (embeddings, norms, biases) are views of the
    memory-mapped safetensors file, which keeps the whole full-precision checkpoint that quantization read
    resident (measured: +1.3 GB for GPT-2 medium, three times the 4-bit model). Copying them frees it."""
    for parameter in model.parameters():
        if getattr(parameter, "quant_state", None) is None:
            parameter.data = parameter.data.clone()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.clone()


def keep_adapters_in_fp32(model: torch.nn.Module) -> None:
    """TRL casts QLoRA adapters to bf16 (the QLoRA paper's GPU recipe). On a CPU bf16 matmuls are slow, and
    bf16 weights round away updates smaller than ~1/256 of their size, so there the adapters stay fp32."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype == torch.bfloat16:
            parameter.data = parameter.data.float()


def full_precision(model_args: ModelConfig) -> ModelConfig:
    """The same model without 4- or 8-bit loading: an adapter's base for merging or as the reference.
    Merging into 4-bit weights would re-quantize them and lose most of the update."""
    return dataclasses.replace(model_args, load_in_4bit=False, load_in_8bit=False)


def save_fine_tuned(
    trainer, use_peft: bool, tokenizer, output_dir: Path, merge: Callable[[Path], PreTrainedModel] | None = None
) -> PreTrainedModel | None:
    """Save what training made, the same way in every fine-tuning stage: the full model into output_dir, or for
    LoRA/QLoRA the adapter into output_dir/adapter with the tokenizer in output_dir and, given `merge` (adapter
    folder -> the merged model, saved into output_dir), the merged model beside it.

    Every process calls it (FSDP and ZeRO gather the weights there); the main process gets the final model back
    (the merged one where there is one, on the trainer's device), the others None.
    """
    adapter_dir = output_dir / ADAPTER_DIR
    trainer.save_model(str(adapter_dir if use_peft else output_dir))
    if not trainer.is_world_process_zero():
        return None
    if not use_peft:
        return trainer.model
    tokenizer.save_pretrained(output_dir)
    if merge is None:
        return trainer.model
    return merge(adapter_dir).to(trainer.args.device)


def merge_into_base(model_args: ModelConfig, tokenizer, output_dir: Path, trust_remote_code: bool = False):
    """`merge` for save_fine_tuned: the causal LM in full precision plus the adapter, saved as a plain model."""

    def merge(adapter_dir: Path) -> PreTrainedModel:
        base = load_model(full_precision(model_args), tokenizer, trust_remote_code=trust_remote_code)
        return merge_adapter(base, adapter_dir, tokenizer, output_dir)

    return merge


def merge_adapter(base: PreTrainedModel, adapter_dir: Path, tokenizer, output_dir: Path) -> PreTrainedModel:
    """Base model + the adapter in `adapter_dir`, merged and saved with the tokenizer as a plain model."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    logger.info("merged the adapter into %s (the adapter alone is in %s)", output_dir, adapter_dir)
    return merged
