"""Best-of-N with a reward model: sample N responses, keep the one the reward model scores highest. The free
baseline of every reward model (no training), and the classic over-optimisation picture (Gao et al. 2022).

For each prompt the policy (the SFT model) samples `n_max` responses once; the reward model scores them, and on
the toy world so does the gold reward. For N = 1, 2, 4, ..., n_max the table gives the expected RM reward and
gold reward of the response the RM picks out of N samples: the exact expectation over all N-subsets of the
n_max samples (with the samples of a prompt sorted by RM score ascending, the i-th is the best of a random
N-subset with probability C(i−1, N−1) / C(n_max, N): the unbiased estimator of WebGPT, Nakano et al. 2021).
The gold "oracle" column picks by the gold reward instead: the ceiling for a perfect reward model.

KL(best-of-N ‖ policy), the x-axis of Gao et al., is given two ways:
  * `kl_nats`: the plug-in exact KL of the Best-of-N distribution over the *distinct* samples of each prompt.
    With p̂ the empirical distribution of the samples (a response drawn k times has mass k/n_max) and the
    distinct responses sorted by RM score, the best of N i.i.d. draws from p̂ is response j with probability
    q_j = F_j^N − F_{j−1}^N (F the cumulative mass), and KL = Σ q_j log(q_j / p̂_j). For a peaked policy, whose
    samples repeat, this is far below the bound (a 0.7/0.3 policy: Best-of-16 has KL 0.36, the bound 1.84).
    Like any plug-in estimate it cannot see responses the n_max samples missed: at N near n_max it is low.
  * `kl_bound_nats`: the analytic log N − (N−1)/N, exact only when no two samples are equal; an upper bound.

The KL-regularised optimum π* ∝ π·exp(r/β) of PPO's objective is estimated on the same samples
(`kl_regularised_table`). On the toy world the samples also measure how well the RM tracks the truth on the
policy's own distribution: Pearson and Spearman correlation of RM score and gold reward (pooled, and Spearman
within each prompt, which is what picking the best of N relies on), and the calibration of σ(r_a − r_b)
against the gold preference on every pair of distinct responses to one prompt whose gold rewards differ.

Responses are scored as the RM was trained: prompt + response + EOS, where a sample cut by the length limit
gets no EOS (see pipeline/reward_model.py). Written here: no library computes these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.decoding import generate
from pipeline.errors import UserError
from pipeline.policy_eval import BEATS_MARGIN, Trait, frontier_gold_at, trait_value
from pipeline.reward_model import pairwise_calibration, pearson, score, spearman


def powers_of_two(n_max: int) -> list[int]:
    if n_max < 1 or n_max & (n_max - 1):
        raise UserError(f"n_max must be a power of 2 (1, 2, 4, ..., 64), got {n_max}")
    return [2**k for k in range(int(math.log2(n_max)) + 1)]


def pick_probabilities(n: int, subset: int) -> np.ndarray:
    """P(the i-th smallest of n items is the largest of a uniformly random `subset`-subset), i = 1..n."""
    total = math.comb(n, subset)
    return np.array([math.comb(i - 1, subset - 1) / total for i in range(1, n + 1)])


def expected_best(select_by: np.ndarray, values: np.ndarray, subset: int) -> float:
    """E[value of the item with the highest `select_by` among `subset` random items], rows averaged.

    Both arrays are (prompts, samples). Ties in `select_by` are broken by sample order (they occur for
    repeated samples, whose values are equal too).
    """
    probabilities = pick_probabilities(select_by.shape[1], subset)
    order = np.argsort(select_by, axis=1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=1)
    return float((ranked * probabilities).sum(axis=1).mean())


def plug_in_kl(rewards: np.ndarray, n: int, texts: Sequence[Sequence[str]] | None = None) -> float:
    """KL(best-of-n ‖ policy) of the plug-in Best-of-N distribution over each row's distinct samples, rows averaged.

    Samples are the same response when their texts are equal (or, without texts, their RM scores): identical texts
    get identical scores, so they form one atom of the empirical distribution p̂ with mass count / samples.
    """
    kls = []
    for row, row_texts in zip(rewards, texts if texts is not None else rewards):
        atoms: dict[Any, list[float]] = {}
        for value, key in zip(row, row_texts):
            atoms.setdefault(key, [float(value), 0.0])[1] += 1.0
        ranked = sorted(atoms.values())  # by RM score, ascending
        mass = np.array([count for _, count in ranked]) / len(row)
        cumulative = np.cumsum(mass)
        q = cumulative**n - np.concatenate([[0.0], cumulative[:-1]]) ** n
        kls.append(float(np.sum(np.where(q > 0, q * np.log(np.maximum(q, 1e-300) / mass), 0.0))))
    return float(np.mean(kls))


def best_of_n_table(
    rewards: np.ndarray,
    gold: np.ndarray | None,
    texts: Sequence[Sequence[str]] | None = None,
    traits: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, float]]:
    """One row per N: expected RM reward and gold reward of the RM's pick, the gold oracle, the KL (plug-in and bound),
    and for each trait (0/1 per sample; NaN on the prompts it does not apply to) the expected share of picks that
    have it."""
    rows = []
    for n in powers_of_two(rewards.shape[1]):
        row: dict[str, float] = {
            "n": n,
            "kl_nats": round(plug_in_kl(rewards, n, texts), 4),
            "kl_bound_nats": round(math.log(n) - (n - 1) / n, 4),
            "reward": round(expected_best(rewards, rewards, n), 4),
        }
        if gold is not None:
            row["gold"] = round(expected_best(rewards, gold, n), 4)
            row["gold_oracle"] = round(expected_best(gold, gold, n), 4)
        for name, values in (traits or {}).items():
            applies = ~np.isnan(values).any(axis=1)
            row[name] = round(expected_best(rewards[applies], values[applies], n), 4) if applies.any() else None
        rows.append(row)
    return rows


KL_REGULARISED_BETAS = (0.1, 0.2, 0.5, 1.0, 2.0)


def kl_regularised_table(
    rewards: np.ndarray, gold: np.ndarray | None, betas: Sequence[float] = KL_REGULARISED_BETAS
) -> list[dict[str, float]]:
    """The policy that KL-regularised RL (PPO's objective, E[r] − β·KL) would reach, estimated from the samples.

    Its optimum is π*(y|x) ∝ π(y|x)·exp(r(x, y)/β) (Ziegler et al. 2019; the derivation DPO starts from).
    On the n samples of a prompt, π* is the softmax of r/β over them (self-normalised importance
    weights w_i), so E_π*[gold] ≈ Σ w_i·gold_i and KL(π*‖π) ≈ Σ w_i·log(n·w_i) (at most log n: with few
    samples the small-β rows are Best-of-n, not the true optimum). Written here: no library computes it.
    "gold_oracle" tilts by the gold reward at the same β: the ceiling for a perfect reward model.
    """

    def tilted(select_by: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
        logits = select_by / beta
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        n = select_by.shape[1]
        kl = float(np.where(weights > 0, weights * np.log(np.maximum(weights * n, 1e-300)), 0.0).sum(axis=1).mean())
        return weights, kl

    rows = []
    for beta in betas:
        weights, kl = tilted(rewards, beta)
        row: dict[str, float] = {
            "beta": beta,
            "kl_nats": round(kl, 4),
            "reward": round(float((weights * rewards).sum(axis=1).mean()), 4),
        }
        if gold is not None:
            row["gold"] = round(float((weights * gold).sum(axis=1).mean()), 4)
            oracle, oracle_kl = tilted(gold, beta)
            row["gold_oracle"], row["gold_oracle_kl_nats"] = (
                round(float((oracle * gold).sum(axis=1).mean()), 4),
                round(oracle_kl, 4),
            )
        rows.append(row)
    return rows


def within_prompt_pairs(rewards: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (a, b) of DISTINCT responses to one prompt whose gold rewards differ: (r_a − r_b, gold_a > gold_b).

    A response sampled many times counts once (identical texts have identical RM and gold rewards), so
    that a few frequent samples do not fill the calibration bins with copies of one pair.
    """
    margins, truth = [], []
    for row_rewards, row_gold in zip(rewards, gold):
        distinct = np.unique(np.stack([row_rewards, row_gold], axis=1), axis=0)
        first, second = np.triu_indices(len(distinct), k=1)
        differ = distinct[first, 1] != distinct[second, 1]
        margins.append((distinct[first, 0] - distinct[second, 0])[differ])
        truth.append((distinct[first, 1] > distinct[second, 1])[differ])
    return np.concatenate(margins), np.concatenate(truth)


def rm_versus_gold(rewards: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
    """How the RM tracks the gold reward on fresh policy samples."""
    within = [spearman(r, g) for r, g in zip(rewards, gold)]
    within = [value for value in within if value is not None]  # prompts where every sample has one gold value
    margins, truth = within_prompt_pairs(rewards, gold)
    rounded = lambda value: None if value is None else round(value, 4)  # noqa: E731
    return {
        "rm_gold_pearson": rounded(pearson(rewards.ravel(), gold.ravel())),
        "rm_gold_spearman": rounded(spearman(rewards.ravel(), gold.ravel())),
        "rm_gold_spearman_within_prompt": rounded(float(np.mean(within)) if within else None),
        "prompts_with_varied_gold": len(within),
        "calibration_on_samples": pairwise_calibration(margins, truth),
    }


def best_of_n(
    policy,
    policy_tokenizer,
    reward_model,
    reward_tokenizer,
    prompts: Sequence[str],
    n_max: int = 64,
    strategy: str = "temperature_1.0",
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 256,
    toy: bool = True,
    examples: int = 4,
    traits: Mapping[str, Trait] | None = None,
) -> dict[str, Any]:
    """Sample n_max responses per prompt, score them, and tabulate Best-of-N for N = 1, 2, ..., n_max."""
    if not prompts:
        raise UserError("Best-of-N needs at least one prompt")
    powers_of_two(n_max)
    repeated = [prompt for prompt in prompts for _ in range(n_max)]
    samples = generate(
        policy,
        policy_tokenizer,
        repeated,
        strategy=strategy,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    texts, finished = [s.text for s in samples], [s.finished for s in samples]
    rewards = np.array(
        score(reward_model, reward_tokenizer, repeated, texts, batch_size=batch_size, finished=finished)
    ).reshape(len(prompts), n_max)
    result: dict[str, Any] = {
        "prompts": len(prompts),
        "samples_per_prompt": n_max,
        "strategy": strategy,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "finished_share": round(float(np.mean(finished)), 4),
        "policy_mean_reward": round(float(rewards.mean()), 4),
    }
    gold = None
    if toy:
        from pipeline.data.toy_world import gold_reward

        gold = np.array([gold_reward(p, t, finished=f) for p, t, f in zip(repeated, texts, finished)]).reshape(
            rewards.shape
        )
        result["policy_mean_gold"] = round(float(gold.mean()), 4)
        result.update(rm_versus_gold(rewards, gold))
    trait_values = {
        name: np.array([trait_value(test, p, t) for p, t in zip(repeated, texts)], dtype=float).reshape(rewards.shape)
        for name, test in (traits or {}).items()
    }
    result["table"] = best_of_n_table(
        rewards, gold, [texts[p * n_max : (p + 1) * n_max] for p in range(len(prompts))], trait_values
    )
    result["kl_regularised"] = kl_regularised_table(rewards, gold)
    result["examples"] = [
        {
            "prompt": prompts[p],
            "rm_best": texts[p * n_max + int(rewards[p].argmax())],
            "rm_worst": texts[p * n_max + int(rewards[p].argmin())],
            **({"gold_of_rm_best": round(float(gold[p, rewards[p].argmax()]), 4)} if gold is not None else {}),
        }
        for p in range(min(examples, len(prompts)))
    ]
    return result


def judge_against_frontier(table: list[dict[str, Any]], frontier: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Best-of-N row beside the sharpening frontier of the same policy on the same prompts: the frontier's gold at
    the row's (plug-in) KL and the row's margin over it (pipeline.policy_eval.frontier_gold_at)."""
    for row in table:
        at_kl = frontier_gold_at(frontier, row["kl_nats"])
        if at_kl is not None and "gold" in row:
            row["frontier_gold_at_kl"] = round(at_kl, 4)
            row["margin_over_frontier"] = round(row["gold"] - at_kl, 4)
            row["beats_sharpening"] = row["gold"] - at_kl >= BEATS_MARGIN
    return table


def plot_best_of_n(result: dict[str, Any], path: str | Path) -> Path:
    """RM reward and gold reward of the Best-of-N pick against N (log scale)."""
    from pipeline.plots import plt, save_figure

    table = result["table"]
    ns = [row["n"] for row in table]
    has_gold = "gold" in table[0]
    figure, axes = plt.subplots(1, 2 if has_gold else 1, figsize=(10 if has_gold else 5, 4), squeeze=False)
    axis = axes[0][0]
    axis.plot(ns, [row["reward"] for row in table], marker="o", color="tab:blue")
    axis.set_ylabel("RM reward of the pick")
    axis.set_title("what the reward model sees")
    if has_gold:
        axis = axes[0][1]
        axis.plot(ns, [row["gold"] for row in table], marker="o", color="tab:green", label="RM picks")
        axis.plot(ns, [row["gold_oracle"] for row in table], linestyle="--", color="grey", label="gold picks (oracle)")
        axis.axhline(result["policy_mean_gold"], color="tab:red", linestyle=":", label="policy mean")
        axis.set_ylabel("gold reward of the pick")
        axis.set_title("what is true (toy world gold reward)")
        axis.legend()
    for axis in axes[0]:
        axis.set_xscale("log", base=2)
        axis.set_xticks(ns, [str(n) for n in ns])
        axis.set_xlabel("N (samples per prompt)")
        axis.grid(alpha=0.3)
    figure.suptitle(
        f"Best-of-N: {result['prompts']} prompts, {result['samples_per_prompt']} samples each ({result['strategy']})"
    )
    return save_figure(figure, path)
