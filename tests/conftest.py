"""Shared test setup: no network, tiny recipes written into temporary folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A pretraining recipe small enough for a test: a 1-layer, 32-wide char GPT on 1,500 toy dialogues.
TINY_PRETRAIN = {
    "stage": "pretrain",
    "dataset": "toy",
    "toy_documents": 1500,
    "tokenizer": "char",
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 64,
    "learning_rate": 3.0e-3,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_steps": 40,
    "logging_steps": 5,
    "eval_steps": 20,
    "save_steps": 20,
    "save_total_limit": 2,
    "num_sample_prompts": 8,
    "sample_max_new_tokens": 16,
    "decoding_strategies": ["greedy", "temperature_1.0", "top_k_10", "top_p_0.9", "beam_3"],
    "seed": 7,
    "use_cpu": True,
    "bf16": False,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}


def write_recipe(path: Path, values: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """The pretraining stage run once per test session on TINY_PRETRAIN: the tiny base that SFT, reward and PPO
    tests start from (nothing writes into it)."""
    from pipeline import pretrain

    root = tmp_path_factory.mktemp("tiny_pretrained")
    recipe = write_recipe(root / "pretrain.yaml", {**TINY_PRETRAIN, "output_dir": str(root / "pretrain")})
    pretrain.main(["--config", str(recipe)])
    return root / "pretrain"


@pytest.fixture
def tiny_pretrain_recipe(tmp_path: Path):
    """A factory: tiny_pretrain_recipe(name, **overrides) -> recipe path with output_dir under tmp_path."""

    def make(name: str = "pretrain", **overrides) -> Path:
        values = {**TINY_PRETRAIN, "output_dir": str(tmp_path / "runs" / name), **overrides}
        return write_recipe(tmp_path / "recipes" / f"{name}.yaml", values)

    return make


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: int = 600):
    """Run `python -m module args...` as a user would; returns the CompletedProcess."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` by its SHA-256 (empty when it does not exist): equal snapshots, untouched files."""
    import hashlib

    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_in_process(module: str, *args: str):
    """`python -m module args...` without a new interpreter: the module's main through run_cli, as its __main__
    block runs it, with stdout and stderr captured; returns a CompletedProcess. For command-line checks that
    need no process of their own (an error message, an exit status): it saves the ~7 s of imports a fresh
    interpreter pays. A traceback would surface here as the exception itself."""
    import contextlib
    import importlib
    import io
    import subprocess

    from pipeline.errors import run_cli

    main = importlib.import_module(module).main
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    """A TCP port nobody listens on now: each two-process launch gets its own, so that launches of tests running
    side by side (pytest -n) never meet on accelerate's default 29500."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(*args: str, timeout: int = 600):
    """`accelerate launch` with two CPU processes (recipes/accelerate/cpu2.yaml) of `args`, e.g. "-m", "pipeline.sft",
    "--config", FILE, as a user would; returns the CompletedProcess."""
    import subprocess

    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            str(accelerate),
            "launch",
            "--config_file",
            str(REPO / "recipes" / "accelerate" / "cpu2.yaml"),
            "--main_process_port",
            str(free_port()),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def save_tiny_gpt2(
    directory: Path,
    n_embd: int = 32,
    n_layer: int = 1,
    n_positions: int = 128,
    texts: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """A random GPT-2 (no training) with a char tokenizer of `texts` (default: toy dialogues), saved like a stage
    output."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.data.toy_world import ToyWorld
    from pipeline.tokenization import train_tokenizer

    tokenizer = train_tokenizer(texts or ToyWorld(seed=0).pretraining_corpus(300), kind="char")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
