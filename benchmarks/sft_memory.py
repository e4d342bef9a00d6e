"""Peak memory and step time of full fine-tuning vs LoRA vs QLoRA, and of the SFT stage vs TRL directly.

    python benchmarks/sft_memory.py                       # GPT-2-medium shape: 24 layers x 1024 wide, vocab 50257
    python benchmarks/sft_memory.py --n-layer 6 --steps 8 --modes "" --repeats 3   # stage vs direct only, lighter

A benchmark, not a test: it prints numbers and ratios and judges two goals, QLoRA peak <= 0.4 x full
fine-tune peak, and the stage's step time within 5% of calling SFTTrainer directly.

What the memory ratio means: full fine-tuning holds weights + gradients + two AdamW moments (16 bytes a
parameter), LoRA the frozen weights (4 bytes), QLoRA 4-bit weights (~0.5 byte) plus the unquantized
embeddings; the activations are the same in all three and grow with batch x length. The default batch
(2 x 128 tokens) keeps them small beside the weights; at larger batches the ratio moves toward 1 unless
activations are recomputed (--gradient-checkpointing, as the QLoRA paper does).

How: one randomly initialised GPT-2-medium-shaped model (the vocabulary keeps GPT-2's 50257 rows, so the
embeddings weigh what they weigh in GPT-2; the tokenizer is the pipeline's char tokenizer, which uses
only the first ids) is saved with `save_pretrained` into a temporary folder, with a JSON Lines file of
fixed-length prompt/completion pairs. Each measurement runs in its own process, so that one mode's
memory never counts in another's:
  stage MODE   pipeline.sft.main() on a recipe for MODE (full, lora or qlora);
  direct MODE  trl.SFTTrainer with the same SFTConfig values and LoRA settings, without the stage.
A callback reads the memory and times each optimizer step. Memory is the peak of the *training phase*:
on a GPU torch.cuda.max_memory_allocated (reset when training starts), on a CPU the peak resident set
size VmHWM (reset through /proc/self/clear_refs when training starts, after handing memory freed while
loading back to the OS with malloc_trim). The process's lifetime peak (loading, merging, generation
included) and the bytes of the weights are printed beside it. Step time is the median over the steps
after the first, in wall time and in process CPU time (on a shared CPU the latter compares code paths
more fairly: it does not count the waiting for cores other programs hold, and the stage-vs-direct goal
is judged on it there); the stage and direct runs alternate `--repeats` times and the fastest of each
counts, since other work on the machine only ever slows a run down.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("full", "lora", "qlora")
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_modules": ["c_attn", "c_proj", "c_fc"]}


def training_values(args: argparse.Namespace, cuda: bool) -> dict:
    """The SFTConfig values both runners use (the stage's own defaults differ from TRL's: all set here)."""
    return {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size,
        "max_length": args.seq_len,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "bf16": cuda,
        "gradient_checkpointing": args.gradient_checkpointing,
        "use_cpu": not cuda,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }


# --- what each worker process measures ----------------------------------------------------------------


def _vm_hwm_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def step_timer():
    """A TrainerCallback that times optimizer steps and reads the training phase's peak memory."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu_times, self.peak_mb, self.before_train_peak_mb = [], [], None, 0.0
            self._start = self._cpu_start = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # What the weights themselves take (a 4-bit tensor is stored packed, two weights per byte).
            self.weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                return
            # Resetting VmHWM also resets getrusage's ru_maxrss: keep the peak so far for the lifetime peak.
            self.before_train_peak_mb = _vm_hwm_mb()
            # Memory freed while loading (e.g. the fp32 weights QLoRA quantized) stays in the process until
            # the C allocator hands it back; without this the "training" peak would include it.
            gc.collect()
            if sys.platform.startswith("linux"):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

        def on_step_begin(self, args, state, control, **kwargs):
            self._start, self._cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu_start)

        def on_train_end(self, args, state, control, **kwargs):
            cuda = torch.cuda.is_available()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else _vm_hwm_mb()

    return StepTimer()


def run_stage(mode: str, model_dir: Path, data: Path, work: Path, values: dict):
    import yaml

    from pipeline import sft

    recipe = {
        "stage": "sft",
        "output_dir": str(work / f"stage_{mode}"),
        "model_name_or_path": str(model_dir),
        "dataset": str(data),
        "eval_fraction": 0.01,
        "max_eval_examples": 2,
        "num_samples": 1,
        "sample_max_new_tokens": 2,
        "use_peft": mode != "full",
        "load_in_4bit": mode == "qlora",
        "bnb_4bit_quant_type": "nf4",
        "use_bnb_nested_quant": True,
        "dtype": "bfloat16" if values["bf16"] and mode == "qlora" else "float32",
        "merge_adapters": False,
        **(LORA if mode != "full" else {}),
        **values,
    }
    path = work / f"stage_{mode}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    timer = step_timer()
    build_trainer = sft.build_trainer

    def build_and_time(*args, **kwargs):  # the stage's own trainer, with the timer added
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(timer)
        return trainer

    sft.build_trainer = build_and_time
    sft.main(["--config", str(path), "--force"])  # --force: a repeat must not find the last run finished
    metrics = json.loads((work / f"stage_{mode}" / "metrics.json").read_text())
    return timer, metrics["trainable_parameters"], metrics["parameters"]


def run_direct(mode: str, model_dir: Path, data: Path, work: Path, values: dict):
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from pipeline.data.sft_formats import load_sft_dataset

    dataset, _ = load_sft_dataset(str(data))
    config = SFTConfig(output_dir=str(work / f"direct_{mode}"), **values)
    if mode == "qlora":
        compute = torch.bfloat16 if values["bf16"] else torch.float32
        config.model_init_kwargs = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
        }
    peft_config = None
    if mode != "full":
        peft_config = LoraConfig(
            r=LORA["lora_r"],
            lora_alpha=LORA["lora_alpha"],
            lora_dropout=LORA["lora_dropout"],
            target_modules=LORA["lora_target_modules"],
            task_type="CAUSAL_LM",
        )
    timer = step_timer()
    trainer = SFTTrainer(
        model=str(model_dir),
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return timer, trainable, None


def worker(runner: str, mode: str, model_dir: Path, data: Path, work: Path, values: dict) -> dict:
    import resource

    timer, trainable, total = (run_stage if runner == "stage" else run_direct)(mode, model_dir, data, work, values)
    steady = timer.times[1:] or timer.times
    steady_cpu = timer.cpu_times[1:] or timer.cpu_times
    return {
        "runner": runner,
        "mode": mode,
        "train_peak_mb": round(timer.peak_mb, 1),
        "weights_mb": round(timer.weights_mb, 1),
        "process_peak_mb": round(
            max(timer.before_train_peak_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1
        ),
        "step_seconds": round(statistics.median(steady), 4),
        "step_cpu_seconds": round(statistics.median(steady_cpu), 4),
        "step_seconds_all": [round(t, 3) for t in timer.times],
        "trainable_parameters": trainable,
        "parameters": total,
    }


# --- the parent: build the model once, run the workers, print the table -------------------------------


def build_model_and_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.data.toy_world import CHARSET
    from pipeline.tokenization import train_tokenizer

    tokenizer = train_tokenizer([CHARSET], kind="char")
    config = GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model_dir = work / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    # Fixed-length pairs, so every step sees the same number of tokens: a quarter prompt, the rest response.
    letters = "abcdefghijklmnopqrstuvwxyz"
    prompt_len = args.seq_len // 4 - len("User: \nBot:")
    completion_len = args.seq_len - args.seq_len // 4 - 1  # - 1 for the EOS that TRL appends
    data = work / "pairs.jsonl"
    with open(data, "w") as handle:
        for i in range(max(64, args.batch_size * (args.steps + 2))):
            body = "".join(letters[(i * 7 + j) % 26] for j in range(prompt_len))
            handle.write(
                json.dumps(
                    {"prompt": f"User: {body}\nBot:", "completion": " " + letters[i % 26] * (completion_len - 1)}
                )
                + "\n"
            )
    return model_dir, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=24, help="GPT-2 medium: 24")
    parser.add_argument("--n-embd", type=int, default=1024, help="GPT-2 medium: 1024")
    parser.add_argument("--n-head", type=int, default=16, help="GPT-2 medium: 16")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in every mode (QLoRA's usual setting)")
    parser.add_argument("--modes", default="full,lora,qlora", help="modes run through the stage")
    parser.add_argument("--direct", default="lora", help="modes also run through SFTTrainer directly")
    parser.add_argument("--repeats", type=int, default=2, help="alternating direct/stage runs per compared mode")
    parser.add_argument("--worker", nargs=3, metavar=("RUNNER", "MODE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    values = training_values(args, cuda)
    if args.worker:
        runner, mode, work = args.worker
        work = Path(work)
        result = worker(runner, mode, work / "model", work / "pairs.jsonl", work, values)
        print("RESULT " + json.dumps(result), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="sft_memory_") as directory:
        work = Path(directory)
        model_dir, _ = build_model_and_data(args, work)
        print(
            f"model: GPT-2 shape, {args.n_layer} layers x {args.n_embd} wide, {args.n_head} heads, vocab 50257 "
            f"(random init, saved in {model_dir}); batch {args.batch_size} x {args.seq_len} tokens, "
            f"{args.steps} steps, "
            f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
            f"device {'cuda: ' + torch.cuda.get_device_name() if cuda else f'cpu ({os.cpu_count()} cores)'}",
            flush=True,
        )
        # Stage and direct runs alternate, `--repeats` times, so that a busy machine slows both alike.
        runs = [("stage", mode) for mode in args.modes.split(",") if mode]
        for _ in range(args.repeats):
            runs += [(runner, mode) for mode in args.direct.split(",") if mode for runner in ("direct", "stage")]
        results = []
        for runner, mode in runs:
            started = time.time()
            command = [sys.executable, __file__, *sys.argv[1:], "--worker", runner, mode, str(work)]
            process = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            )
            lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
            if process.returncode != 0 or not lines:
                print(f"{runner} {mode}: failed (exit {process.returncode})\n{process.stderr[-3000:]}", flush=True)
                continue
            result = json.loads(lines[-1][len("RESULT ") :])
            results.append(result)
            print(f"{runner:<7} {mode:<6} done in {time.time() - started:.0f} s: {json.dumps(result)}", flush=True)
        report(results, cuda)


def report(results: list[dict], cuda: bool) -> None:
    """The table, then ratios. Repeated runs of one (runner, mode) count with their fastest median step
    (the least disturbed by other work on the machine) and their lowest peak."""
    memory = "peak CUDA memory allocated" if cuda else "peak RSS (VmHWM)"
    print(
        f"\n{'runner':<7} {'mode':<6} {'training ' + memory:>30} {'weights':>10} {'process peak RSS':>17} "
        f"{'step (median)':>14} {'step CPU time':>14} {'trainable':>12}"
    )
    for r in results:
        print(
            f"{r['runner']:<7} {r['mode']:<6} {r['train_peak_mb']:>27.0f} MB {r['weights_mb']:>7.0f} MB "
            f"{r['process_peak_mb']:>14.0f} MB "
            f"{r['step_seconds']:>12.3f} s {r['step_cpu_seconds']:>12.3f} s {r['trainable_parameters']:>12,}"
        )
    by: dict[tuple[str, str], dict] = {}
    for r in results:
        best = by.setdefault((r["runner"], r["mode"]), dict(r))
        for key in ("step_seconds", "step_cpu_seconds", "train_peak_mb"):
            best[key] = min(best[key], r[key])
    print()
    full = by.get(("stage", "full"))
    for mode in ("lora", "qlora"):
        if full and ("stage", mode) in by:
            r = by[("stage", mode)]
            ratio = r["train_peak_mb"] / full["train_peak_mb"]
            goal = f" (goal <= 0.40: {'met' if ratio <= 0.4 else 'NOT met'})" if mode == "qlora" else ""
            print(
                f"{mode} / full: training peak memory x{ratio:.2f}{goal}, "
                f"step time x{r['step_seconds'] / full['step_seconds']:.2f}"
            )
    for (runner, mode), direct in by.items():
        if runner == "direct" and ("stage", mode) in by:
            stage = by[("stage", mode)]
            ratio = stage["step_seconds"] / direct["step_seconds"]
            # Process CPU time per step counts the work done, not the waiting for cores that other
            # programs hold, so on a shared CPU it compares the two code paths more fairly than wall time.
            cpu_ratio = stage["step_cpu_seconds"] / direct["step_cpu_seconds"]
            judged = cpu_ratio if not cuda else ratio
            # The goal bounds the stage's overhead; a stage that comes out faster is run-to-run noise, said as such.
            verdict = "met" if judged <= 1.05 else "NOT met"
            if judged < 0.95:
                verdict += f": the stage came out {1 - judged:.0%} faster, which is noise between runs, not a speed-up"
            print(
                f"stage / direct SFTTrainer ({mode}): step time x{ratio:.3f} wall, x{cpu_ratio:.3f} process CPU "
                f"(goal: at most 5% slower; {verdict}), "
                f"training peak memory x{stage['train_peak_mb'] / direct['train_peak_mb']:.2f}"
            )


if __name__ == "__main__":
    main()
