"""Loading models and tokenizers the same way in every stage, safely.

Every stage that starts from an existing model describes it with TRL's `ModelConfig` (model path,
dtype, LoRA and 4-bit settings), as TRL's own scripts do. This module adds what
the libraries leave to each script: only safetensors weights are loaded, remote code stays off unless
the recipe turns it on, the tokenizer gets a pad token distinct from EOS (so a model can learn to
stop), and a tokenizer/model vocabulary mismatch or a missing path is a clear error, not a crash deep
inside `from_pretrained`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    PreTrainedModel,
)
from trl import ModelConfig
from trl.trainer.utils import get_quantization_config

from pipeline.errors import RecipeError, UserError

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"


@contextlib.contextmanager
def readable_weights(name: str) -> Iterator[None]:
    """Damaged weights (a copy cut short, a Git LFS pointer) as one error naming the model, not safetensors'
    traceback."""
    try:
        yield
    except SafetensorError as error:
        raise UserError(
            f"{name}: model.safetensors is corrupt or cut short ({error}); run the stage that wrote it again."
        ) from None


def _check_exists(name_or_path: str) -> None:
    from pipeline.recipes import looks_like_hub_id

    path = Path(name_or_path)
    if not path.exists() and not looks_like_hub_id(name_or_path):
        raise UserError(f"model {name_or_path} not found: is it the output of a stage that has not run yet?")
    if path.is_dir() and not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise UserError(
            f"{name_or_path} is not a model folder: it has no config.json. A finished stage output holds config.json, "
            "model.safetensors and the tokenizer files; an unfinished one only checkpoints (run its stage again to "
            "finish it)."
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    """The model's tokenizer, with a pad token distinct from EOS (added when the tokenizer has none)."""
    _check_exists(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # ValueError: a folder with no tokenizer files at all
        if "trust_remote_code" in str(error):
            raise UserError(remote_code_message(name_or_path)) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"could not load a tokenizer from {name_or_path} (tokenizer.json missing?): {first_line}"
        ) from None
    if tokenizer.eos_token is None:
        raise UserError(f"the tokenizer of {name_or_path} has no EOS token; the pipeline needs one to end responses.")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad = EOS hides EOS from the loss (it is masked as padding), and the model never learns to stop.
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        logger.info("added pad token %s (id %d), distinct from EOS", PAD_TOKEN, tokenizer.pad_token_id)
    tokenizer.padding_side = padding_side
    return tokenizer


def config_context_length(config: Any) -> int | None:
    """The longest sequence a model with this config can read (GPT-2: n_positions)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def saved_context_length(name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """config_context_length of a saved or hub model, read from its config alone (no weights); None when there is no
    readable config (loading the model then says why, in its own words)."""
    from transformers import AutoConfig

    try:
        return config_context_length(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code))
    except (OSError, ValueError):
        return None


def fit_max_length(
    name_or_path: str,
    max_length: int | None,
    recipe_path: Path | str,
    set_by_recipe: bool,
    trust_remote_code: bool = False,
) -> int | None:
    """`max_length` that fits the model's context, read before any model or data is loaded: a recipe's own value
    beyond the context is a recipe error (instead of an IndexError in the position embeddings mid-training); a
    default beyond it is lowered to the context."""
    limit = saved_context_length(name_or_path, trust_remote_code) if max_length is not None else None
    if limit is None or max_length <= limit:
        return max_length
    if set_by_recipe:
        raise RecipeError(
            f"{recipe_path}: key 'max_length' ({max_length}) exceeds the context length of {name_or_path} "
            f"({limit} tokens)."
        )
    logger.info(
        "max_length lowered from its default %d to the context length of %s (%d tokens)",
        max_length,
        name_or_path,
        limit,
    )
    return limit


def remote_code_message(name: str) -> str:
    return (
        f"{name} needs custom Python code from its folder or repository to load, and remote code is off. Read that "
        "code first; set `trust_remote_code: true` in the recipe only if you trust it."
    )


def torch_dtype(name: str | None) -> Any:
    if name in (None, "auto"):
        return name
    if not hasattr(torch, name):
        raise RecipeError(f"key 'dtype': unknown dtype {name!r}; use float32, bfloat16, float16 or auto.")
    return getattr(torch, name)


def quantization_config(model_args: ModelConfig):
    """bitsandbytes settings for QLoRA; a clear error where this machine's bitsandbytes cannot do 4-bit."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    if not model_args.use_peft:
        raise RecipeError("load_in_4bit/load_in_8bit (QLoRA) trains adapters only: set use_peft: true.")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # ImportError, or a broken native library
        raise UserError(
            f"QLoRA needs bitsandbytes, which cannot be loaded here: {error}. pip install bitsandbytes>=0.46"
        ) from None
    config = get_quantization_config(model_args)
    config.bnb_4bit_compute_dtype = (
        torch_dtype(model_args.dtype) if model_args.dtype not in (None, "auto") else torch.float32
    )
    return config


def load_model(
    model_args: ModelConfig, tokenizer, head: str = "causal_lm", num_labels: int = 1, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A causal LM (or a sequence-classification model on the same body) sized to the tokenizer.

    head: "causal_lm" or "sequence_classification" (reward models, weak-to-strong classifiers).
    trust_remote_code: TRL 1.16 keeps it on the trainer configs (e.g. `SFTConfig.trust_remote_code`); pass it on.
    """
    name = model_args.model_name_or_path
    _check_exists(name)
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,  # never unpickle weights
        "revision": model_args.model_revision,
    }
    dtype = torch_dtype(model_args.dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    auto = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    if head != "causal_lm":
        kwargs["num_labels"] = num_labels
    try:
        with readable_weights(name):
            model = auto.from_pretrained(name, **kwargs)
    except OSError as error:
        raise UserError(f"could not load model {name}: {error}") from None
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise UserError(remote_code_message(name)) from None
        if "Unrecognized configuration class" in str(error) or "does not support" in str(error):
            raise UserError(f"{name} cannot be loaded as a {head.replace('_', ' ')} model: {error}") from None
        raise
    if quantization is not None:
        keep_cpu_4bit_layers_on_the_generic_kernel(model)
    match_vocabulary(model, tokenizer, name)
    return model


def add_identity_blocks(model: PreTrainedModel, count: int, seed: int = 0) -> None:
    """Append `count` transformer blocks to a GPT-2-style body (`transformer.h`), each starting as the identity.

    Why (reward models): the body of a causal LM spends its last layer predicting the next token, and a
    reward read at the last token must also compare the response with the prompt and gather the result
    there. On the toy world, the SFT model's own log-likelihood ranks the right answer above the near-miss
    wrong one in all 201 held-out "right vs wrong" pairs, while a reward head on its last layer learned it in
    about 70% of them; two more blocks give the head room to do that comparison. Each new block is freshly
    initialised (GPT-2's normal(0, 0.02)) except its two output projections, which are zero, so the model
    computes exactly what it computed before until training moves them. `config.n_layer` grows with the
    blocks, so the result saves and loads as a plain model.
    """
    if count <= 0:
        return
    body = getattr(model, "transformer", None)
    blocks = getattr(body, "h", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not hasattr(model.config, "n_layer"):
        raise UserError(
            f"extra_layers needs a GPT-2-style model (transformer.h blocks); {type(model).__name__} has none."
        )
    from transformers.pytorch_utils import Conv1D

    template = blocks[-1]
    parameter = next(template.parameters())
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        block = type(template)(model.config, layer_idx=len(blocks))
        for module in block.modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)):
                with torch.no_grad():
                    module.weight.copy_(
                        torch.randn(module.weight.shape, generator=generator) * model.config.initializer_range
                    )
                    if module.bias is not None:
                        module.bias.zero_()
        with torch.no_grad():
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        blocks.append(block.to(device=parameter.device, dtype=parameter.dtype))
    model.config.n_layer = len(blocks)


def keep_cpu_4bit_layers_on_the_generic_kernel(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' (0.50) AVX512-BF16 repacking of 4-bit CPU weights, which is meant for inference.

    On a CPU with AVX512-BF16 a 4-bit layer repacks its weights the first time it runs in eval mode and keeps
    the packed layout from then on. The stages evaluate before and during training, and with the packed
    layout (a) a training step after an evaluation fails ("a view of a leaf Variable that requires grad is
    being used in an in-place operation"), (b) layers whose widths are not multiples of 64/32 fail to pack
    ("shape '[96, 0]' is invalid"), and (c) `model.to(device)` skips the inverse packing (bitsandbytes
    issue 2078). The generic 4-bit kernel handles all of these; it is what CPUs without AVX512-BF16 run.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def match_vocabulary(model: PreTrainedModel, tokenizer, name: str) -> None:
    """Grow the embeddings for tokens the tokenizer added (a pad token); refuse a tokenizer from another model."""
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        added = len(tokenizer) - embeddings
        if added > 8:
            raise UserError(
                f"the tokenizer has {len(tokenizer)} tokens but the model {name} only {embeddings} embeddings: "
                "they come from different models. Use the tokenizer saved with the model."
            )
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Names (last component) of the layers LoRA can adapt: Linear and GPT-2's Conv1D."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, Conv1D))
    }
    return sorted(names)


def check_lora_targets(model: torch.nn.Module, target_modules: list[str] | str | None) -> None:
    if target_modules in (None, "all-linear"):
        return
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    available = linear_module_names(model)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise RecipeError(
            f"key 'lora_target_modules': {', '.join(missing)} not in the model. Its linear modules are: "
            f"{', '.join(available)}."
        )


def final_norm(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The normalisation layer just before the LM head (GPT-2's `ln_f`, Llama's `model.norm`) and its name.

    It is the last norm module in registration order: transformers registers the final norm after the
    blocks and before the head. Every logit is a linear function of its output, so scaling its gain and
    bias by 1/T is sampling at temperature T.
    """
    norms = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")
    ]
    if not norms:
        raise UserError(
            f"{type(model).__name__} has no normalisation layer (LayerNorm or *Norm module) to find a final norm in."
        )
    return norms[-1]


def policy_parameter_groups(
    policy: torch.nn.Module, learning_rate: float, final_norm_learning_rate: float | None = None
) -> list[dict]:
    """Optimizer groups of a policy's trainable weights: all at `learning_rate`, or the final norm apart at
    `final_norm_learning_rate` (without weight decay, as transformers' Trainer spares norms)."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    if final_norm_learning_rate is None:
        return [{"params": trainable, "lr": learning_rate}]
    name, norm = final_norm(policy)
    norm_ids = {id(p) for p in norm.parameters() if p.requires_grad}
    if not norm_ids:
        raise UserError(
            f"key 'final_norm_learning_rate': the policy's final norm ({name}) is frozen (LoRA?); it needs full "
            "fine-tuning."
        )
    logger.info(
        "final norm %s at learning rate %g, the rest of the policy at %g",
        name,
        final_norm_learning_rate,
        learning_rate,
    )
    return [
        {"params": [p for p in trainable if id(p) not in norm_ids], "lr": learning_rate},
        {"params": [p for p in trainable if id(p) in norm_ids], "lr": final_norm_learning_rate, "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], config) -> torch.optim.AdamW:
    """AdamW over `groups` with the config's betas, eps and weight decay; the fused kernel wherever it runs
    (about half the step time of the per-tensor loop on a CPU), as transformers' Trainer defaults to."""
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda", "xpu", "mps") for p in params)
    return torch.optim.AdamW(
        groups,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=fused,
    )


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    """Total and trainable parameters. bitsandbytes packs two 4-bit weights per stored byte, so a 4-bit tensor
    counts its logical shape, not its storage."""
    total = trainable = 0
    for parameter in model.parameters():
        quant_state = getattr(parameter, "quant_state", None)
        count = quant_state.shape.numel() if quant_state is not None else parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_share": round(trainable / max(total, 1), 6),
    }


def gpt2_from_scratch(
    tokenizer,
    n_layer: int,
    n_head: int,
    n_embd: int,
    context_length: int,
    dropout: float = 0.0,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A freshly initialised GPT-2 of the given shape for `tokenizer` (EOS doubles as BOS, pad apart)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context_length,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        # GPT-2's own tanh approximation of GELU ("gelu_new"), as one fused kernel instead of six element-wise ones:
        # the same function, in less time per training step (docs/experiments.md).
        activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
