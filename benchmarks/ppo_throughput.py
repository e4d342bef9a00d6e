"""Throughput of the PPO stage on the toy config: samples/s, where the time goes, and memory with/without LoRA.

    python benchmarks/ppo_throughput.py                         # the toy PPO recipe, full fine-tuning vs LoRA
    python benchmarks/ppo_throughput.py --steps 10 --batch-size 128
    python benchmarks/ppo_throughput.py --synthetic 6x384 --steps 3 --value-model head   # a bigger random GPT-2

Each variant runs the real stage (`python -m pipeline.ppo`) in its own process, so that its peak memory
is its own: the process's peak resident set size on a CPU, torch's peak allocated memory on a GPU. The
time split comes from the stage's own per-step timings: generation (`generate`), forward (log-probs of
policy and reference, values), scoring (the reward) and optimisation (the PPO epochs). Samples/s is the
median over the measured steps (the first step, which warms up, is left out). Beside the measured peak,
the memory the weights, gradients and Adam moments need is counted from the parameter numbers
(fp32: 4 bytes per value), which is where LoRA saves: no second copy of the model for the reference,
and gradients and moments for the adapters only. This is a benchmark, not a test: it prints, it does
not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def default_model() -> str:
    for candidate in ("runs/toy/sft", "runs/toy/pretrain"):
        if (REPO / candidate / "manifest.json").is_file():
            return str(REPO / candidate)
    raise SystemExit(
        "no toy model: run `python -m pipeline run recipes/toy` (or the pretrain recipe) first, or pass --model"
    )


def synthetic_model(base: str, shape: str, directory: Path) -> str:
    """A random GPT-2 of `layers`x`width` with the base model's tokenizer (memory, not quality, is measured)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    layers, width = (int(x) for x in shape.lower().split("x"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=width,
        n_layer=layers,
        n_head=max(1, width // 64),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def recipe(args, model: str, output_dir: Path, lora: bool) -> dict:
    values = yaml.safe_load((REPO / "recipes/toy/ppo.yaml").read_text())
    values.update(
        model_name_or_path=model,
        output_dir=str(output_dir),
        reward=args.reward,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        response_length=args.response_length,
        num_eval_prompts=args.eval_prompts,
        save_steps=10_000,
        logging_steps=1,
    )
    if args.reward == "gold":
        values.pop("reward_model_path", None)
    values.pop("value_model_path", None)
    if args.value_model:
        values["value_model"] = args.value_model
    if lora:
        values.update(
            use_peft=True,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_target_modules=["c_attn", "c_proj", "c_fc"],
        )
        values["learning_rate"] = args.lora_learning_rate
        values.pop(
            "final_norm_learning_rate", None
        )  # the norm is frozen under LoRA (its base weights are the reference)
    return values


def run_variant(args, model: str, workdir: Path, lora: bool) -> dict:
    name = "lora" if lora else "full"
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe(args, model, workdir / name, lora), sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    quiet = {} if args.verbose else {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    result = subprocess.run([sys.executable, "-m", "pipeline.ppo", "--config", str(path)], env=env, cwd=REPO, **quiet)
    if result.returncode != 0:
        raise SystemExit(f"the {name} run failed:\n{(result.stderr or '')[-3000:]}")
    metrics = json.loads((workdir / name / "metrics.json").read_text())
    history = json.loads((workdir / name / "log_history.json").read_text())[1:]  # the first step warms up
    phases = ("generation", "forward", "scoring", "optimisation")
    totals = {phase: sum(entry.get(f"time_{phase}", 0.0) for entry in history) for phase in phases}
    measured = sum(totals.values())
    return {
        "variant": name,
        "samples_per_second": statistics.median(entry["samples_per_second"] for entry in history),
        "tokens_per_second": statistics.median(entry["tokens_per_second"] for entry in history),
        "seconds_per_step": statistics.median(args.batch_size / entry["samples_per_second"] for entry in history),
        "split": {phase: totals[phase] / measured for phase in phases},
        "peak_memory_mb": metrics["peak_memory_mb"],
        "parameters": metrics["parameters"],
        "trainable_parameters": metrics["trainable_parameters"],
        "reference_copy": not lora,
    }


def counted_memory_mb(result: dict, policy_parameters: int) -> float:
    """Weights of policy (+ reference copy) + critic, and gradients + two Adam moments of what trains (fp32)."""
    weights = result["parameters"] + (policy_parameters if result["reference_copy"] else 0)
    return 4 * (weights + 3 * result["trainable_parameters"]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="policy to start from (default: runs/toy/sft, else runs/toy/pretrain)"
    )
    parser.add_argument(
        "--synthetic", default=None, help="LAYERSxWIDTH: benchmark a random GPT-2 of this shape instead"
    )
    parser.add_argument(
        "--reward", default="gold", choices=("gold", "model"), help="gold (no reward model needed) or the recipe's RM"
    )
    parser.add_argument("--steps", type=int, default=6, help="PPO steps per variant (the first is not measured)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument(
        "--eval-prompts", type=int, default=32, help="held-out prompts measured before/after (kept small)"
    )
    parser.add_argument(
        "--value-model", default=None, choices=("separate", "head"), help="critic (default: the recipe's)"
    )
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-learning-rate", type=float, default=1e-3)
    parser.add_argument("--verbose", action="store_true", help="show the stage's log")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        model = args.model or default_model()
        if args.synthetic:
            model = synthetic_model(model, args.synthetic, workdir / "synthetic")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
            f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; model {model}"
        )
        print(
            f"toy PPO config (recipes/toy/ppo.yaml) with {args.batch_size} prompts per step, "
            f"responses <= {args.response_length} "
            f"tokens, reward {args.reward}, {args.steps} steps per variant\n"
        )
        results = [run_variant(args, model, workdir, lora) for lora in (False, True)]

    policy_parameters = results[1]["parameters"] - results[1]["trainable_parameters"]  # LoRA run: the frozen policy
    header = (
        f"{'variant':<8} {'samples/s':>10} {'tokens/s':>9} {'s/step':>7} {'generation':>11} {'forward':>8} "
        f"{'scoring':>8} {'optimisation':>13} {'peak MB':>9} {'counted MB':>11} {'trainable':>10}"
    )
    print(header)
    for r in results:
        split = r["split"]
        print(
            f"{r['variant']:<8} {r['samples_per_second']:>10.1f} {r['tokens_per_second']:>9.0f} "
            f"{r['seconds_per_step']:>7.2f} "
            f"{split['generation']:>11.0%} {split['forward']:>8.0%} {split['scoring']:>8.0%} "
            f"{split['optimisation']:>13.0%} "
            f"{r['peak_memory_mb']:>9.0f} {counted_memory_mb(r, policy_parameters):>11.1f} "
            f"{r['trainable_parameters']:>10,}"
        )
    print("\npeak MB: process peak RSS on a CPU (includes Python + torch, ~0.5 GB), torch's peak allocated on a GPU;")
    print(
        "counted MB: fp32 weights (+ the reference copy without LoRA) + gradients and Adam moments of the trainable "
        "parameters."
    )


if __name__ == "__main__":
    main()
