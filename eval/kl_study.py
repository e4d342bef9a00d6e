"""The KL-estimator study: how good are k1, k2, k3 (pipeline/kl.py) as estimates of KL(π‖π_ref)?

What "exact" means for sequences. For a prompt x and a response y = (y_1 … y_T) sampled from π, the
chain rule gives the sequence-level KL as an expectation of per-position KLs along π's own trajectories:

    KL(π(·|x) ‖ π_ref(·|x)) = E_{y~π} [ Σ_t KL( π(·|x, y_<t) ‖ π_ref(·|x, y_<t) ) ]

The inner sum is computed **exactly**, over the full vocabulary, at every position of each sampled
trajectory (pipeline.kl.exact_kl on both models' logits). The outer expectation is over |V|^T possible
responses and cannot be enumerated, so the reference value ("truth") is the mean of these per-trajectory
exact sums over all M sampled responses, with its standard error. That estimator is Rao–Blackwellised
(it replaces each sampled token's log-ratio by its conditional expectation), so it is far less noisy
than any k estimate from the same samples.

The k estimators see only the sampled tokens: per token, with r = π_ref(y_t)/π(y_t), k1 = −log r,
k2 = ½(log r)², k3 = (r − 1) − log r, summed over the response. Given the prefix, E[k1_t] = E[k3_t] =
KL_t exactly, while E[k2_t] ≠ KL_t. So the study measures bias **paired** with the exact sum on the same
trajectories, Σ_t (k_t − KL_t), whose mean is 0 for k1 and k3 up to sampling noise and not for k2 — a
test that does not depend on the trajectory noise of the truth. Then, as the number n of sampled
responses grows, the bias and the standard deviation of the n-sample mean (bootstrap resamples of the M
responses): the bias does not shrink with n, the standard deviation falls like 1/√n.

Responses are sampled at temperature 1 with no top-k/top-p (pipeline.decoding's `temperature_1.0`), so
they come from π itself; any other sampling setting makes k1 biased (the "negative KL" bug). The length
limit makes this the KL of the length-limited processes, which is what PPO penalises.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from eval.scoring import Scores, score
from pipeline.decoding import generate
from pipeline.kl import ESTIMATORS, kl_estimates, sequence_kl

logger = logging.getLogger(__name__)

SAMPLE_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def sample_and_score(
    policy, ref, tokenizer, prompts: list[str], samples_per_prompt: int, max_new_tokens: int, seed: int
) -> Scores:
    """Responses sampled from `policy` at temperature 1 (each prompt `samples_per_prompt` times), scored
    under both models with the exact per-position KL."""
    repeated = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    generations = generate(
        policy,
        tokenizer,
        repeated,
        strategy="temperature_1.0",
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=64,
    )
    return score(policy, tokenizer, repeated, [g.token_ids for g in generations], ref_model=ref)


def per_sequence(scores: Scores) -> dict[str, np.ndarray]:
    """Per response: the k1/k2/k3 sums over its tokens and the exact sum of per-position KLs (`exact`)."""
    if scores.ref_logprobs is None or scores.exact_kl is None:
        raise ValueError("per_sequence needs scores against a reference model")
    estimates = kl_estimates(scores.logprobs, scores.ref_logprobs)
    sums = {name: sequence_kl(value, scores.mask).double().numpy() for name, value in estimates.items()}
    sums["exact"] = sequence_kl(scores.exact_kl, scores.mask).double().numpy()
    return sums


def per_token(scores: Scores) -> dict[str, np.ndarray]:
    """Every real response token's k1/k2/k3 and exact KL at its position (flat arrays)."""
    mask = scores.mask.bool()
    values = {
        name: value[mask].double().numpy()
        for name, value in kl_estimates(scores.logprobs, scores.ref_logprobs).items()
    }
    values["exact"] = scores.exact_kl[mask].double().numpy()
    return values


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def study(
    sequences: dict[str, np.ndarray],
    tokens: dict[str, np.ndarray] | None = None,
    sample_sizes: tuple[int, ...] = SAMPLE_SIZES,
    resamples: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """Bias and spread of each estimator (and of the exact per-trajectory sum) as the sample count grows."""
    exact = sequences["exact"]
    m = len(exact)
    truth, truth_se = _mean_se(exact)
    rng = np.random.default_rng(seed)
    sizes = [n for n in sample_sizes if n <= max(1, m // 2)]
    # Bootstrap (with replacement): the spread of an n-sample mean from the same distribution as the M samples.
    subsets = {n: rng.integers(0, m, size=(resamples, n)) for n in sizes}
    result: dict[str, Any] = {
        "n_sequences": m,
        "truth": truth,
        "truth_se": truth_se,
        "sample_sizes": sizes,
        "estimators": {},
    }
    for name in (*ESTIMATORS, "exact"):
        values = sequences[name]
        paired_bias, paired_se = _mean_se(values - exact)
        row: dict[str, Any] = {
            "mean": float(values.mean()),
            "std_per_sequence": float(values.std(ddof=1)) if m > 1 else math.nan,
            "paired_bias": paired_bias,
            "paired_bias_se": paired_se,
            "share_negative": float((values < 0).mean()),
            "by_n": {},
        }
        for n, index in subsets.items():
            means = values[index].mean(axis=1)
            row["by_n"][n] = {
                "bias": float(means.mean() - truth),
                "std": float(means.std(ddof=1)),
                "rmse": float(np.sqrt(((means - truth) ** 2).mean())),
            }
        if tokens is not None:
            row["per_token_bias"], row["per_token_bias_se"] = _mean_se(tokens[name] - tokens["exact"])
            row["per_token_std"] = float(tokens[name].std(ddof=1))
        result["estimators"][name] = row
    if tokens is not None:
        result["n_tokens"] = int(len(tokens["exact"]))
        result["per_token_exact_mean"] = float(tokens["exact"].mean())
    return result


def run(
    policy, ref, tokenizer, prompts: list[str], samples_per_prompt: int = 4, max_new_tokens: int = 24, seed: int = 0
) -> dict[str, Any]:
    scores = sample_and_score(policy, ref, tokenizer, prompts, samples_per_prompt, max_new_tokens, seed)
    result = study(per_sequence(scores), per_token(scores), seed=seed)
    result["mean_response_tokens"] = float(scores.lengths.float().mean())
    return result


@torch.inference_mode()
def exact_kl_from_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) of explicit categorical distributions along the last dimension (for checks by hand)."""
    return (p * (p.log() - q.log())).sum(dim=-1)
