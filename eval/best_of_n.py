"""Best-of-N sampling with a reward model, and the classic over-optimisation picture.

    python -m eval.best_of_n --policy runs/toy/sft --reward_model runs/toy/reward   # -> runs/toy/reward_best_of_n.json/png
    python -m eval.best_of_n --policy runs/toy/sft --reward_model runs/toy/reward --num_prompts 64 --n_max 64 \\
        --output runs/toy/best_of_n_64.json

The reward stage runs the same study on its own when the recipe sets `best_of_n_prompts` (the toy recipe
does), writing best_of_n.json/png into its output directory.

For each prompt the policy (the SFT model) samples `n_max` responses once; the reward model scores them,
and on the toy world so does the gold reward. For N = 1, 2, 4, ..., n_max the table gives the expected
RM reward and gold reward of the response the RM picks out of N samples. As N grows the RM reward keeps
rising; the gold reward rises less, and with an imperfect RM it can flatten or fall: the RM's errors are
what a strong optimiser finds (Gao et al. 2022, "Scaling laws for reward model overoptimization").

How the curve is estimated (written here, no library does it): not from one arbitrary N-subset of the
samples but as the exact expectation over all N-subsets of the n_max samples. With the samples of a
prompt sorted by RM score ascending, the i-th (1-based) is the best of a random N-subset with probability
C(i−1, N−1) / C(n_max, N) (the unbiased estimator of WebGPT, Nakano et al. 2021, appendix). The gold
"oracle" column picks by the gold reward instead: the ceiling for a perfect reward model. The KL column
is the analytic KL(best-of-N ‖ policy) = log N − (N−1)/N nats (exact when samples do not repeat, an
upper bound otherwise), the x-axis of Gao et al.

On the toy world the same samples also measure how well the RM tracks the truth on the policy's own
distribution: Pearson and Spearman correlation of RM score and gold reward (pooled, and Spearman within
each prompt, which is what picking the best of N relies on), and the calibration of σ(r_a − r_b)
against the gold preference on every pair of distinct responses to one prompt whose gold rewards
differ (see pipeline.reward_model.pairwise_calibration for the definition).

Responses are scored as the RM was trained: prompt + response + EOS, where a sample cut by the length
limit gets no EOS (see pipeline/reward_model.py).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.document import markdown_table
from pipeline.decoding import DEFAULT_STRATEGIES, generate
from pipeline.errors import UserError, run_cli
from pipeline.reward_model import pairwise_calibration, pearson, score, spearman

logger = logging.getLogger("eval.best_of_n")


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


def best_of_n_table(rewards: np.ndarray, gold: np.ndarray | None) -> list[dict[str, float]]:
    """One row per N: expected RM reward and gold reward of the RM's pick, the gold oracle, the KL."""
    rows = []
    for n in powers_of_two(rewards.shape[1]):
        row: dict[str, float] = {"n": n, "kl_nats": round(math.log(n) - (n - 1) / n, 4), "reward": round(expected_best(rewards, rewards, n), 4)}
        if gold is not None:
            row["gold"] = round(expected_best(rewards, gold, n), 4)
            row["gold_oracle"] = round(expected_best(gold, gold, n), 4)
        rows.append(row)
    return rows


KL_REGULARISED_BETAS = (0.1, 0.2, 0.5, 1.0, 2.0)


def kl_regularised_table(rewards: np.ndarray, gold: np.ndarray | None, betas: Sequence[float] = KL_REGULARISED_BETAS) -> list[dict[str, float]]:
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
        row: dict[str, float] = {"beta": beta, "kl_nats": round(kl, 4), "reward": round(float((weights * rewards).sum(axis=1).mean()), 4)}
        if gold is not None:
            row["gold"] = round(float((weights * gold).sum(axis=1).mean()), 4)
            oracle, oracle_kl = tilted(gold, beta)
            row["gold_oracle"], row["gold_oracle_kl_nats"] = round(float((oracle * gold).sum(axis=1).mean()), 4), round(oracle_kl, 4)
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
) -> dict[str, Any]:
    """Sample n_max responses per prompt, score them, and tabulate Best-of-N for N = 1, 2, ..., n_max."""
    if not prompts:
        raise UserError("Best-of-N needs at least one prompt")
    powers_of_two(n_max)
    repeated = [prompt for prompt in prompts for _ in range(n_max)]
    samples = generate(
        policy, policy_tokenizer, repeated, strategy=strategy, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size
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

        gold = np.array([gold_reward(p, t, finished=f) for p, t, f in zip(repeated, texts, finished)]).reshape(rewards.shape)
        result["policy_mean_gold"] = round(float(gold.mean()), 4)
        result.update(rm_versus_gold(rewards, gold))
    result["table"] = best_of_n_table(rewards, gold)
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


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of the Best-of-N curve."""
    gold = "gold" in result["table"][0]
    headers = ["N", "KL bound (nats)", "RM reward"] + (["gold reward", "gold oracle"] if gold else [])
    rows = [
        [row["n"], f"{row['kl_nats']:.3f}", f"{row['reward']:.3f}"] + ([f"{row['gold']:.3f}", f"{row['gold_oracle']:.3f}"] if gold else [])
        for row in result["table"]
    ]
    return "\n".join(markdown_table(headers, rows))


def format_kl_regularised(result: dict[str, Any]) -> str:
    """Markdown table of the KL-regularised optimum π* ∝ π·exp(r/β), one row per β."""
    gold = "gold" in result["kl_regularised"][0]
    headers = ["β", "KL (nats)", "RM reward"] + (["gold reward", "gold-tilted: gold, KL"] if gold else [])
    rows = [
        [row["beta"], f"{row['kl_nats']:.3f}", f"{row['reward']:.3f}"]
        + ([f"{row['gold']:.3f}", f"{row['gold_oracle']:.3f}, {row['gold_oracle_kl_nats']:.3f}"] if gold else [])
        for row in result["kl_regularised"]
    ]
    return "\n".join(markdown_table(headers, rows))


def plot_best_of_n(result: dict[str, Any], path: str | Path) -> Path:
    """RM reward and gold reward of the Best-of-N pick against N (log scale)."""
    from pipeline.plots import plt

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
    figure.suptitle(f"Best-of-N: {result['prompts']} prompts, {result['samples_per_prompt']} samples each ({result['strategy']})")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --- command line ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.best_of_n", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="causal LM to sample from (e.g. runs/toy/sft)")
    parser.add_argument("--reward_model", required=True, help="reward stage output (e.g. runs/toy/reward)")
    parser.add_argument("--dataset", default="toy", help="'toy' (prompts of the toy world, gold reward) or a preference file whose prompts are used")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="toy world split of the prompts")
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--n_max", type=int, default=64, help="samples per prompt; N runs over 1, 2, 4, ..., n_max")
    parser.add_argument("--strategy", default="temperature_1.0", choices=sorted(DEFAULT_STRATEGIES))
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--toy_seed", type=int, default=0)
    parser.add_argument("--toy_max_digits", type=int, default=2)
    parser.add_argument("--toy_skills", nargs="+", default=None, help="toy world skills (default: all; as in the recipes)")
    parser.add_argument(
        "--output", default=None,
        help="JSON file to write (default: <reward_model>_best_of_n.json, beside the reward model's directory, "
        "which stays as its stage finished it); the PNG goes beside it",
    )
    args = parser.parse_args(argv)
    if args.num_prompts < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        raise UserError("--num_prompts, --max_new_tokens and --batch_size must be >= 1")
    return args


def load_prompts(args: argparse.Namespace) -> list[str]:
    if args.dataset == "toy":
        from pipeline.data.toy_world import ToyWorld

        return ToyWorld.from_recipe(args).prompts(args.num_prompts, split=args.split)
    from pipeline.data.preferences import load_preferences

    pairs, _ = load_preferences(args.dataset)
    return list(dict.fromkeys(pairs["prompt"]))[: args.num_prompts]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from trl import ModelConfig

    from pipeline.contract import write_json
    from pipeline.models import load_model, load_tokenizer
    from pipeline.reward_model import load_reward_model

    args = parse_args(argv)
    powers_of_two(args.n_max)
    policy_tokenizer = load_tokenizer(args.policy)
    policy = load_model(ModelConfig(model_name_or_path=args.policy, dtype="float32"), policy_tokenizer)
    reward_model, reward_tokenizer = load_reward_model(args.reward_model)
    result = best_of_n(
        policy, policy_tokenizer, reward_model, reward_tokenizer, load_prompts(args), n_max=args.n_max,
        strategy=args.strategy, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        toy=args.dataset == "toy",
    )
    result["policy"], result["reward_model"] = args.policy, args.reward_model
    output = Path(args.output) if args.output else Path(str(Path(args.reward_model)) + "_best_of_n.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result)
    plot_best_of_n(result, output.with_suffix(".png"))
    print(format_table(result))
    print("\nKL-regularised optimum π* ∝ π·exp(r/β) on the same samples (what PPO at β could reach):")
    print(format_kl_regularised(result))
    if "policy_mean_gold" in result:
        print(f"policy mean gold {result['policy_mean_gold']}; RM vs gold: Pearson {result['rm_gold_pearson']}, "
              f"Spearman {result['rm_gold_spearman']} (within prompt {result['rm_gold_spearman_within_prompt']})")
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    run_cli(main)
