"""The one evaluation layer: a policy against its reference (the SFT model) and against what the reference gives
for free, on held-out prompts, in the same units for every stage, benchmark and report.

    evaluation = evaluate_policy(policy, tokenizer, prompts, reference=sft_model, gold=toy_gold_scorer,
                                 scorer=reward_model_scorer("runs/toy/reward"),
                                 sharpening_temperatures=SHARPENING_TEMPERATURES)
    evaluation.summary["policy"]["sampled"]["gold_reward"], evaluation.summary["judgement"]["beats_sharpening"]

What it measures, on each prompt:
  1. completions of the policy and of the reference, greedy and sampled at `temperature` (top-k/top-p off, so
     that the samples come from the model's own distribution), with pipeline.decoding.generate;
  2. scores of every completion: the toy world's gold reward (`gold`) and a reward model (`scorer`), both
     optional, also per group of prompts with `group_of` (e.g. the toy world's skill, toy_skill);
  3. the KL divergence of the policy from the reference per whole response, on the policy's sampled
     completions, with the log-probabilities of both models taken at the sampling temperature (a different
     temperature is the classic way to get a "negative KL"): k1, k2 and k3 of pipeline.kl summed over the
     response tokens (EOS included: stopping is a decision too), and `exact` = the exact next-token KL summed
     along the same sampled paths (by the chain rule an unbiased estimate of the sequence KL, with the
     smallest standard error of the four);
  4. win rates of the policy over the reference on the same prompt, by gold reward and by the reward model,
     for greedy and sampled completions (a tie counts one half);
  5. `traits`: the share of completions with a named property (e.g. the toy world's demonstrator habit,
     ToyWorld.traits), for the policy, the reference and every point of the frontier;
  6. the *sharpening frontier* (`sharpening_temperatures`): the reference itself sampled at lower temperatures,
     with its gold reward, reward-model score and exact KL to the reference at temperature 1. Lowering the
     temperature costs no training, so a policy has learned a preference, not a temperature, only where its
     gold beats the frontier's at the same KL (`judge`).

With `reference=None` and a PEFT policy, the reference is the policy with its adapters disabled (the SFT model,
as TRL's DPOTrainer uses it): no second copy of the model is needed. With an `accelerator` of several processes
each process measures its share of the prompts and the records are gathered, so every process returns the same
summary.

`summary` is plain JSON (metrics.json); `samples` are the completions with their scores (samples.json).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.data.toy_world import gold_reward_batch, parse_prompt
from pipeline.decoding import Generation, generate
from pipeline.kl import exact_kl, kl_estimates, sequence_kl

logger = logging.getLogger(__name__)

#: (prompts, responses, finished) -> one score per response (a list or a 1-d tensor).
Scorer = Callable[[Sequence[str], Sequence[str], Sequence[bool]], Sequence[float]]
#: (prompt, response) -> does the response have the property? None: the trait does not apply to this prompt (it is
#: left out of the share, e.g. sycophancy on a prompt without the user's guess).
Trait = Callable[[str, str], bool | None]

STRATEGIES = ("greedy", "sampled")
KL_ESTIMATORS = ("k1", "k2", "k3", "exact")
#: The reference sampled at these temperatures draws the sharpening frontier (1.0 is the reference's own samples).
SHARPENING_TEMPERATURES = (1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
#: A policy beats sharpening when its sampled gold exceeds the frontier's at its KL by at least this much: about
#: two standard errors of the difference of two gold means over 256 prompts on the toy world.
BEATS_MARGIN = 0.02


def sharpening_temperatures_field() -> Any:
    """The recipe key `sharpening_temperatures` of the stages that judge a policy, declared once."""
    return field(
        default_factory=lambda: list(SHARPENING_TEMPERATURES),
        metadata={
            "help": "temperatures at which the SFT model is sampled to draw the sharpening frontier, the free "
            "baseline a policy is judged against (1.0 = its own samples; [] skips it)"
        },
    )


def check_sharpening_temperatures(temperatures: Sequence[float]) -> None:
    if any(t <= 0 for t in temperatures):
        raise ValueError(f"key 'sharpening_temperatures': every temperature must be > 0, got {list(temperatures)}")


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
        return score(model, tokenizer, list(prompts), list(responses), batch_size=batch_size, finished=list(finished))

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
    sharpening_temperatures: Sequence[float] = (),
    accelerator: Any | None = None,
    traits: Mapping[str, Trait] | None = None,
) -> PolicyEvaluation:
    """Policy vs reference on `prompts`: scores, KL to the reference, win rates, and (with `sharpening_temperatures`)
    the sharpening frontier and the judgement against it (see the module docstring)."""
    if not prompts:
        raise ValueError("evaluate_policy needs at least one prompt")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    indexed = list(enumerate(prompts))
    if accelerator is not None and accelerator.num_processes > 1:
        indexed = indexed[accelerator.process_index :: accelerator.num_processes]
    mine = [prompt for _, prompt in indexed]
    samples: list[dict[str, Any]] = []
    frontier: list[dict[str, Any]] = []
    if mine:
        samples = _policy_records(
            policy, reference, tokenizer, mine, gold, scorer, temperature, max_new_tokens, seed, batch_size
        )
        if sharpening_temperatures:
            at_one = (
                [r for r in samples if r["model"] == "reference" and r["strategy"] == "sampled"]
                if temperature == 1.0
                else []
            )
            with _reference(policy, reference) as ref_model:
                frontier = _frontier_records(
                    ref_model,
                    tokenizer,
                    mine,
                    sharpening_temperatures,
                    at_one,
                    gold,
                    scorer,
                    max_new_tokens,
                    seed,
                    batch_size,
                )
        for record in samples + frontier:
            record["index"] = indexed[record.pop("position")][0]
        _mark_traits(samples + frontier, traits)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        samples, frontier = gather_object(samples), gather_object(frontier)
    samples.sort(key=lambda r: (r["index"], r["model"], r["strategy"]))
    summary = summarize(samples, len(prompts), temperature, max_new_tokens, seed, group_of, tuple(traits or ()))
    summary["traits"] = list(traits or ())
    if sharpening_temperatures:
        summary["sharpening"] = summarize_frontier(frontier, tuple(traits or ()))
        summary["judgement"] = judge(summary)
    return PolicyEvaluation(summary, samples)


def sharpening_frontier(
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    temperatures: Sequence[float] = SHARPENING_TEMPERATURES,
    gold: Scorer | None = None,
    scorer: Scorer | None = None,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 32,
    traits: Mapping[str, Trait] | None = None,
) -> list[dict[str, Any]]:
    """The reference sampled at each temperature: mean gold, reward-model score, trait shares and exact KL to the
    reference at temperature 1 (one point per temperature, ordered by KL). What a user gets for free, without
    training."""
    records = _frontier_records(
        reference, tokenizer, list(prompts), temperatures, [], gold, scorer, max_new_tokens, seed, batch_size
    )
    return summarize_frontier(_mark_traits(records, traits), tuple(traits or ()))


def summarize(
    samples: Sequence[dict[str, Any]],
    prompts: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    group_of: Callable[[str], str] | None = None,
    traits: Sequence[str] = (),
) -> dict[str, Any]:
    """The summary of evaluate_policy from its per-completion records (plain JSON); `traits` are averaged like
    scores."""

    def rows(model: str, strategy: str) -> list[dict[str, Any]]:
        return [r for r in samples if r["model"] == model and r["strategy"] == strategy]

    keys = [key for key in ("gold_reward", "reward_model") if samples and key in samples[0]]
    trait_keys = [name for name in traits if samples and name in samples[0]]
    summary: dict[str, Any] = {
        "prompts": prompts,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    for model in ("policy", "reference"):
        summary[model] = {}
        for strategy in STRATEGIES:
            records = rows(model, strategy)
            entry = {key: _round(_mean([r[key] for r in records])) for key in keys}
            entry.update({name: trait_share(r[name] for r in records) for name in trait_keys})
            entry["finished"] = _round(_mean([float(r["finished"]) for r in records]))
            entry["response_tokens"] = _round(_mean([float(r["tokens"]) for r in records]))
            if group_of:
                for key in keys:
                    entry[f"{key}_by_group"] = _group_means(
                        [r[key] for r in records], [r["prompt"] for r in records], group_of
                    )
            summary[model][strategy] = entry
    sampled = rows("policy", "sampled")
    summary["kl"] = {
        name: {
            "mean": _round(_mean([r[f"kl_{name}"] for r in sampled])),
            "stderr": _round(_stderr([r[f"kl_{name}"] for r in sampled])),
        }
        for name in KL_ESTIMATORS
    }
    summary["win_rate"] = {
        key: {
            strategy: _round(
                win_rate([r[key] for r in rows("policy", strategy)], [r[key] for r in rows("reference", strategy)])
            )
            for strategy in STRATEGIES
        }
        for key in keys
    }
    return summary


def judged_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's share of a judged policy that every stage writes alike: the trait shares (trait_metrics), the
    verdict against the sharpening frontier and the frontier itself."""
    metrics = trait_metrics(summary)
    if "judgement" in summary:
        metrics.update(
            beats_sharpening=summary["judgement"]["beats_sharpening"],
            judgement=summary["judgement"],
            sharpening=summary["sharpening"],
        )
    return metrics


def trait_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's `<trait>_before` (the reference) and `<trait>_after` (the policy), greedy and sampled: e.g. the
    share of responses with the toy world's demonstrator habit."""
    return {
        f"{name}_{when}": {strategy: summary[model][strategy].get(name) for strategy in STRATEGIES}
        for name in summary.get("traits", [])
        for when, model in (("before", "reference"), ("after", "policy"))
    }


def summarize_frontier(records: Sequence[dict[str, Any]], traits: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One point per temperature: means (and the KL's standard error) over the prompts, ordered by KL."""
    points = []
    for temperature in sorted({r["temperature"] for r in records}, reverse=True):
        group = [r for r in records if r["temperature"] == temperature]
        point: dict[str, Any] = {
            "temperature": temperature,
            "kl_exact": _round(_mean([r["kl_exact"] for r in group])),
            "kl_stderr": _round(_stderr([r["kl_exact"] for r in group])),
        }
        for key in ("gold_reward", "reward_model"):
            if key in group[0]:
                point[key] = _round(_mean([r[key] for r in group]))
        point.update({name: trait_share(r[name] for r in group) for name in traits if name in group[0]})
        point["finished"] = _round(_mean([float(r["finished"]) for r in group]))
        points.append(point)
    return points


# --- the frontier and the judgement ------------------------------------------------------------------------------


def frontier_gold_at(frontier: Sequence[dict[str, Any]], kl: float, key: str = "gold_reward") -> float | None:
    """The best gold the frontier reaches at a KL of at most `kl` (its upper envelope, linear between points).

    Beyond the frontier's last point it stays at the best value reached: a policy that spends more KL than the
    lowest temperature measured must still beat what that temperature gives.
    """
    points = sorted(
        (p["kl_exact"], p[key]) for p in frontier if p.get(key) is not None and math.isfinite(p["kl_exact"])
    )
    if not points:
        return None
    envelope, best = [], -math.inf
    for x, y in points:
        best = max(best, y)
        envelope.append((x, best))
    if kl <= envelope[0][0]:
        return envelope[0][1]
    for (x0, y0), (x1, y1) in zip(envelope, envelope[1:]):
        if kl <= x1:
            return y0 + (y1 - y0) * (kl - x0) / (x1 - x0) if x1 > x0 else y1
    return envelope[-1][1]


def judge(summary: dict[str, Any], margin: float = BEATS_MARGIN) -> dict[str, Any]:
    """Does the policy beat sharpening? Its sampled gold must exceed the frontier's at its exact KL by `margin`,
    and its greedy gold must not fall below the reference's. Returns the numbers behind the verdict."""
    frontier = summary.get("sharpening") or []
    if not frontier or "gold_reward" not in summary["policy"]["sampled"]:
        return {"beats_sharpening": None, "reason": "no gold reward or no sharpening frontier measured"}
    kl = summary["kl"]["exact"]["mean"]
    sampled, greedy = summary["policy"]["sampled"]["gold_reward"], summary["policy"]["greedy"]["gold_reward"]
    reference_greedy = summary["reference"]["greedy"]["gold_reward"]
    at_kl = frontier_gold_at(frontier, kl)
    over = sampled - at_kl
    greedy_kept = greedy >= reference_greedy
    if over >= margin and greedy_kept:
        reason = (
            f"sampled gold {sampled:.3f} beats the frontier's {at_kl:.3f} at {kl:.3f} nats, and greedy gold did not "
            "fall"
        )
    elif over < margin:
        reason = (
            f"sampled gold {sampled:.3f} against the frontier's {at_kl:.3f} at the same KL ({kl:.3f} nats): not "
            f"{margin} above it"
        )
    else:
        reason = f"beats the frontier at its KL, but greedy gold fell {reference_greedy:.3f} -> {greedy:.3f}"
    return {
        "beats_sharpening": bool(over >= margin and greedy_kept),
        "kl_exact": kl,
        "gold_sampled": sampled,
        "frontier_gold_at_kl": _round(at_kl),
        "margin_over_frontier": _round(over),
        "gold_greedy": greedy,
        "reference_gold_greedy": reference_greedy,
        "greedy_not_below_reference": greedy_kept,
        "required_margin": margin,
        "reason": reason,
    }


def win_rate(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float:
    """Share of prompts where the policy's completion scores higher than the reference's; ties count one half."""
    if len(policy_scores) != len(reference_scores) or not policy_scores:
        raise ValueError("win_rate needs two equally long, non-empty lists of scores")
    points = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores)]
    return sum(points) / len(points)


# --- measuring --------------------------------------------------------------------------------------------------


def trait_value(test: Trait, prompt: str, response: str) -> float | None:
    """1.0 or 0.0: does the response have the trait; None where the trait does not apply to the prompt."""
    value = test(prompt, response)
    return None if value is None else float(bool(value))


def trait_share(values: Iterable[float | None]) -> float | None:
    """The share of responses with a trait among those it applies to (None if it applies to none)."""
    applicable = [value for value in values if value is not None]
    return _round(_mean(applicable)) if applicable else None


def _mark_traits(records: list[dict[str, Any]], traits: Mapping[str, Trait] | None) -> list[dict[str, Any]]:
    """Each record gains 1.0, 0.0 or None per trait (trait_value), averaged later with trait_share."""
    for record in records:
        record.update(
            {name: trait_value(test, record["prompt"], record["text"]) for name, test in (traits or {}).items()}
        )
    return records


def _sampling(temperature: float) -> dict[str, Any]:
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def _scores(generations: Sequence[Generation], gold: Scorer | None, scorer: Scorer | None) -> dict[str, list[float]]:
    prompts, texts, finished = (
        [g.prompt for g in generations],
        [g.text for g in generations],
        [g.finished for g in generations],
    )
    scores = {}
    if gold is not None:
        scores["gold_reward"] = [float(v) for v in gold(prompts, texts, finished)]
    if scorer is not None:
        scores["reward_model"] = [float(v) for v in scorer(prompts, texts, finished)]
    return scores


def _records(
    model: str, strategy: str, generations: Sequence[Generation], scores: dict[str, list[float]]
) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "strategy": strategy,
            "position": i,
            "prompt": g.prompt,
            "text": g.text,
            "finished": g.finished,
            "tokens": len(g.token_ids),
            **{key: _round(values[i]) for key, values in scores.items()},
        }
        for i, g in enumerate(generations)
    ]


def _policy_records(
    policy, reference, tokenizer, prompts, gold, scorer, temperature, max_new_tokens, seed, batch_size
) -> list[dict[str, Any]]:
    strategies = {"greedy": "greedy", "sampled": _sampling(temperature)}
    records: list[dict[str, Any]] = []
    for name, model_context in (
        ("policy", contextlib.nullcontext(policy)),
        ("reference", _reference(policy, reference)),
    ):
        with model_context as model:
            for strategy, spec in strategies.items():
                batch = generate(
                    model, tokenizer, prompts, spec, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size
                )
                rows = _records(name, strategy, batch, _scores(batch, gold, scorer))
                if name == "policy" and strategy == "sampled":
                    kls = sequence_kls(policy, reference, tokenizer, batch, temperature, max_new_tokens, batch_size)
                    for i, row in enumerate(rows):
                        row.update({f"kl_{k}": _round(values[i]) for k, values in kls.items()})
                records += rows
    return records


def _frontier_records(
    reference, tokenizer, prompts, temperatures, at_one, gold, scorer, max_new_tokens, seed, batch_size
) -> list[dict[str, Any]]:
    """The reference's samples at each temperature, scored, with the exact KL of the tempered reference to itself.

    `at_one`: the reference's records sampled at temperature 1 with the same prompts and seed, if already made (their
    KL to the reference at temperature 1 is 0)."""
    records = []
    for temperature in temperatures:
        if temperature == 1.0 and at_one:
            records += [
                {**{k: v for k, v in row.items() if not k.startswith("kl_")}, "temperature": 1.0, "kl_exact": 0.0}
                for row in at_one
            ]
            continue
        batch = generate(
            reference,
            tokenizer,
            prompts,
            _sampling(temperature),
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
        )
        kls = tempered_kls(reference, tokenizer, batch, temperature, max_new_tokens, batch_size)
        for row, kl in zip(
            _records("reference", f"temperature_{temperature}", batch, _scores(batch, gold, scorer)), kls
        ):
            row.update({"temperature": temperature, "kl_exact": _round(kl)})
            records.append(row)
    return records


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
        input_ids, attention_mask, response_mask = _pack(
            tokenizer, generations[start : start + batch_size], policy, max_new_tokens
        )
        policy_logits = _next_token_logits(policy, input_ids, attention_mask) / temperature
        with _reference(policy, reference) as ref_model:
            ref_logits = _next_token_logits(ref_model, input_ids, attention_mask) / temperature
        targets = input_ids[:, 1:].unsqueeze(-1)
        logprobs = policy_logits.log_softmax(-1).gather(-1, targets).squeeze(-1)
        ref_logprobs = ref_logits.log_softmax(-1).gather(-1, targets).squeeze(-1)
        per_token = {**kl_estimates(logprobs, ref_logprobs), "exact": exact_kl(policy_logits, ref_logits)}
        for name, values in per_token.items():
            kls[name] += sequence_kl(values, response_mask).tolist()
    return kls


@torch.no_grad()
def tempered_kls(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generations: Sequence[Generation],
    temperature: float,
    max_new_tokens: int = 48,
    batch_size: int = 32,
) -> list[float]:
    """KL(model at `temperature` ‖ model at 1) of each whole response sampled at `temperature`, exactly: the
    full next-token KL summed along the response (one forward pass; the two distributions share the logits)."""
    kls: list[float] = []
    for start in range(0, len(generations), batch_size):
        input_ids, attention_mask, response_mask = _pack(
            tokenizer, generations[start : start + batch_size], model, max_new_tokens
        )
        logits = _next_token_logits(model, input_ids, attention_mask)
        kls += sequence_kl(exact_kl(logits / temperature, logits), response_mask).tolist()
    return kls


# --- helpers ------------------------------------------------------------------------------------------------


def _reference(policy: PreTrainedModel, reference: PreTrainedModel | None) -> contextlib.AbstractContextManager:
    """The reference model to use inside a `with`: the given one, or the PEFT policy with adapters disabled."""
    if reference is not None:
        return contextlib.nullcontext(reference)
    if not hasattr(policy, "disable_adapter"):
        raise ValueError(
            "evaluate_policy: give a reference model, or a PEFT policy whose disabled adapters are the reference"
        )
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
            prompt_ids = prompt_ids[-(positions - max_new_tokens) :]
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


def _next_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        model.train(was_training)
    return logits[:, :-1].float()


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
