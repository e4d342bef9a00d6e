"""Throughput of the pretraining stage against a plain PyTorch training loop on the same model, and MFU.

    python benchmarks/pretrain_throughput.py                     # 6 layers x 6 heads x 384 wide, block 256, batch 8
    python benchmarks/pretrain_throughput.py --compile no --repeats 5 --steps 30

Like for like, in one process: both runs build the model with the stage's own `build_model` (same config,
same dropout), train on the same packed blocks (the stage's `load_documents` and `pack_into_blocks` on
tinyshakespeare from ../shared/data when present, else the toy world), with fused AdamW, gradient clipping
at 1.0 and a cosine schedule. The stage runs as `pipeline.pretrain.main` on a recipe (its Trainer, data
loader and callbacks included); the loop is a bare nanoGPT-style loop. Tokens/s are counted over the same
window, the steps after `--warmup` (compilation and first-step costs excluded): for the stage from its
own per-interval log, for the loop from a clock around the same steps. The two alternate `--repeats`
times per compile mode and the median and range are printed; MFU is achieved FLOP/s (6·N + 12·L·d·T per
token, as nanoGPT counts) over one fp32 matmul peak measured once, here, for both. This is a benchmark,
not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
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
    """fp32 FLOP/s of a large square matmul on this machine's threads: the MFU denominator of both runs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def stage_recipe(args, output_dir: Path, compile_model: bool) -> dict:
    return {
        "stage": "pretrain",
        "output_dir": str(output_dir),
        "dataset": str(SHAKESPEARE) if SHAKESPEARE.is_file() else "toy",
        "toy_documents": 5000,
        "tokenizer": "char",
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "n_embd": args.n_embd,
        "block_size": args.block_size,
        "dropout": args.dropout,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-3,
        "max_steps": args.warmup + args.steps,
        "logging_steps": args.log_every,
        "eval_strategy": "no",
        "save_strategy": "no",
        "torch_compile": compile_model,
        "optim": "adamw_torch_fused",
        "max_grad_norm": 1.0,
        "decoding_strategies": ["greedy"],
        "num_sample_prompts": 1,
        "sample_max_new_tokens": 4,
        "use_cpu": True,
        "bf16": False,
        "disable_tqdm": True,
        "seed": 0,
    }


def run_stage(args, recipe: dict, workdir: Path) -> float:
    """The real stage, as a user runs it; tokens/s over the steps after the warm-up, from its own log."""
    from pipeline.pretrain import main

    path = workdir / "stage.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its log lines
        main(["--config", str(path), "--force"])
    history = json.loads((Path(recipe["output_dir"]) / "log_history.json").read_text())
    # Each log entry carries the tokens/s of the interval it closes; with warmup a multiple of log_every
    # the intervals after the warm-up cover exactly the measured window.
    window = [entry for entry in history if "tokens_per_second" in entry and entry["step"] > args.warmup]
    tokens_per_interval = args.log_every * args.batch_size * args.block_size
    return (
        len(window) * tokens_per_interval / sum(tokens_per_interval / entry["tokens_per_second"] for entry in window)
    )


def run_plain_loop(args, recipe: dict, compile_model: bool) -> tuple[float, float]:
    """The same training as a bare loop: same model builder, same blocks, same optimizer; (tokens/s, FLOP/token)."""
    from transformers import get_cosine_schedule_with_warmup

    from pipeline.data.packing import pack_into_blocks
    from pipeline.pretrain import (
        PretrainArguments,
        build_model,
        build_tokenizer,
        flops_per_token,
        load_documents,
    )

    known = set(PretrainArguments.__dataclass_fields__) - {"path_fields"}
    stage_args = PretrainArguments(**{key: value for key, value in recipe.items() if key in known})
    train_documents, _ = load_documents(stage_args, seed=0)
    tokenizer = build_tokenizer(stage_args, train_documents, Path("/nonexistent"))
    blocks = torch.tensor(pack_into_blocks(train_documents, tokenizer, args.block_size)["input_ids"])
    torch.manual_seed(0)
    model = build_model(stage_args, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    total = args.warmup + args.steps
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, total)
    step_fn = torch.compile(model) if compile_model else model
    order = torch.randperm(len(blocks))
    for step in range(total):
        if step == args.warmup:
            start = time.perf_counter()
        rows = order[(step * args.batch_size + torch.arange(args.batch_size)) % len(blocks)]
        inputs = blocks[rows]
        loss = step_fn(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return args.steps * args.batch_size * args.block_size / seconds, flops_per_token(model, args.block_size)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>9.0f} ({min(values):.0f} .. {max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--dropout", type=float, default=0.0, help="both runs: the model is built by the stage's builder"
    )
    parser.add_argument("--steps", type=int, default=40, help="measured steps (after warm-up)")
    parser.add_argument(
        "--warmup", type=int, default=10, help="unmeasured first steps (compilation); a multiple of --log-every"
    )
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating repetitions of loop and stage per compile mode"
    )
    parser.add_argument("--compile", choices=("no", "yes", "both"), default="both")
    args = parser.parse_args()
    if args.warmup % args.log_every:
        parser.error("--warmup must be a multiple of --log-every (the stage's log intervals define its window)")

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"data: {SHAKESPEARE if SHAKESPEARE.is_file() else 'toy world'}"
    )
    peak = measure_matmul_peak()
    print(f"fp32 matmul peak, measured once for both runs: {peak / 1e9:.1f} GFLOP/s\n")

    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    results: dict[bool, dict[str, list[float]]] = {}
    flops = 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for compile_model in modes:
            rates: dict[str, list[float]] = {"loop": [], "stage": []}
            recipe = stage_recipe(args, Path(workdir) / "stage", compile_model)
            for repeat in range(args.repeats):
                torch._dynamo.reset()
                loop_rate, flops = run_plain_loop(args, recipe, compile_model)
                rates["loop"].append(loop_rate)
                torch._dynamo.reset()
                rates["stage"].append(run_stage(args, recipe, Path(workdir)))
                print(
                    f"compile={compile_model} repeat {repeat + 1}: loop {rates['loop'][-1]:.0f}, "
                    f"stage {rates['stage'][-1]:.0f} tokens/s",
                    flush=True,
                )
            results[compile_model] = rates

    print(
        f"\nmodel: {args.n_layer} layers x {args.n_head} heads x {args.n_embd} wide, block {args.block_size}, batch "
        f"{args.batch_size}, dropout {args.dropout}; {flops / 1e6:.1f} MFLOP/token; {args.steps} measured steps after "
        f"{args.warmup}; median (range) over {args.repeats} alternating repetitions"
    )
    print(f"{'compile':<8} {'run':<7} {'tokens/s, median (range)':>30} {'MFU':>7} {'stage / loop':>24}")
    for compile_model, rates in results.items():
        ratios = [stage / loop for stage, loop in zip(rates["stage"], rates["loop"])]
        for name in ("loop", "stage"):
            mfu = statistics.median(rates[name]) * flops / peak
            ratio = (
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f} .. {max(ratios):.3f})" if name == "stage" else ""
            )
            print(f"{str(compile_model):<8} {name:<7} {summary(rates[name]):>30} {mfu:>7.1%} {ratio:>24}")


if __name__ == "__main__":
    main()
