"""Where the toy PPO stands: its gold gain and KL beside what its own objective allows, and beside plain sharpening.

    python benchmarks/ppo_ceiling.py                    # after `make demo`: runs/toy/sft, runs/toy/reward, runs/toy/ppo
    python benchmarks/ppo_ceiling.py --samples 16 --ppo runs/exp/ppo_variant

Everything is measured on the PPO recipe's held-out prompts (the toy world's eval split, its skills), as
the gold reward of T = 1 samples against the KL to the SFT model in nats:

* **the KL-regularised optimum** of PPO's objective E[r] − β·KL with the chain's reward model:
  π* ∝ π_SFT·exp(r/β), estimated on `--samples` SFT samples per prompt (eval.best_of_n.kl_regularised_table;
  the missing-EOS penalty of the recipe is applied to the scores first, as PPO does), and the same with
  the gold reward as r (what a perfect reward model would allow);
* **plain sharpening**: the SFT model sampled at a lower temperature T, no training at all, with the exact
  KL(p_T ‖ p_1) summed over the response (pipeline.policy_eval.sequence_kls);
* **the trained policy**: the PPO run's metrics.json (its own before/after on the same prompts).

A benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class AtTemperature(torch.nn.Module):
    """A causal LM whose logits are divided by T: the distribution that sampling at temperature T draws from."""

    def __init__(self, model, temperature: float):
        super().__init__()
        self.model, self.temperature, self.config = model, temperature, model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, **inputs):
        return SimpleNamespace(logits=self.model(**inputs).logits / self.temperature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes/toy/ppo.yaml"), help="the PPO recipe (prompts, β, response length)")
    parser.add_argument("--sft", default=str(REPO / "runs/toy/sft"))
    parser.add_argument("--reward_model", default=str(REPO / "runs/toy/reward"))
    parser.add_argument("--ppo", default=str(REPO / "runs/toy/ppo"), help="a finished PPO run to compare (skipped when absent)")
    parser.add_argument("--samples", type=int, default=32, help="SFT samples per prompt for the optimum (KL is at most log of this)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6, 0.5])
    args = parser.parse_args()
    for path in (args.sft, args.reward_model):
        if not (Path(path) / "manifest.json").is_file():
            raise SystemExit(f"{path} is not a finished stage: run `make demo` (or the chain up to the reward stage) first")

    from trl import ModelConfig

    from eval.best_of_n import kl_regularised_table
    from eval.document import markdown_table
    from pipeline.data.toy_world import ToyWorld, eval_split, gold_reward_batch
    from pipeline.decoding import generate
    from pipeline.models import load_model, load_tokenizer
    from pipeline.policy_eval import sequence_kls
    from pipeline.reward_model import load_reward_model, score

    recipe = yaml.safe_load(Path(args.recipe).read_text())
    beta, length, penalty = recipe["kl_coef"], recipe["response_length"], recipe.get("missing_eos_penalty") or 0.0
    prompts = ToyWorld.from_recipe(recipe).prompts(recipe.get("num_eval_prompts", 256), split=eval_split(recipe))
    tokenizer = load_tokenizer(args.sft)
    sft = load_model(ModelConfig(model_name_or_path=args.sft, dtype="float32"), tokenizer).eval()

    def sample(model, temperature: float, repeats: int = 1):
        strategy = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        return generate(model, tokenizer, [p for p in prompts for _ in range(repeats)], strategy, max_new_tokens=length, seed=1, batch_size=256)

    def gold_of(generations) -> np.ndarray:
        return np.array(gold_reward_batch([g.prompt for g in generations], [g.text for g in generations], [g.finished for g in generations]))

    rows = []
    base = sample(sft, 1.0, args.samples)
    gold = gold_of(base).reshape(len(prompts), args.samples)
    reward_model, reward_tokenizer = load_reward_model(args.reward_model)
    rm = np.array(score(reward_model, reward_tokenizer, [g.prompt for g in base], [g.text for g in base], 256, finished=[g.finished for g in base]))
    rm = (rm - penalty * ~np.array([g.finished for g in base])).reshape(gold.shape)
    rows.append(("SFT model, T = 1", gold.mean(), 0.0, ""))
    for row in kl_regularised_table(rm, gold, betas=sorted({beta, 0.2, 1.0})):
        mark = " (the recipe's β)" if row["beta"] == beta else ""
        rows.append((f"optimum π* with the RM, β {row['beta']}{mark}", row["gold"], row["kl_nats"], f"RM {row['reward']:.3f}"))
        rows.append((f"optimum π* with the gold reward, β {row['beta']}", row["gold_oracle"], row["gold_oracle_kl_nats"], ""))
    for temperature in args.temperatures:
        generations = sample(sft, temperature)
        kl = sequence_kls(AtTemperature(sft, temperature), sft, tokenizer, generations, max_new_tokens=length, batch_size=256)["exact"]
        rows.append((f"SFT model sampled at T = {temperature}", gold_of(generations).mean(), float(np.mean(kl)), ""))
    metrics_path = Path(args.ppo) / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        rows.append((f"PPO ({args.ppo}): before", metrics["gold_reward_before"], 0.0, "its own T = 1 samples"))
        rows.append((f"PPO ({args.ppo}): after", metrics["gold_reward_after"], metrics["kl_to_reference"]["k1"], "KL: k1"))

    print(f"{len(prompts)} held-out prompts; {args.samples} SFT samples per prompt for π*; responses of at most {length} tokens\n")
    table = [[name, f"{value:.3f}", f"{kl:.3f}", note] for name, value, kl, note in rows]
    print("\n".join(markdown_table(["policy", "gold reward", "KL to SFT (nats)", "note"], table)))


if __name__ == "__main__":
    main()
