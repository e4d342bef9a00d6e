"""The PPO loop: from the start or a checkpoint to max_steps, one ppo_step per step, each logged (and sent to the
trackers), a checkpoint every save_steps, and on SIGTERM or Ctrl-C a checkpoint and a clean stop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.errors import RunInterrupted
from pipeline.rl.checkpoint import load_checkpoint, save_checkpoint
from pipeline.rl.config import PPOConfig
from pipeline.rl.metrics import summary_line
from pipeline.rl.prompts import step_prompts
from pipeline.rl.setup import PPOParts
from pipeline.rl.step import ppo_step
from pipeline.tracking import scalars
from pipeline.training import GracefulInterrupt

logger = logging.getLogger(__name__)


def resume(parts: PPOParts, checkpoint: str | None) -> tuple[int, list[dict[str, Any]]]:
    """(the last step done, the log history so far): restored from `checkpoint` in place, or (0, [])."""
    start_step, log_history = 0, []
    if checkpoint:
        accelerator, model, optimizer, scheduler = parts.accelerator, parts.model, parts.optimizer, parts.scheduler
        state = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        start_step, log_history = state["step"], state["log_history"]
        parts.kl_control.load_state_dict(state["kl_control"])
        logger.info("resumed from %s at step %d", checkpoint, start_step)
    return start_step, log_history


def train_ppo(
    parts: PPOParts,
    config: PPOConfig,
    train_prompts: list[str],
    output_dir: Path,
    start_step: int,
    log_history: list[dict[str, Any]],
) -> float:
    """Steps start_step + 1 .. max_steps, appending each step's entry to `log_history`. Returns the seconds taken."""
    accelerator, model, optimizer, scheduler = parts.accelerator, parts.model, parts.optimizer, parts.scheduler
    kl_control = parts.kl_control
    interrupt = GracefulInterrupt()
    started = time.perf_counter()
    for step in range(start_step + 1, config.max_steps + 1):
        prompts = step_prompts(
            train_prompts,
            step,
            config.per_device_train_batch_size,
            config.seed,
            accelerator.process_index,
            accelerator.num_processes,
            config.samples_per_prompt,
        )
        entry = ppo_step(step, parts, prompts, config)
        log_history.append(entry)
        if step % config.logging_steps == 0 or step == config.max_steps:
            logger.info(summary_line(entry, config.max_steps))
            accelerator.log(scalars(entry), step=step)
        if step % config.save_steps == 0 or interrupt.requested:
            if accelerator.is_main_process:
                state = {"log_history": log_history, "kl_control": kl_control.state_dict()}
                save_checkpoint(
                    output_dir,
                    step,
                    accelerator.unwrap_model(model),
                    optimizer,
                    scheduler,
                    state,
                    config.save_total_limit,
                )
            accelerator.wait_for_everyone()
        if interrupt.requested:
            raise RunInterrupted(
                f"stopped at step {step}; the checkpoint is in {output_dir}. Run the same command again to resume."
            )
    train_seconds = time.perf_counter() - started
    interrupt.restore()
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group evaluation still needs
        tracker.finish()
    return train_seconds
