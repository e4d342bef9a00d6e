"""A verifier of multi-step solutions: where its labels sit, the rows it trains on, and how it scores a solution.

The verifier is a causal LM's body with transformers' 2-class token-classification head. Process supervision
labels the last token of every step and the end of the solution (EOS, labelled by the outcome); outcome
supervision labels only the end. Every other position is -100 (no loss).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForTokenClassification, PreTrainedModel

from pipeline.data.toy_world import parse_prompt, solved, step_labels
from pipeline.decoding import Generation
from pipeline.errors import DataError
from pipeline.models import readable_weights

RIGHT = 1  # the class index of "this step (or solution) is right"


def step_end_chars(prompt: str, response: str) -> list[int]:
    """Character index (in `response`) of the last character of each step the response takes."""
    steps = len(parse_prompt(prompt).answer.split())
    ends = []
    for word in list(re.finditer(r"\S+", response))[:steps]:
        # A step is a whitespace-separated word, as step_labels counts them; a word of bare punctuation is a
        # (wrong) step too, ending at its last character.
        stripped = word.group().rstrip(".,") or word.group()
        ends.append(word.start() + len(stripped) - 1)
    return ends


def encode_solution(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int], int]:
    """(token ids of prompt + response + EOS, the token index of each step's end, the index of EOS).

    The prompt loses its left end when the whole does not fit in `max_length`."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    response_ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    ends = []
    for char in step_end_chars(prompt, response):
        token = next((i for i, (start, end) in enumerate(offsets) if start <= char < end), None)
        if token is not None:
            ends.append(token)
    ids = response_ids + [tokenizer.eos_token_id]
    keep = max(0, max_length - len(ids))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    offset = len(prompt_ids)
    return prompt_ids + ids, [offset + token for token in ends], offset + len(ids) - 1


def solution_labels(prompt: str, response: str, finished: bool, supervision: str) -> list[int]:
    """The labels at a solution's labelled positions: per step (process) then the end, or the end alone."""
    outcome = int(finished and solved(prompt, response))
    if supervision == "outcome":
        return [outcome]
    return [int(label) for label in step_labels(prompt, response)] + [outcome]


def labelled_dataset(
    tokenizer, prompts: Sequence[str], generations: Sequence[Generation], supervision: str, max_length: int
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Token-classification rows (input_ids, labels: -100 except at the labelled positions) of the finished
    samples; unfinished ones are left out, as every solution is scored with an EOS at its end."""
    rows = []
    for prompt, generation in zip(prompts, generations):
        if not generation.finished:
            continue
        ids, ends, eos = encode_solution(tokenizer, prompt, generation.text, max_length)
        positions = [eos] if supervision == "outcome" else [*ends, eos]
        values = solution_labels(prompt, generation.text, True, supervision)
        if len(values) != len(positions):  # a step whose end fell outside the tokens: never for toy solutions
            raise DataError(f"cannot place the step labels of {generation.text!r} (prompt {prompt!r})")
        labels = [-100] * len(ids)
        for position, value in zip(positions, values):
            labels[position] = value
        rows.append({"input_ids": ids, "labels": labels})
    if not rows:
        raise DataError("every training sample of the generator was cut by sample_max_new_tokens: raise it.")
    labels = [value for row in rows for value in row["labels"] if value != -100]
    stats = {
        "samples": len(generations),
        "unfinished": sum(not g.finished for g in generations),
        "solutions": len(rows),
        "labels": len(labels),
        "right_share": round(float(np.mean(labels)), 4),
        "solved_share": round(
            float(np.mean([solved(p, g.text) and g.finished for p, g in zip(prompts, generations)])), 4
        ),
    }
    return datasets.Dataset.from_list(rows), stats


@torch.inference_mode()
def position_probabilities(
    model: PreTrainedModel,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    batch_size: int,
) -> list[list[float]]:
    """P(right) at every labelled position of each solution: each step's end, then the end (EOS)."""
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        encoded = [
            encode_solution(tokenizer, prompt, response, max_length)
            for prompt, response in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
        ]
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        right = logits.float().softmax(-1)[..., RIGHT].cpu()
        out.extend([right[row, [*ends, eos]].tolist() for row, (_, ends, eos) in enumerate(encoded)])
    return out


def solution_score(probabilities: Sequence[float], supervision: str, aggregate: str) -> float:
    """An outcome verifier scores the end alone; a process verifier every step and the end, multiplied or min."""
    if supervision == "outcome":
        return float(probabilities[-1])
    return float(np.prod(probabilities)) if aggregate == "product" else float(min(probabilities))


def build_verifier(model_name_or_path: str, tokenizer, seed: int) -> PreTrainedModel:
    """The generator's body with a fresh 2-class token-classification head (seeded)."""
    torch.manual_seed(seed)
    with readable_weights(model_name_or_path):
        return AutoModelForTokenClassification.from_pretrained(
            model_name_or_path, num_labels=2, pad_token_id=tokenizer.pad_token_id
        )
