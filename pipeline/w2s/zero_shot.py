"""The strong model's zero-shot baseline: no training at all, only the pretrained causal LM's own log-probability
of each candidate answer given its prompt, per token (answer and EOS), so that long and short answers compare.
Burns et al. (2023) set zero-shot and few-shot prompting of the strong model beside weak-to-strong training (the
"saliency" of the task to the strong model); this asks the same of a task whose examples are a prompt and a
candidate answer (the toy world's "User: ...\nBot: answer"). Written here: no library scores a task this way.

A threshold turns scores into labels. It is set so that on half B the share of examples scored above it is the
share the weak model labels positive there (the weak labels the student learns from; no ground truth is read),
as the auxiliary confidence loss hardens predictions to the weak labels' class balance. Chosen over the
threshold of best agreement with the weak labels, which a weak supervisor pulls to "all positive" (compared on
the train split: docs/experiments.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.models import load_tokenizer
from pipeline.reward_model import pad_batch, ranks

logger = logging.getLogger("pipeline.weak_to_strong")

ANSWER_MARKER = "\nBot:"  # where the prompt ends and the candidate answer begins


def split_prompt_and_answer(text: str) -> tuple[str, str] | None:
    """(prompt ending with the marker, the candidate answer after it), or None for a text without the marker."""
    cut = text.rfind(ANSWER_MARKER)
    if cut < 0 or not text[cut + len(ANSWER_MARKER) :].strip():
        return None
    cut += len(ANSWER_MARKER)
    return text[:cut], text[cut:]


@torch.no_grad()
def candidate_log_probs(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """The mean log p over the answer's tokens and EOS, given the prompt, for each text. Length-normalised because
    a sum ranks short answers above long ones whatever they say (compared on the toy world's train examples:
    docs/experiments.md). The prompt and the answer are encoded apart, as the pipeline's generation encodes a
    prompt and appends the response tokens; rows are right-padded."""
    pairs = [split_prompt_and_answer(text) for text in texts]
    missing = [text for text, pair in zip(texts, pairs) if pair is None]
    if missing:
        raise ValueError(f"no '{ANSWER_MARKER.strip()}' answer to score in {missing[0]!r}")
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        rows, answer_spans = [], []
        for prompt, answer in pairs[start : start + batch_size]:
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(prompt_ids + answer_ids)
            answer_spans.append((len(prompt_ids), len(prompt_ids) + len(answer_ids)))
        batch = pad_batch(rows, tokenizer.pad_token_id, "right", device)
        logits = model(**batch).logits.float()
        next_ids = batch["input_ids"][:, 1:, None]
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, next_ids)[..., 0]
        for i, (begin, end) in enumerate(answer_spans):
            scores.append(float(log_probs[i, begin - 1 : end - 1].mean()))
    return np.array(scores)


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: P(a right example scores above a wrong one), ties counting one half (the
    Mann-Whitney statistic, average ranks for ties); None where one class is absent."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    rank_sum = ranks(scores)[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def class_share_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t for which the share of `scores` above t is the share of positive `labels` (0/1)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(int)
    return float(np.quantile(scores, 1.0 - labels.mean()))


def zero_shot_baseline(
    test_scores: np.ndarray, test_labels: np.ndarray, half_b_scores: np.ndarray, weak_labels_b: np.ndarray
) -> dict[str, Any]:
    """Test accuracy at the threshold that gives half B the weak labels' share of positives, and the
    threshold-free AUC on test."""
    threshold = class_share_threshold(half_b_scores, np.asarray(weak_labels_b).argmax(axis=-1))
    predictions = (np.asarray(test_scores) > threshold).astype(int)
    return {
        "accuracy": float(np.mean(predictions == np.asarray(test_labels))),
        "auc": auc(test_scores, test_labels),
        "threshold": round(threshold, 4),
        "threshold_from": "the weak labels' share of positives on half B",
    }


def score_task(model_path: str, texts: Sequence[str], device: torch.device, batch_size: int) -> np.ndarray | None:
    """The strong LM's candidate log-probabilities for `texts`, or None where the task's texts are not a prompt
    and a candidate answer (e.g. sst2's sentences), with the reason logged."""
    if any(split_prompt_and_answer(text) is None for text in texts):
        logger.info("zero-shot baseline skipped: the task's texts are not 'prompt%s answer'", ANSWER_MARKER)
        return None
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).to(device).eval()
    scores = candidate_log_probs(model, tokenizer, texts, batch_size)
    del model
    return scores
