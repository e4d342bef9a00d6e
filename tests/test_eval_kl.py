"""The report's KL-estimator study against hand-computed KL: scoring of two models with known next-token
distributions, the sequence-level sums, and the bias/spread statistics of k1/k2/k3."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eval import kl_study
from eval.scoring import score
from pipeline.kl import kl_estimates
from pipeline.tokenization import train_tokenizer


class FixedLM(torch.nn.Module):
    """A language model whose next-token distribution is the same at every position: KL is known by hand."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.register_buffer("log_probs", torch.tensor(probs).log())

    @property
    def device(self) -> torch.device:
        return self.log_probs.device

    def get_output_embeddings(self):
        return SimpleNamespace(weight=torch.zeros(len(self.log_probs), 1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1).clone())


@pytest.fixture(scope="module")
def tokenizer():
    # Vocabulary: <|endoftext|>=0, <|pad|>=1, <|unk|>=2, a=3, b=4.
    return train_tokenizer(["ab", "ba"], kind="char")


P = [0.1, 0.1, 0.1, 0.35, 0.35]  # the policy
Q = [0.2, 0.2, 0.2, 0.2, 0.2]  # the reference
# KL(P‖Q) = Σ p ln(p/q) = 3 · 0.1 · ln(0.5) + 2 · 0.35 · ln(1.75), by hand.
KL_PQ = 0.3 * math.log(0.5) + 0.7 * math.log(1.75)


def test_exact_kl_along_responses_matches_the_hand_computed_value(tokenizer):
    assert len(tokenizer) == 5 and tokenizer.convert_tokens_to_ids(["a", "b"]) == [3, 4]
    a, b, eos = 3, 4, tokenizer.eos_token_id
    responses = [[a, b, eos], [b], [a, a, a, a]]  # different lengths: padding must not count
    scores = score(FixedLM(P), tokenizer, ["ab", "b", "ba"], responses, ref_model=FixedLM(Q))
    assert scores.mask.sum(dim=-1).tolist() == [3, 1, 4]
    per_position = scores.exact_kl[scores.mask.bool()]
    assert torch.allclose(per_position, torch.full_like(per_position, KL_PQ), atol=1e-6)

    sequences = kl_study.per_sequence(scores)
    assert sequences["exact"] == pytest.approx([3 * KL_PQ, KL_PQ, 4 * KL_PQ], abs=1e-5)
    # k1 of response [a, b, eos] = ln(.35/.2) + ln(.35/.2) + ln(.1/.2); k3 per token = (r − 1) − ln r, r = q/p.
    assert sequences["k1"][0] == pytest.approx(2 * math.log(1.75) + math.log(0.5), abs=1e-5)
    k3 = lambda p, q: (q / p - 1) - math.log(q / p)  # noqa: E731
    assert sequences["k3"][2] == pytest.approx(4 * k3(0.35, 0.2), abs=1e-5)
    assert sequences["k2"][1] == pytest.approx(0.5 * math.log(0.35 / 0.2) ** 2, abs=1e-5)


def test_a_model_against_itself_has_zero_kl_by_every_estimator(tokenizer):
    scores = score(FixedLM(P), tokenizer, ["a"], [[3, 4, 0]], ref_model=FixedLM(P))
    for name, values in kl_study.per_sequence(scores).items():
        assert values == pytest.approx([0.0], abs=1e-6), name


def sampled_sequences(p: list[float], q: list[float], n_sequences: int, length: int, seed: int):
    """Per-sequence k1/k2/k3 and exact sums for tokens drawn from p (the setting of the study, without models)."""
    generator = torch.Generator().manual_seed(seed)
    p_t, q_t = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    tokens = torch.multinomial(p_t, n_sequences * length, replacement=True, generator=generator).view(
        n_sequences, length
    )
    estimates = kl_estimates(p_t.log()[tokens], q_t.log()[tokens])
    exact = float((p_t * (p_t.log() - q_t.log())).sum())
    sequences = {name: value.sum(dim=1).numpy() for name, value in estimates.items()}
    sequences["exact"] = np.full(n_sequences, exact * length)
    return sequences, exact


def test_study_finds_k1_and_k3_unbiased_and_k2_biased_by_its_analytic_amount():
    p = [0.05, 0.05, 0.1, 0.2, 0.6]
    q = [0.2, 0.2, 0.2, 0.2, 0.2]
    length = 4
    sequences, exact = sampled_sequences(p, q, n_sequences=4000, length=length, seed=0)
    result = kl_study.study(sequences, sample_sizes=(1, 4, 16), resamples=200, seed=0)
    assert result["truth"] == pytest.approx(length * exact)
    rows = result["estimators"]
    for name in ("k1", "k3"):
        assert abs(rows[name]["paired_bias"]) < 4 * rows[name]["paired_bias_se"], name
    # E_p[k2] − KL per token, computed from the distributions: the bias the study must find for k2.
    k2_bias = sum(pi * 0.5 * math.log(qi / pi) ** 2 for pi, qi in zip(p, q)) - exact
    assert abs(k2_bias) > 0.02  # 0.031 nats per token here
    assert rows["k2"]["paired_bias"] == pytest.approx(length * k2_bias, abs=4 * rows["k2"]["paired_bias_se"])
    assert abs(rows["k2"]["paired_bias"]) > 4 * rows["k2"]["paired_bias_se"]  # the study can tell it is biased
    assert rows["k1"]["share_negative"] > 0 and rows["k3"]["share_negative"] == 0
    # The spread of an n-sample mean falls like 1/√n.
    std = {n: rows["k1"]["by_n"][n]["std"] for n in (1, 4, 16)}
    assert std[4] == pytest.approx(std[1] / 2, rel=0.25) and std[16] == pytest.approx(std[1] / 4, rel=0.25)


def test_exact_kl_from_explicit_probabilities():
    p, q = torch.tensor(P), torch.tensor(Q)
    assert kl_study.exact_kl_from_probs(p, q).item() == pytest.approx(KL_PQ, abs=1e-6)
