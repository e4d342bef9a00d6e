"""Checkpoints of a PPO run: enough to resume after a kill and continue as if nothing had happened.

    checkpoint-<step>/
        trainable.safetensors   every trainable parameter of the actor-critic (policy or its LoRA
                                adapters, and the critic), by name
        optimizer.pt            AdamW's moments; scheduler.pt: the learning-rate schedule
        trainer_state.json      step, KL coefficient, log history; written LAST, so that a checkpoint
                                without it is incomplete and pipeline.contract.last_checkpoint skips it

Randomness needs no saving: each step seeds its own generators from (seed, step), so a resumed run
samples the same prompts and responses as an uninterrupted one would have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.contract import write_json

STATE_FILE = "trainer_state.json"  # the name pipeline.contract.last_checkpoint looks for
WEIGHTS_FILE = "trainable.safetensors"


def save_checkpoint(
    output_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any], keep: int | None
) -> Path:
    path = Path(output_dir) / f"checkpoint-{step}"
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_FILE).unlink(missing_ok=True)  # an overwritten checkpoint is incomplete until the end
    trainable = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(path / WEIGHTS_FILE))
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    write_json(path / STATE_FILE, {**state, "step": step})
    if keep:
        _prune(Path(output_dir), keep)
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer and schedule in place; return the saved state (step, KL coefficient ...)."""
    path = Path(path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = expected - set(tensors)
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
    model.load_state_dict(tensors, strict=False)
    # weights_only: a checkpoint is data, never code to unpickle.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def _prune(output_dir: Path, keep: int) -> None:
    checkpoints = sorted(
        (int(p.name.split("-")[-1]), p) for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
    )
    for _, path in checkpoints[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
