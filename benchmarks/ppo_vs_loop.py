"""The PPO stage against a minimal PPO loop written from the papers, on the same models and settings.

    python benchmarks/ppo_vs_loop.py                 # runs/toy/sft + runs/toy/reward, 8 steps, 3 repetitions
    python benchmarks/ppo_vs_loop.py --steps 6 --repeats 5

The loop below is what a reader would write from Ziegler et al. (2019) and the N+ implementation details,
with nothing to make it fast beyond a fused AdamW: sample a batch of responses with `generate`, run policy,
reference and critic over the padded batch, score with the reward model at the last real token, per-token
KL penalty, GAE, then clipped policy and value losses over shuffled mini-batches. It uses the recipe's
shapes and settings (recipes/toy/ppo.yaml: 256 prompts a step, 2 mini-batches, 1 epoch, responses of at most
40 tokens, a separate critic made from the reward model), the same models and the same toy prompts.
The stage (`python -m pipeline.ppo`, in its own process, evaluation cut to a few prompts) reports the
samples/s of each step; the loop is timed the same way, step by step, in this process. The first step of
each side warms up and is left out. Ratio = stage / loop samples/s, median and range over alternating
repetitions. This is a benchmark, not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_stage(args, workdir: Path, repetition: int) -> list[float]:
    """The stage's samples/s per step (after the first), from its log_history."""
    values = yaml.safe_load((REPO / "recipes/toy/ppo.yaml").read_text())
    output_dir = workdir / f"stage{repetition}"
    values.update(
        model_name_or_path=args.policy,
        reward_model_path=args.reward_model,
        output_dir=str(output_dir),
        max_steps=args.steps,
        num_eval_prompts=4,
        sharpening_temperatures=[1.0],
        save_steps=10_000,
    )
    recipe = workdir / f"stage{repetition}.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.ppo", "--config", str(recipe)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"the stage failed:\n{result.stderr[-3000:]}")
    history = json.loads((output_dir / "log_history.json").read_text())
    return [entry["samples_per_second"] for entry in history[1:]]


def run_loop(args, settings: dict, prompts: list[str], seed: int) -> list[float]:
    """A plain PPO loop (module doc); samples/s per step after the first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    reference = AutoModelForCausalLM.from_pretrained(args.policy).eval().requires_grad_(False)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model).eval().requires_grad_(False)
    critic = AutoModelForSequenceClassification.from_pretrained(args.reward_model)
    policy.eval(), critic.eval()  # no dropout in PPO for LMs; gradients flow all the same
    optimizer = torch.optim.AdamW(
        [
            {"params": policy.parameters(), "lr": settings["learning_rate"]},
            {"params": critic.parameters(), "lr": settings["value_learning_rate"]},
        ],
        weight_decay=0.0,
        fused=True,
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch_size, temperature = settings["per_device_train_batch_size"], settings["temperature"]

    def logprobs_of(model, ids, mask, response_length):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        logits = logits[:, -response_length - 1 : -1].float() / temperature
        return torch.log_softmax(logits, -1).gather(-1, ids[:, -response_length:, None]).squeeze(-1), logits

    def values_of(ids, mask, response_length):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = critic.transformer(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return critic.score(hidden[:, -response_length - 1 : -1]).squeeze(-1)

    rates = []
    for step in range(args.steps):
        started = time.perf_counter()
        batch_prompts = [prompts[(step * batch_size + i) % len(prompts)] for i in range(batch_size)]
        query = tokenizer(batch_prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = policy.generate(
                **query,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=settings["response_length"],
                pad_token_id=pad,
                eos_token_id=eos,
            )
            response = output[:, query["input_ids"].shape[1] :]
            is_eos = response == eos
            response_mask = ((is_eos.long().cumsum(1) - is_eos.long()) == 0).long()
            response = response.masked_fill(response_mask == 0, pad)
            ids = torch.cat([query["input_ids"], response], 1)
            mask = torch.cat([query["attention_mask"], response_mask], 1)
            length = response.shape[1]
            old_logprobs, _ = logprobs_of(policy, ids, mask, length)
            ref_logprobs, _ = logprobs_of(reference, ids, mask, length)
            old_values = values_of(ids, mask, length) * response_mask
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            scores = reward_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, 0]
            scores = scores - settings["missing_eos_penalty"] * (~is_eos.any(1)).float()
            rewards = -settings["kl_coef"] * (old_logprobs - ref_logprobs) * response_mask
            rewards[torch.arange(batch_size), (last - query["input_ids"].shape[1]).clamp(min=0)] += scores
            advantages, running = torch.zeros_like(rewards), torch.zeros(batch_size)
            for t in reversed(range(length)):
                next_value = old_values[:, t + 1] if t + 1 < length else torch.zeros(batch_size)
                delta = rewards[:, t] + settings["gamma"] * next_value - old_values[:, t]
                running = delta + settings["gamma"] * settings["lam"] * running
                advantages[:, t] = running
            advantages = advantages * response_mask
            returns = advantages + old_values
            real = response_mask.bool()
            advantages = (advantages - advantages[real].mean()) / (advantages[real].std() + 1e-8) * response_mask
        mini_batch = batch_size // settings["num_mini_batches"]
        for _ in range(settings["ppo_epochs"]):
            order = torch.randperm(batch_size)
            for start in range(0, batch_size, mini_batch):
                rows = order[start : start + mini_batch]
                rows_mask = response_mask[rows].float()
                tokens = rows_mask.sum()
                logprobs, _ = logprobs_of(policy, ids[rows], mask[rows], length)
                ratio = torch.exp(logprobs - old_logprobs[rows])
                clipped = torch.clamp(ratio, 1 - settings["cliprange"], 1 + settings["cliprange"])
                policy_loss = (torch.max(-advantages[rows] * ratio, -advantages[rows] * clipped) * rows_mask).sum()
                values = values_of(ids[rows], mask[rows], length)
                values_clipped = old_values[rows] + torch.clamp(
                    values - old_values[rows], -settings["cliprange_value"], settings["cliprange_value"]
                )
                value_loss = torch.max((values - returns[rows]) ** 2, (values_clipped - returns[rows]) ** 2)
                loss = (policy_loss + settings["vf_coef"] * 0.5 * (value_loss * rows_mask).sum()) / tokens
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*policy.parameters(), *critic.parameters()], 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        rates.append(batch_size / (time.perf_counter() - started))
    return rates[1:]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f} .. {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=str(REPO / "runs/toy/sft"), help="the SFT model (default: runs/toy/sft)")
    parser.add_argument("--reward-model", default=str(REPO / "runs/toy/reward"), help="default: runs/toy/reward")
    parser.add_argument("--steps", type=int, default=8, help="PPO steps per run (the first is not measured)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions of loop and stage")
    args = parser.parse_args()
    for path in (args.policy, args.reward_model):
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"{path} is not a model folder: run `python -m pipeline run recipes/toy` first")

    import torch

    from pipeline.data.toy_world import ToyWorld

    settings = yaml.safe_load((REPO / "recipes/toy/ppo.yaml").read_text())
    prompts = ToyWorld(skills=tuple(settings["toy_skills"])).prompts(settings["toy_prompts"], split="train")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; recipes/toy/ppo.yaml settings "
        f"({settings['per_device_train_batch_size']} prompts a step, {settings['num_mini_batches']} mini-batches, "
        f"responses <= {settings['response_length']} tokens); {args.steps} steps per run, the first not measured\n"
    )
    loop_rates, stage_rates, ratios = [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        for repetition in range(args.repeats):
            loop = statistics.median(run_loop(args, settings, prompts, seed=repetition))
            stage = statistics.median(run_stage(args, Path(workdir), repetition))
            loop_rates.append(loop)
            stage_rates.append(stage)
            ratios.append(stage / loop)
            print(f"repetition {repetition + 1}: loop {loop:.1f} samples/s, stage {stage:.1f} samples/s", flush=True)
    print(f"\nloop  samples/s: {spread(loop_rates)}")
    print(f"stage samples/s: {spread(stage_rates)}")
    print(f"stage / loop:    {spread(ratios)}")


if __name__ == "__main__":
    main()
