"""A trained reward model as a function: how a (prompt, response) becomes token ids, how it is scored,
and how a reward model is judged. Shared by the reward stage, Best-of-N, PPO and the report.

The one convention everything here keeps (the reward stage trains with the same code):

    ids = tokenize(prompt) + tokenize(response) + [EOS]        # no special tokens added by the tokenizer

* EOS ends every response in training (as TRL's RewardTrainer and the SFT stage do), so the reward is
  read on the EOS token: "the response is complete, judge it". When scoring a generation that was cut
  by the length limit (`finished=False`), no EOS is appended, because the policy did not produce one;
  the reward model then scores an ending it never saw in training, which is what a missing EOS deserves
  (PPO adds its own missing-EOS penalty on top).
* A reward model trained with `append_eos: false` (the reward stage records it in its config as
  `reward_append_eos`) reads the reward on the last response token instead; `score` follows the
  model's own setting, so callers never have to know. Such a model cannot tell a finished response
  from a cut one; its use is a small model, for which the EOS position is one layer short of the
  information it needs (see recipes/toy/reward.yaml).
* Pooling (`reward_pooling`, recorded in the model's config, which `load_reward_model` and the reward
  stage apply): "last" reads the score head at that last token, as TRL and Transformers do. "sum" applies
  the head at EVERY real token and adds the results: a token-level reward model. Under causal attention
  a prompt token never sees the response, so the prompt's share is the same for two responses to one
  prompt and cancels in every comparison; what differs is decided token by token, where each response
  token sees the prompt and the response so far, the very view the policy has when it writes that token.
  On the toy world that is the difference between checking a reversed word letter by letter and having
  to gather the whole check into the EOS position (docs/experiments.md has the measurements).
* Prompt and response are tokenized separately and concatenated (not `tokenize(prompt + response)`),
  so the ids a reward model is trained on are the ids PPO's rollouts are made of: the prompt encoded
  as pipeline.decoding encodes it, then the response tokens.
* Too long for `max_length`: the prompt loses tokens from its LEFT (its end, next to the response,
  matters most); only when a response alone does not fit is the response cut at its end (EOS lost).
* The reward is read at the LAST REAL token of each row, whatever the padding side: sequences are
  padded by hand with an attention mask, position ids follow the mask (so a left-padded row sees the
  same positions as the unpadded one), and the sequence-classification model picks the rightmost
  non-pad token (pad is a distinct token, never EOS). tests/test_reward.py proves it for both sides.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from pipeline.errors import UserError
from pipeline.models import config_context_length

logger = logging.getLogger(__name__)


# --- encoding ---------------------------------------------------------------------------------------


@dataclass
class Truncation:
    """What fitting pairs into `max_length` did (counted, never silent)."""

    pairs: int = 0
    truncated: int = 0  # pairs longer than max_length (each counted once)
    prompt_truncated: int = 0  # prompt lost tokens from its left
    response_truncated: int = 0  # a response alone was too long: cut at its end (rare; EOS lost)
    longest: int = 0  # longest sequence before truncation, in tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "pairs": self.pairs,
            "truncated": self.truncated,
            "prompt_truncated_from_left": self.prompt_truncated,
            "response_truncated": self.response_truncated,
            "longest_sequence": self.longest,
        }


def _ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def fit_pair(
    prompt: list[int], responses: Sequence[list[int]], max_length: int | None, stats: Truncation | None = None
) -> list[list[int]]:
    """prompt + each response (both already ending as they should), cut to `max_length` the same way for
    all responses: the prompt keeps its last tokens; a response is cut at its end only if it alone does
    not fit next to one prompt token."""
    longest_response = max(len(r) for r in responses)
    if stats is not None:
        stats.pairs += 1
        stats.longest = max(stats.longest, len(prompt) + longest_response)
    if max_length is None or len(prompt) + longest_response <= max_length:
        return [prompt + r for r in responses]
    room = max(max_length - longest_response, min(1, len(prompt)))
    if stats is not None:
        stats.truncated += 1
        stats.prompt_truncated += room < len(prompt)
        stats.response_truncated += longest_response > max_length - room
    kept = prompt[len(prompt) - room :] if room else []
    return [(kept + r)[:max_length] for r in responses]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int | None,
    append_eos: bool = True,
) -> tuple[list[list[int]], list[list[int]], Truncation]:
    """Token ids of prompt+chosen+EOS and prompt+rejected+EOS, fitted into `max_length` (see module doc)."""
    eos = [tokenizer.eos_token_id] if append_eos else []
    stats = Truncation()
    chosen_ids, rejected_ids = [], []
    for p, c, r in zip(_ids(tokenizer, prompts), _ids(tokenizer, chosen), _ids(tokenizer, rejected)):
        good, bad = fit_pair(p, [c + eos, r + eos], max_length, stats)
        chosen_ids.append(good)
        rejected_ids.append(bad)
    return chosen_ids, rejected_ids, stats


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    finished: Sequence[bool] | None = None,
    max_length: int | None = None,
    append_eos: bool = True,
) -> list[list[int]]:
    """Token ids of single (prompt, response) examples as the reward model is trained on them."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    finished = [True] * len(prompts) if finished is None else list(finished)
    eos = tokenizer.eos_token_id
    return [
        fit_pair(p, [r + ([eos] if done and append_eos else [])], max_length)[0]
        for p, r, done in zip(_ids(tokenizer, prompts), _ids(tokenizer, responses), finished)
    ]


# --- scoring ----------------------------------------------------------------------------------------


def context_length(model: PreTrainedModel) -> int | None:
    """The longest sequence the model can read (GPT-2: n_positions)."""
    return config_context_length(model.config)


def pad_batch(
    sequences: Sequence[list[int]], pad_token_id: int, padding_side: str = "right", device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids for a batch padded on either side.

    Position ids count real tokens only, so padding on the left does not shift the positions a model
    with learned position embeddings (GPT-2) sees.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    longest = max(len(s) for s in sequences)
    rows, masks = [], []
    for sequence in sequences:
        padding = [pad_token_id] * (longest - len(sequence))
        ones, zeros = [1] * len(sequence), [0] * len(padding)
        rows.append(sequence + padding if padding_side == "right" else padding + sequence)
        masks.append(ones + zeros if padding_side == "right" else zeros + ones)
    attention_mask = torch.tensor(masks, device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": torch.tensor(rows, device=device),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }


@torch.inference_mode()
def score_token_ids(
    reward_model: PreTrainedModel,
    sequences: Sequence[list[int]],
    batch_size: int = 64,
    padding_side: str = "right",
    prompt_lengths: Sequence[int] | None = None,
) -> list[float]:
    """The reward of each token sequence (as `encode` makes them), read at its last real token.

    A token-sum model (pooling "sum") given `prompt_lengths` adds up the response tokens only: the prompt's
    share is a constant per prompt that no comparison ever constrained, so leaving it out changes no
    comparison and keeps the scale of the reward that of the responses (what PPO's critic must learn).
    """
    pad_id = reward_model.config.get_text_config().pad_token_id
    if pad_id is None:
        raise UserError("the reward model has no pad_token_id in its config: it cannot find the last real token.")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot score an empty sequence")
    if any(pad_id in s for s in sequences):
        # The model finds the last real token as the rightmost non-pad token; a pad inside would fool it.
        raise ValueError(f"a sequence contains the pad token id {pad_id}; pad must never appear inside a sequence")
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    # Rows are scored in order of length, so that each batch is padded to about its own rows' length rather than to
    # the longest of a random mix (each row's score is independent of its batch-mates).
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    scores: list[float] = [0.0] * len(sequences)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = pad_batch([sequences[row] for row in rows], pad_id, padding_side, device)
            if prompt_lengths is not None and pooling_of(reward_model) == "sum":
                starts = torch.tensor([prompt_lengths[row] for row in rows], device=device)
                batch["reward_mask"] = (batch["position_ids"] >= starts[:, None]).long()
            logits = reward_model(**batch, use_cache=False).logits
            for row, value in zip(rows, logits[:, 0].float().tolist()):
                scores[row] = value
    finally:
        reward_model.train(was_training)
    return scores


def score(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 64,
    finished: Sequence[bool] | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
) -> list[float]:
    """Reward of each (prompt, response) pair, encoded exactly as in training (EOS appended to finished
    responses, default all, unless the model was trained without; too-long prompts lose their left end).
    `max_length` defaults to the model's context length."""
    max_length = max_length or context_length(reward_model)
    append_eos = appends_eos(reward_model)
    sequences = encode(tokenizer, prompts, responses, finished, max_length, append_eos)
    if pooling_of(reward_model) != "sum":  # only a token-sum model leaves the prompt out (score_token_ids)
        return score_token_ids(reward_model, sequences, batch_size, padding_side)
    finished = [True] * len(responses) if finished is None else list(finished)
    response_lengths = [len(ids) + (done and append_eos) for ids, done in zip(_ids(tokenizer, responses), finished)]
    prompt_lengths = [max(0, len(ids) - n) for ids, n in zip(sequences, response_lengths)]
    return score_token_ids(reward_model, sequences, batch_size, padding_side, prompt_lengths)


def appends_eos(reward_model: PreTrainedModel) -> bool:
    """Whether the model was trained on responses ended by EOS (the default; see the module doc)."""
    return bool(getattr(reward_model.config, "reward_append_eos", True))


# --- pooling -----------------------------------------------------------------------------------------

POOLINGS = ("last", "sum")


def _token_sum_forward(self, input_ids=None, attention_mask=None, position_ids=None, reward_mask=None, **kwargs):
    """forward of a sequence classifier whose logit is the sum of its score head over the real tokens.

    Written here because Transformers' *ForSequenceClassification only read the last non-pad token.
    Real tokens are those of `attention_mask` (else the non-pad ones), so padding on either side adds nothing;
    `reward_mask` narrows the sum further (score_token_ids: to the response tokens).
    """
    kwargs.pop("labels", None)
    kwargs.pop("return_dict", None)
    kwargs.pop("use_cache", None)
    hidden = self.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
    )[0]
    token_scores = self.score(hidden)
    real = attention_mask if attention_mask is not None else input_ids != self.config.pad_token_id
    if reward_mask is not None:
        real = real * reward_mask
    return SequenceClassifierOutputWithPast(
        logits=(token_scores * real.unsqueeze(-1).to(token_scores.dtype)).sum(dim=1)
    )


def set_pooling(model: PreTrainedModel, pooling: str) -> PreTrainedModel:
    """Make a sequence classifier read its reward as `pooling` says ("last" or "sum", see the module doc) and
    record it in its config (`reward_pooling`), so that save_pretrained keeps it and load_reward_model restores it."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown reward pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    if pooling == "sum":
        if not hasattr(model, "score") or not hasattr(model, "base_model"):
            raise UserError(
                f"reward pooling 'sum' needs a sequence classifier with a `score` head; {type(model).__name__} has "
                "none."
            )
        model.forward = types.MethodType(_token_sum_forward, model)
    else:
        model.__dict__.pop("forward", None)  # back to the class's own last-token forward
    model.config.reward_pooling = pooling
    return model


def pooling_of(model: PreTrainedModel) -> str:
    """The pooling a saved reward model was trained with ("last" for models that do not say)."""
    return getattr(model.config, "reward_pooling", "last")


def load_reward_model(path: str | Path, device: str | torch.device | None = None):
    """(model, tokenizer) of a finished reward stage output (safetensors only), in eval mode."""
    from trl import ModelConfig

    from pipeline.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(path))
    model = load_model(
        ModelConfig(model_name_or_path=str(path), dtype="float32"), tokenizer, head="sequence_classification"
    )
    if model.config.num_labels != 1:
        raise UserError(f"{path} is not a reward model: it has {model.config.num_labels} outputs, not 1.")
    set_pooling(model, pooling_of(model))
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


# --- judging a reward model --------------------------------------------------------------------------


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """Accuracy (ties count half: a tie is no preference), mean margin r_c − r_r and mean loss −log σ(margin)."""
    margins = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    if margins.size == 0:
        raise ValueError("no pairs to evaluate")
    accuracy = float(np.mean((margins > 0) + 0.5 * (margins == 0)))
    return {
        "accuracy": round(accuracy, 4),
        "mean_margin": round(float(margins.mean()), 4),
        "loss": round(float(np.mean(np.logaddexp(0.0, -margins))), 4),
        "pairs": int(margins.size),
    }


def pairwise_calibration(margins: Sequence[float], first_is_better: Sequence[bool], bins: int = 10) -> dict:
    """Reliability of the reward model's pairwise probabilities P(a ≻ b) = σ(r_a − r_b).

    Definition (folded, so that the order a pair is listed in does not matter): for each pair the
    model's *confidence* is max(p, 1 − p) ∈ [0.5, 1], and it is *right* when the item it prefers is the
    one the reference prefers (the toy world's gold reward, or the data's label). Pairs are put into
    `bins` equal-width confidence bins over [0.5, 1]; a calibrated model is right in a bin as often as
    its mean confidence there says. ECE = Σ_bins (n_bin / n) · |mean confidence − share right|.
    A pair with p = 0.5 exactly counts as half right.
    """
    margins = np.asarray(margins, dtype=np.float64)
    truth = np.asarray(first_is_better, dtype=bool)
    if margins.size == 0:
        return {"pairs": 0, "ece": None, "bins": []}
    p = 1.0 / (1.0 + np.exp(-margins))
    confidence = np.maximum(p, 1.0 - p)
    right = np.where(p == 0.5, 0.5, ((p > 0.5) == truth).astype(np.float64))
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        row = {"low": round(float(edges[b]), 3), "high": round(float(edges[b + 1]), 3), "pairs": count}
        if count:
            mean_confidence, share_right = float(confidence[members].mean()), float(right[members].mean())
            row.update(mean_confidence=round(mean_confidence, 4), share_right=round(share_right, 4))
            ece += count / margins.size * abs(mean_confidence - share_right)
        table.append(row)
    return {"pairs": int(margins.size), "ece": round(ece, 4), "accuracy": round(float(right.mean()), 4), "bins": table}


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (written here: scipy is not a dependency)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    result = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant (undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    value = float(np.corrcoef(x, y)[0, 1])
    return None if math.isnan(value) else value


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of the average ranks, so ties are handled)."""
    return pearson(ranks(x), ranks(y))
