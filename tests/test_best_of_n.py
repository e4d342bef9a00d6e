"""Best-of-N: the exact expectation over N-subsets, the table's invariants, RM-vs-gold measures, and the
command line on tiny real models."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import run_module

from pipeline.best_of_n import (
    best_of_n_table,
    expected_best,
    pick_probabilities,
    plug_in_kl,
    powers_of_two,
    rm_versus_gold,
)
from pipeline.errors import UserError
from pipeline.reward_model import pairwise_calibration, spearman

torch.set_num_threads(1)


def brute_force_best(select_by: np.ndarray, values: np.ndarray, subset: int) -> float:
    """Average over every N-subset of every row of the value of the subset's highest-scoring item."""
    means = []
    for scores, row in zip(select_by, values):
        picks = [row[max(c, key=lambda i: (scores[i], i))] for c in itertools.combinations(range(len(row)), subset)]
        means.append(np.mean(picks))
    return float(np.mean(means))


def test_expected_best_of_n_equals_the_average_over_all_subsets():
    rng = np.random.default_rng(0)
    rewards, gold = rng.normal(size=(3, 8)), rng.uniform(size=(3, 8))
    for n in (1, 2, 3, 5, 8):
        assert pick_probabilities(8, n).sum() == pytest.approx(1.0)
        assert expected_best(rewards, gold, n) == pytest.approx(brute_force_best(rewards, gold, n))


def test_table_invariants():
    rng = np.random.default_rng(1)
    gold = rng.uniform(size=(4, 16))
    rewards = gold + rng.normal(scale=0.3, size=gold.shape)  # a noisy reward model
    table = best_of_n_table(rewards, gold)
    assert [row["n"] for row in table] == [1, 2, 4, 8, 16]
    assert table[0]["gold"] == pytest.approx(gold.mean(), abs=1e-4) and table[0]["kl_nats"] == 0.0
    assert table[-1]["gold"] == pytest.approx(np.mean(gold[np.arange(4), rewards.argmax(1)]), abs=1e-4)
    assert all(a["reward"] <= b["reward"] for a, b in zip(table, table[1:]))  # the RM's pick only improves for the RM
    assert all(row["gold_oracle"] >= row["gold"] - 1e-9 for row in table)
    assert table[-1]["kl_bound_nats"] == pytest.approx(np.log(16) - 15 / 16, abs=1e-4)
    assert all(0.0 <= row["kl_nats"] <= row["kl_bound_nats"] + 1e-3 for row in table)
    # A trait (0/1 per sample) is the expected share of picks that have it: here the RM prefers flagged samples.
    flagged = (rewards > np.median(rewards)).astype(float)
    shares = [row["flagged"] for row in best_of_n_table(rewards, gold, traits={"flagged": flagged})]
    assert shares[0] == pytest.approx(flagged.mean(), abs=1e-4) and shares[-1] == pytest.approx(1.0)


def test_plug_in_kl_counts_repeated_samples_once_and_stays_far_below_the_bound_for_a_peaked_policy():
    # A 0.7/0.3 policy whose likelier answer is the better one: Best-of-16 almost always returns it, KL = log(1/0.7).
    texts = [["right"] * 7 + ["wrong"] * 3]
    rewards = np.array([[1.0] * 7 + [0.0] * 3])
    assert plug_in_kl(rewards, 16, texts) == pytest.approx(np.log(1 / 0.7), abs=1e-3)
    assert plug_in_kl(rewards, 1, texts) == pytest.approx(0.0, abs=1e-12)
    # All samples distinct: Best-of-n picks the top one with probability 1 − ((n−1)/n)^N ... summed exactly.
    distinct = np.arange(8.0)[None, :]
    q = (np.arange(1, 9) / 8) ** 4 - (np.arange(0, 8) / 8) ** 4
    assert plug_in_kl(distinct, 4) == pytest.approx(float(np.sum(q * np.log(8 * q))), abs=1e-9)
    assert plug_in_kl(distinct, 4) < np.log(4) - 3 / 4


def test_a_perfect_reward_model_tracks_gold_perfectly():
    gold = np.array([[0.3, 1.0, 0.0, 0.7], [0.3, 0.3, 0.3, 0.3]])  # 2nd prompt: no preference among samples
    result = rm_versus_gold(2.0 * gold, gold)
    assert result["rm_gold_spearman"] == pytest.approx(1.0) and result[
        "rm_gold_spearman_within_prompt"
    ] == pytest.approx(1.0)
    assert result["prompts_with_varied_gold"] == 1
    assert result["calibration_on_samples"]["pairs"] == 6 and result["calibration_on_samples"]["accuracy"] == 1.0


def test_calibration_bins_and_ece():
    # Confidence 0.73 (margin 1) on 4 pairs, 3 ordered right: the bin shows 0.75 right, ECE = |0.731 − 0.75|.
    calibration = pairwise_calibration([1.0, 1.0, 1.0, -1.0], [True, True, True, True], bins=5)
    row = next(row for row in calibration["bins"] if row["pairs"])
    assert (
        row["pairs"] == 4 and row["share_right"] == 0.75 and row["mean_confidence"] == pytest.approx(0.7311, abs=1e-4)
    )
    assert calibration["ece"] == pytest.approx(abs(0.7311 - 0.75), abs=1e-4)
    # The order a pair is listed in does not matter.
    assert pairwise_calibration([-1.0, 2.0], [False, True]) == pairwise_calibration([1.0, -2.0], [True, False])


def test_spearman_handles_ties():
    assert spearman([1, 2, 2, 3], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_n_must_be_a_power_of_two():
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(UserError, match="power of 2"):
        powers_of_two(48)


def test_command_line_on_tiny_models(tmp_path):
    """A tiny random policy and reward model: the JSON has the curve, the PNG is written."""
    from test_reward import save_tiny_gpt2
    from transformers import GPT2ForSequenceClassification

    policy = save_tiny_gpt2(tmp_path / "policy")
    reward_dir = tmp_path / "reward"
    rm = GPT2ForSequenceClassification.from_pretrained(policy, num_labels=1)
    rm.save_pretrained(reward_dir)
    (reward_dir / "tokenizer.json").write_bytes((policy / "tokenizer.json").read_bytes())
    (reward_dir / "tokenizer_config.json").write_bytes((policy / "tokenizer_config.json").read_bytes())
    output = tmp_path / "bon" / "result.json"
    result = run_module(
        "eval.best_of_n",
        "--policy",
        str(policy),
        "--reward_model",
        str(reward_dir),
        "--num_prompts",
        "3",
        "--n_max",
        "8",
        "--max_new_tokens",
        "6",
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(output.read_text())
    assert [row["n"] for row in data["table"]] == [1, 2, 4, 8] and data["prompts"] == 3
    assert 0.0 <= data["policy_mean_gold"] <= 1.0 and data["table"][0]["gold"] == pytest.approx(
        data["policy_mean_gold"], abs=1e-3
    )
    assert output.with_suffix(".png").is_file()
    assert "| N | KL (nats, plug-in) | KL bound | RM reward | gold reward | gold oracle |" in result.stdout

    bad = run_module("eval.best_of_n", "--policy", str(policy), "--reward_model", str(reward_dir), "--n_max", "6")
    assert bad.returncode == 2 and "n_max must be a power of 2" in bad.stderr and "Traceback" not in bad.stderr


def test_kl_regularised_optimum_is_the_softmax_tilt_of_the_samples():
    from pipeline.best_of_n import kl_regularised_table

    rewards = np.array([[0.0, 1.0], [2.0, 2.0]])
    gold = np.array([[0.0, 1.0], [1.0, 0.0]])
    small, large = kl_regularised_table(rewards, gold, betas=(1e-3, 1e3))
    # β → 0: the RM's best sample (Best-of-n; a tie keeps both); β → ∞: the policy itself, at KL 0.
    assert small["reward"] == pytest.approx(1.5) and small["gold"] == pytest.approx(0.75)
    assert small["kl_nats"] == pytest.approx(np.log(2) / 2, abs=1e-3)
    assert large["reward"] == pytest.approx(rewards.mean(), abs=1e-3) and large["kl_nats"] == pytest.approx(
        0.0, abs=1e-5
    )
    (one,) = kl_regularised_table(rewards, gold, betas=(1.0,))
    w = np.exp(1.0) / (1 + np.exp(1.0))  # weight of the better response of prompt 0
    assert one["gold"] == pytest.approx((w + 0.5) / 2, abs=1e-4)
    assert one["kl_nats"] == pytest.approx((w * np.log(2 * w) + (1 - w) * np.log(2 * (1 - w))) / 2, abs=1e-4)
    assert one["gold_oracle"] >= one["gold"]  # tilting by the truth does at least as well on the truth here
