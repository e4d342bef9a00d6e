"""The KL estimators against exact KL on small categorical distributions."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.kl import exact_kl, kl_estimates, sequence_kl


def test_exact_kl_matches_a_hand_computed_case():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.5, 0.25])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # sum p log(p/q) = 0.25 ln 2
    assert exact_kl(p.log(), q.log()).item() == pytest.approx(expected, abs=1e-6)
    assert exact_kl(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_k1_and_k3_are_unbiased_k2_is_close_and_k3_is_never_negative():
    torch.manual_seed(0)
    # Nearby distributions, as a policy and its reference are during RLHF (KL ≈ 0.02 nats per token).
    logits = torch.randn(8)
    ref_logits = logits + 0.2 * torch.randn(8)
    p, p_ref = logits.softmax(-1), ref_logits.softmax(-1)
    truth = exact_kl(logits, ref_logits).item()
    samples = torch.multinomial(p, 400_000, replacement=True)
    estimates = kl_estimates(p.log()[samples], p_ref.log()[samples])
    for name in ("k1", "k3"):  # unbiased: within 4 standard errors of the exact value
        standard_error = estimates[name].std().item() / math.sqrt(len(samples))
        assert abs(estimates[name].mean().item() - truth) < 4 * standard_error, name
    assert estimates["k2"].mean().item() == pytest.approx(truth, rel=0.2)  # biased, but in the neighbourhood
    assert (estimates["k3"] >= 0).all() and (estimates["k2"] >= 0).all()
    assert (estimates["k1"] < 0).any()  # single-sample k1 can be negative
    assert estimates["k3"].std() < 0.5 * estimates["k1"].std()  # the reason to prefer k3 for nearby models


def test_identical_models_give_zero_for_every_estimator():
    logprobs = torch.log(torch.tensor([0.2, 0.7, 0.1]))
    for value in kl_estimates(logprobs, logprobs.clone()).values():
        assert torch.allclose(value, torch.zeros(3))


def test_sequence_kl_ignores_padding():
    per_token = torch.tensor([[0.1, 0.2, 5.0], [0.3, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(sequence_kl(per_token, mask), torch.tensor([0.3, 0.3]))
