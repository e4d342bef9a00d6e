"""Best-of-N sampling with a reward model, from the command line: the table, the KL-regularised optimum and the plot.

    python -m eval.best_of_n --policy runs/toy/sft \\
        --reward_model runs/toy/reward   # -> runs/toy/reward_best_of_n.json/png
    python -m eval.best_of_n --policy runs/toy/sft --reward_model runs/toy/reward --num_prompts 64 --n_max 64 \\
        --output runs/toy/best_of_n_64.json

The reward stage runs the same study on its own when the recipe sets `best_of_n_prompts` (the toy recipe does),
writing best_of_n.json/png into its output directory. How the curve and its KL are estimated: pipeline/best_of_n.py.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.document import markdown_table
from pipeline.best_of_n import best_of_n, plot_best_of_n, powers_of_two
from pipeline.decoding import DEFAULT_STRATEGIES
from pipeline.errors import UserError, run_cli

logger = logging.getLogger("eval.best_of_n")


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of the Best-of-N curve."""
    gold = "gold" in result["table"][0]
    headers = ["N", "KL (nats, plug-in)", "KL bound", "RM reward"] + (["gold reward", "gold oracle"] if gold else [])
    rows = [
        [row["n"], f"{row['kl_nats']:.3f}", f"{row['kl_bound_nats']:.3f}", f"{row['reward']:.3f}"]
        + ([f"{row['gold']:.3f}", f"{row['gold_oracle']:.3f}"] if gold else [])
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


# --- command line ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.best_of_n", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="causal LM to sample from (e.g. runs/toy/sft)")
    parser.add_argument("--reward_model", required=True, help="reward stage output (e.g. runs/toy/reward)")
    parser.add_argument(
        "--dataset",
        default="toy",
        help="'toy' (prompts of the toy world, gold reward) or a preference file whose prompts are used",
    )
    parser.add_argument(
        "--split", default="test", choices=["validation", "test"], help="toy world split of the prompts"
    )
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--n_max", type=int, default=64, help="samples per prompt; N runs over 1, 2, 4, ..., n_max")
    parser.add_argument("--strategy", default="temperature_1.0", choices=sorted(DEFAULT_STRATEGIES))
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--toy_seed", type=int, default=0)
    parser.add_argument("--toy_max_digits", type=int, default=2)
    parser.add_argument(
        "--toy_skills", nargs="+", default=None, help="toy world skills (default: all; as in the recipes)"
    )
    parser.add_argument(
        "--output",
        default=None,
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
        policy,
        policy_tokenizer,
        reward_model,
        reward_tokenizer,
        load_prompts(args),
        n_max=args.n_max,
        strategy=args.strategy,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
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
        print(
            f"policy mean gold {result['policy_mean_gold']}; RM vs gold: Pearson {result['rm_gold_pearson']}, "
            f"Spearman {result['rm_gold_spearman']} (within prompt {result['rm_gold_spearman_within_prompt']})"
        )
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    run_cli(main)
