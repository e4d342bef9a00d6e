"""Throughput of the pretraining stage against a plain PyTorch training loop, and MFU.

    python benchmarks/pretrain_throughput.py                 # 6 layers x 6 heads x 384 wide, block 256, batch 8
    python benchmarks/pretrain_throughput.py --steps 30 --no-compile

Both runs train the same GPT2LMHeadModel config on the same char-level data (tinyshakespeare from
../shared/data when present, else the toy world) with fused AdamW, a cosine schedule and (by default)
torch.compile. Tokens/s are measured after `--warmup` steps (compilation and first-step costs
excluded) for both. MFU is achieved FLOP/s (6·N + 12·L·d·T per token, as nanoGPT counts) over a peak
measured here with a large fp32 matmul. This is a benchmark, not a test: it prints, it does not assert.
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

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def measure_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """fp32 FLOP/s of a large square matmul on this machine's threads: the MFU denominator."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def model_settings(args) -> dict:
    return {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "block_size": args.block_size}


def run_stage(args, workdir: Path) -> dict:
    """The real stage, in its own process, as a user runs it; tokens/s read from its training log."""
    recipe = {
        "stage": "pretrain",
        "output_dir": str(workdir / "stage"),
        "dataset": str(SHAKESPEARE) if SHAKESPEARE.is_file() else "toy",
        "tokenizer": "char",
        **model_settings(args),
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-3,
        "max_steps": args.warmup + args.steps,
        "logging_steps": args.log_every,
        "eval_strategy": "no",
        "save_strategy": "no",
        "torch_compile": args.compile,
        "optim": "adamw_torch_fused",
        "decoding_strategies": ["greedy"],
        "num_sample_prompts": 1,
        "sample_max_new_tokens": 8,
        "use_cpu": True,
        "bf16": False,
        "disable_tqdm": True,
        "seed": 0,
    }
    path = workdir / "stage.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "pipeline.pretrain", "--config", str(path)], check=True, env=env, cwd=REPO)
    history = json.loads((workdir / "stage" / "log_history.json").read_text())
    # Log entries after the warm-up steps: each carries the tokens/s of its own interval.
    rates = [entry["tokens_per_second"] for entry in history if "tokens_per_second" in entry and entry["step"] > args.warmup]
    return {"tokens_per_second": statistics.median(rates), "intervals": len(rates)}


def run_plain_loop(args) -> dict:
    """The same training written as a bare PyTorch loop: what the stage's overhead is measured against."""
    from transformers import AutoModelForCausalLM, GPT2Config, get_cosine_schedule_with_warmup

    from pipeline.tokenization import train_tokenizer

    torch.manual_seed(0)
    text = SHAKESPEARE.read_text() if SHAKESPEARE.is_file() else "\n".join(__import__("pipeline.data.toy_world", fromlist=["ToyWorld"]).ToyWorld().pretraining_corpus(20000))
    tokenizer = train_tokenizer([text], kind="char")
    data = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.block_size, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,  # not GPT-2's 50256: this vocabulary is small
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    total = args.warmup + args.steps
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, total // 20), total)
    step_fn = torch.compile(model) if args.compile else model

    def batch():
        starts = torch.randint(len(data) - args.block_size, (args.batch_size,))
        return torch.stack([data[s : s + args.block_size] for s in starts])

    for step in range(total):
        if step == args.warmup:
            start = time.perf_counter()
        inputs = batch()
        loss = step_fn(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"tokens_per_second": args.steps * args.batch_size * args.block_size / seconds, "final_loss": loss.item(), "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="measured steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured first steps (compilation)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()

    from pipeline.pretrain import flops_per_token

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data: {SHAKESPEARE if SHAKESPEARE.is_file() else 'toy world'}")
    peak = measure_matmul_peak()
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")

    loop = run_plain_loop(args)
    flops = flops_per_token(loop.pop("model"), args.block_size)
    with tempfile.TemporaryDirectory() as workdir:
        stage = run_stage(args, Path(workdir))

    rows = [("plain PyTorch loop", loop["tokens_per_second"]), ("pipeline.pretrain stage", stage["tokens_per_second"])]
    print(f"\nmodel: {args.n_layer} layers x {args.n_head} heads x {args.n_embd} wide, block {args.block_size}, batch {args.batch_size}, "
          f"compile={args.compile}; {flops / 6 / 1e6:.2f}M non-embedding-equivalent params; {flops / 1e6:.1f} MFLOP/token")
    print(f"{'run':<26} {'tokens/s':>10} {'MFU':>7}")
    for name, rate in rows:
        print(f"{name:<26} {rate:>10.0f} {rate * flops / peak:>7.1%}")
    print(f"stage / plain loop tokens/s ratio: {stage['tokens_per_second'] / loop['tokens_per_second']:.3f}")


if __name__ == "__main__":
    main()
