"""A trained policy against its reference (the SFT model) on held-out prompts: the numbers PPO, DPO and the
report share, so that every stage is measured in the same units.

    evaluation = evaluate_policy(policy, tokenizer, prompts, reference=sft_model, gold=toy_gold_scorer,
                                 scorer=reward_model_scorer("runs/toy/reward"))
    evaluation.summary["kl"]["k3"]["mean"], evaluation.summary["policy"]["sampled"]["gold_reward"]

What it does, for each prompt:
  1. completions of the policy and of the reference, greedy and sampled at `temperature` (top-k/top-p
     off, so that the samples come from the model's own distribution), with pipeline.decoding.generate;
  2. scores of every completion: the toy world's gold reward (`gold`) and a reward model (`scorer`),
     both optional, also per group of prompts with `group_of` (e.g. the toy world's skill, toy_skill);
  3. the KL divergence of the policy from the reference per whole response, on the policy's sampled
     completions, with the log-probabilities of both models taken at the same temperature as the
     sampling (a different temperature is the classic way to get a "negative KL"): k1, k2 and k3 of
     pipeline.kl summed over the response tokens (EOS included: stopping is a decision too), and
     `exact` = the exact next-token KL summed along the same sampled paths (by the chain rule also an
     unbiased estimate of the sequence KL; on the toy DPO runs it had the smallest standard error);
  4. win rates of the policy over the reference on the same prompt, by gold reward and by the reward
     model, for greedy and sampled completions (a tie counts one half).

With `reference=None` and a PEFT policy, the reference is the policy with its adapters disabled (the
SFT model, as TRL's DPOTrainer uses it): no second copy of the model is needed.

`summary` is plain JSON (metrics.json); `samples` are the completions with their scores (samples.json).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.data.toy_world import gold_reward_batch, parse_prompt
from pipeline.decoding import Generation, generate
from pipeline.kl import exact_kl, kl_estimates, sequence_kl

logger = logging.getLogger(__name__)

#: (prompts, responses, finished) -> one score per response.
Scorer = Callable[[Sequence[str], Sequence[str], Sequence[bool]], list[float]]

STRATEGIES = ("greedy", "sampled")
KL_ESTIMATORS = ("k1", "k2", "k3", "exact")


@dataclass
class PolicyEvaluation:
    summary: dict[str, Any]
    samples: list[dict[str, Any]]


def toy_gold_scorer(prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> list[float]:
    """The toy world's programmatic gold reward in [0, 1] (an unfinished response loses the clean-ending part)."""
    return gold_reward_batch(prompts, responses, finished)


def toy_skill(prompt: str) -> str:
    """The toy world's skill of a prompt (add, copy, reverse, colour): a `group_of` for evaluate_policy."""
    return parse_prompt(prompt).skill


def reward_model_scorer(path: str, device: torch.device | str | None = None, batch_size: int = 64) -> Scorer:
    """A scorer from a reward model saved by the reward stage, encoding (prompt, response) exactly as it was
    trained (pipeline.reward_model: EOS after finished responses, none after cut ones)."""
    from pipeline.reward_model import load_reward_model, score

    model, tokenizer = load_reward_model(path, device)

    def scorer(prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> list[float]:
        return score(model, tokenizer, prompts, responses, batch_size=batch_size, finished=finished)

    return scorer


# --- the evaluation ---------------------------------------------------------------------------------------


def evaluate_policy(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    reference: PreTrainedModel | None = None,
    gold: Scorer | None = None,
    scorer: Scorer | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 32,
    group_of: Callable[[str], str] | None = None,
) -> PolicyEvaluation:
    """Policy vs reference on `prompts`: scores, KL to the reference and win rates (see the module docstring).

    `group_of(prompt)` (e.g. toy_skill) adds each score's mean per group of prompts, to see where a change comes from.
    """
    if not prompts:
        raise ValueError("evaluate_policy needs at least one prompt")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    prompts = list(prompts)
    strategies = {"greedy": "greedy", "sampled": {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}}
    generations: dict[str, dict[str, list[Generation]]] = {}
    for name, model_context in (("policy", contextlib.nullcontext(policy)), ("reference", _reference(policy, reference))):
        with model_context as model:
            generations[name] = {
                strategy: generate(model, tokenizer, prompts, spec, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
                for strategy, spec in strategies.items()
            }
    kl = sequence_kls(policy, reference, tokenizer, generations["policy"]["sampled"], temperature, max_new_tokens, batch_size)

    scores: dict[str, dict[str, dict[str, list[float]]]] = {"policy": {}, "reference": {}}
    for name, by_strategy in generations.items():
        for strategy, batch in by_strategy.items():
            texts, finished = [g.text for g in batch], [g.finished for g in batch]
            scores[name][strategy] = {}
            if gold is not None:
                scores[name][strategy]["gold_reward"] = gold(prompts, texts, finished)
            if scorer is not None:
                scores[name][strategy]["reward_model"] = scorer(prompts, texts, finished)

    summary: dict[str, Any] = {
        "prompts": len(prompts),
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    for name in ("policy", "reference"):
        summary[name] = {
            strategy: {
                **{key: _round(_mean(values)) for key, values in scores[name][strategy].items()},
                "finished": _round(_mean([float(g.finished) for g in generations[name][strategy]])),
                "response_tokens": _round(_mean([float(len(g.token_ids)) for g in generations[name][strategy]])),
                **({f"{key}_by_group": _group_means(values, prompts, group_of) for key, values in scores[name][strategy].items()}
                   if group_of else {}),
            }
            for strategy in STRATEGIES
        }
    summary["kl"] = {
        estimator: {"mean": _round(_mean(values)), "stderr": _round(_stderr(values))} for estimator, values in kl.items()
    }
    summary["win_rate"] = {
        key: {strategy: _round(win_rate(scores["policy"][strategy][key], scores["reference"][strategy][key])) for strategy in STRATEGIES}
        for key in scores["policy"]["sampled"]
    }

    samples = []
    for name, by_strategy in generations.items():
        for strategy, batch in by_strategy.items():
            for index, generation in enumerate(batch):
                record = {"model": name, "strategy": strategy, "prompt": generation.prompt, "text": generation.text, "finished": generation.finished}
                record.update({key: _round(values[index]) for key, values in scores[name][strategy].items()})
                if name == "policy" and strategy == "sampled":
                    record["kl_k1"] = _round(kl["k1"][index])
                samples.append(record)
    return PolicyEvaluation(summary, samples)


def win_rate(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float:
    """Share of prompts where the policy's completion scores higher than the reference's; ties count one half."""
    if len(policy_scores) != len(reference_scores) or not policy_scores:
        raise ValueError("win_rate needs two equally long, non-empty lists of scores")
    points = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores)]
    return sum(points) / len(points)


@torch.no_grad()
def sequence_kls(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    generations: Sequence[Generation],
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 32,
) -> dict[str, list[float]]:
    """KL(policy ‖ reference) of each whole response, by k1/k2/k3 and the exact per-token sum (in nats).

    `generations` must be samples of the policy (the estimators assume x ~ policy) made with
    `max_new_tokens`, which decides how their prompts were cut to fit the context.
    """
    kls: dict[str, list[float]] = {name: [] for name in KL_ESTIMATORS}
    for start in range(0, len(generations), batch_size):
        input_ids, attention_mask, response_mask = _pack(tokenizer, generations[start : start + batch_size], policy, max_new_tokens)
        policy_logits = _next_token_logits(policy, input_ids, attention_mask, temperature)
        with _reference(policy, reference) as ref_model:
            ref_logits = _next_token_logits(ref_model, input_ids, attention_mask, temperature)
        targets = input_ids[:, 1:].unsqueeze(-1)
        logprobs = policy_logits.log_softmax(-1).gather(-1, targets).squeeze(-1)
        ref_logprobs = ref_logits.log_softmax(-1).gather(-1, targets).squeeze(-1)
        per_token = {**kl_estimates(logprobs, ref_logprobs), "exact": exact_kl(policy_logits, ref_logits)}
        for name, values in per_token.items():
            kls[name] += sequence_kl(values, response_mask).tolist()
    return kls


# --- helpers ------------------------------------------------------------------------------------------------


def _reference(policy: PreTrainedModel, reference: PreTrainedModel | None) -> contextlib.AbstractContextManager:
    """The reference model to use inside a `with`: the given one, or the PEFT policy with adapters disabled."""
    if reference is not None:
        return contextlib.nullcontext(reference)
    if not hasattr(policy, "disable_adapter"):
        raise ValueError("evaluate_policy: give a reference model, or a PEFT policy whose disabled adapters are the reference")
    return _adapters_disabled(policy)


@contextlib.contextmanager
def _adapters_disabled(policy) -> Iterator[PreTrainedModel]:
    with policy.disable_adapter():
        yield policy


def _pack(tokenizer, generations: Sequence[Generation], model, max_new_tokens: int):
    """Prompt + response token ids, right-padded, tokenized exactly as pipeline.decoding.generate did it."""
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    positions = getattr(model.config, "max_position_embeddings", None)
    rows, response_starts = [], []
    for generation in generations:
        prompt_ids = tokenizer(generation.prompt, add_special_tokens=False)["input_ids"] or [start_id]
        if positions is not None:
            prompt_ids = prompt_ids[-(positions - max_new_tokens):]
        rows.append(prompt_ids + list(generation.token_ids))
        response_starts.append(len(prompt_ids))
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    # response_mask[:, t] marks the prediction of token t + 1 (the logits are shifted by one).
    response_mask = torch.zeros((len(rows), width - 1), dtype=torch.float)
    for index, (row, start) in enumerate(zip(rows, response_starts)):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
        response_mask[index, start - 1 : len(row) - 1] = 1.0
    device = model.device
    return input_ids.to(device), attention_mask.to(device), response_mask.to(device)


def _next_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        model.train(was_training)
    return logits[:, :-1].float() / temperature


def _group_means(values: Sequence[float], prompts: Sequence[str], group_of: Callable[[str], str]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for value, prompt in zip(values, prompts):
        groups.setdefault(group_of(prompt), []).append(value)
    return {group: _round(_mean(members)) for group, members in sorted(groups.items())}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _stderr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _round(value: float) -> float:
    return round(value, 4) if math.isfinite(value) else value
