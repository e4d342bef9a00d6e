"""Plumbing shared by the stages that train with a `transformers`/TRL trainer."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import datasets
from transformers import TrainerCallback

from pipeline.errors import RunInterrupted

logger = logging.getLogger(__name__)

# Below this many rows the trainers' datasets.map passes (tokenize, label, pack) each take about a second.
SMALL_DATA_ROWS = 20_000


def quiet_small_data_bars(*splits: datasets.Dataset | None) -> None:
    """Switch off the progress bars of `datasets.map` for small data, where a stage would print half a dozen bars
    that each flash by in a second; large data sets keep them, where the passes take minutes."""
    if sum(len(split) for split in splits if split is not None) < SMALL_DATA_ROWS:
        datasets.disable_progress_bars()


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save a checkpoint and stop training.

    The stage then exits without a manifest, and running the same command again resumes from that
    checkpoint. A second Ctrl-C interrupts at once, as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("signal %d: saving a checkpoint after this step, then stopping (again to abort now)", signum)
        self.requested = True
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def run_training(self, trainer, checkpoint: str | None, output_dir) -> tuple[Any, float]:
        """`trainer.train()` (resumed from `checkpoint`, if any) with this callback among its callbacks.

        Returns (the train result, seconds). When a signal asked the run to stop, the trainer has saved a
        checkpoint by then, and RunInterrupted tells the user how to resume.
        """
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=checkpoint)
        seconds = time.perf_counter() - started
        self.restore()
        if self.requested:
            raise RunInterrupted(
                f"stopped at step {trainer.state.global_step}; the checkpoint is in {output_dir}. "
                "Run the same command again to resume."
            )
        return result, seconds

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


def open_trainer_run(recipe, stage: str, training_args) -> tuple[Any, str | None] | None:
    """open_stage_run for a Trainer stage, seeded: (the run, the checkpoint to resume from), or None when the
    output already holds this very run."""
    from transformers import set_seed

    from pipeline.contract import open_stage_run

    opened = open_stage_run(
        recipe,
        stage,
        training_args.output_dir,
        training_args.seed,
        training_args.should_save,
        training_args.max_steps,
        config=training_args,
    )
    if opened is not None:
        set_seed(training_args.seed)
    return opened


def steps_run(trainer, checkpoint: str | None) -> int:
    """The optimizer steps this run took itself: all of them, or those after the checkpoint it resumed from."""
    first_step = int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0
    return trainer.state.global_step - first_step


def training_figures(trainer, train_result, train_seconds: float, checkpoint: str | None) -> dict[str, Any]:
    """What every Trainer stage reports about its training: loss, steps, time, and where it resumed from."""
    steps = steps_run(trainer, checkpoint)
    return {
        "train_loss": round(train_result.training_loss, 4),
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / steps, 4) if steps > 0 else None,
        "resumed_from": checkpoint,
    }


class Throughput(TrainerCallback):
    """Adds tokens/s (and MFU when the peak FLOP/s is known) to every training log line, as nanoGPT prints."""

    def __init__(self, tokens_per_step: int, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._last_time = None
        self._last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self._last_time is None:
            return
        now = time.perf_counter()
        steps = state.global_step - self._last_step
        if steps > 0:
            tokens_per_second = steps * self.tokens_per_step / (now - self._last_time)
            extra = {"tokens_per_second": round(tokens_per_second, 1)}
            if self.flops_per_token and self.peak_flops:
                extra["mfu"] = round(tokens_per_second * self.flops_per_token / self.peak_flops, 4)
            logs.update(extra)
            # Trainer appended a copy of `logs` to the history before calling us: keep the figures there too.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(extra)
        self._last_time, self._last_step = now, state.global_step


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
