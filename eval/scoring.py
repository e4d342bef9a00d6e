"""Load a stage's model and score responses under it: the log-probability of each response token, and,
against a second (reference) model, the exact KL of the two full next-token distributions at each
response position.

Scoring uses the layout `pipeline.decoding.generate` samples with: prompts left-padded, position ids
counted from the attention mask (what `generate` passes to the model), responses appended. So a
response sampled at temperature 1 is scored under exactly the distribution it was drawn from; a
mismatch here is the classic source of negative "KL" in RLHF code.

Loading avoids pipeline.models on purpose: that module imports TRL and bitsandbytes (seconds of start-up
on a 2-core machine) for training-time features the report does not need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from pipeline.errors import UserError
from pipeline.kl import exact_kl

logger = logging.getLogger(__name__)


def load_causal_lm(path: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, object]:
    """A stage output's causal LM (full model, or a PEFT adapter merged into its base) and tokenizer, in eval mode."""
    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (path / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        elif (path / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM  # only adapter-only outputs need PEFT

            model = AutoPeftModelForCausalLM.from_pretrained(path).merge_and_unload()
        else:
            raise UserError(f"{path} holds no model (config.json or adapter_config.json).")
    except OSError as error:
        raise UserError(f"could not load the model in {path}: {error}") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {path} has no EOS token.")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise UserError(f"{path}: the tokenizer has more tokens than the model has embeddings.")
    return model.to(device).eval(), tokenizer


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompts encoded as `generate` encodes them: no special tokens; an empty prompt becomes one EOS (= BOS)."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [row if row else [start] for row in ids]


def response_ids(tokenizer, text: str, finished: bool) -> list[int]:
    """Token ids of a saved response text (samples.json keeps text only), with the EOS it ended with.

    Exact for the char tokenizer; a BPE tokenizer may split a sampled text differently from the sampled
    ids (same string, another segmentation), which changes its score a little.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if finished else ids


@dataclass
class Scores:
    """Per response token (rows = responses, columns = positions; padding has mask 0 and value 0)."""

    logprobs: torch.Tensor  # log π(y_t | x, y_<t)
    mask: torch.Tensor  # 1.0 for real response tokens
    ref_logprobs: torch.Tensor | None = None  # log π_ref(y_t | x, y_<t)
    exact_kl: torch.Tensor | None = None  # KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) over the full vocabulary

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=-1)

    def sequence_logprob(self) -> torch.Tensor:
        return (self.logprobs * self.mask).sum(dim=-1)


def _batch_logits(model: PreTrainedModel, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Logits predicting each response token: [batch, longest response, vocab], and the response mask."""
    longest_prompt = max(len(p) for p in prompts)
    longest_response = max(max(len(r) for r in responses), 1)
    rows, masks = [], []
    for prompt, response in zip(prompts, responses):
        left = longest_prompt - len(prompt)
        right = longest_response - len(response)
        rows.append([pad_id] * left + prompt + response + [pad_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
    device = model.device
    input_ids = torch.tensor(rows, device=device)
    attention_mask = torch.tensor(masks, device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # The logit at column c predicts the token at c + 1: response token t sits at longest_prompt + t.
    logits = logits[:, longest_prompt - 1 : longest_prompt - 1 + longest_response].float()
    response_mask = torch.tensor(
        [[1.0] * len(r) + [0.0] * (longest_response - len(r)) for r in responses], device=device
    )
    targets = torch.tensor([r + [pad_id] * (longest_response - len(r)) for r in responses], device=device)
    return logits, response_mask, targets


def _pad_cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    width = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(chunk, (0, width - chunk.shape[1])) for chunk in chunks])


@torch.inference_mode()
def score(
    model: PreTrainedModel,
    tokenizer,
    prompts: list[str],
    responses: list[list[int]],
    ref_model: PreTrainedModel | None = None,
    batch_size: int = 64,
) -> Scores:
    """Score `responses` (token ids, EOS included where generation stopped) to `prompts` under `model`,
    and under `ref_model` too when given (same tokenizer), with the exact per-position KL between them."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if (
        ref_model is not None
        and ref_model.get_output_embeddings().weight.shape[0] != model.get_output_embeddings().weight.shape[0]
    ):
        raise UserError("the two models have different vocabularies: their KL needs the same tokenizer.")
    encoded = prompt_ids(tokenizer, prompts)
    logprobs, masks, ref_logprobs, exact = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        batch_prompts, batch_responses = encoded[start : start + batch_size], responses[start : start + batch_size]
        logits, mask, targets = _batch_logits(model, batch_prompts, batch_responses, pad_id)
        logp = torch.log_softmax(logits, dim=-1)
        logprobs.append(logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask)
        masks.append(mask)
        if ref_model is not None:
            ref_logits, _, _ = _batch_logits(ref_model, batch_prompts, batch_responses, pad_id)
            ref_logp = torch.log_softmax(ref_logits, dim=-1)
            ref_logprobs.append(ref_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask)
            exact.append(exact_kl(logits, ref_logits) * mask)
    return Scores(
        logprobs=_pad_cat(logprobs).cpu(),
        mask=_pad_cat(masks).cpu(),
        ref_logprobs=_pad_cat(ref_logprobs).cpu() if ref_logprobs else None,
        exact_kl=_pad_cat(exact).cpu() if exact else None,
    )


def perplexity(scores: Scores) -> float:
    """exp(mean negative log-likelihood per response token), pooled over all responses (inf if none)."""
    tokens = float(scores.mask.sum())
    if tokens == 0:
        return float("inf")
    return float(torch.exp(-(scores.logprobs * scores.mask).sum() / tokens))
