"""The few process-group steps every stage shares under `accelerate launch`.

Kept light: nothing heavy is imported until a function runs, so the chain runner can import the errors
module (which calls `end_process_group`) without torch.
"""

from __future__ import annotations


def wait_for_everyone() -> None:
    """A barrier across the launched processes; nothing in a single process."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()


def end_process_group() -> None:
    """Meet the other processes one last time and close the process group.

    Without this a process that finishes early (the others still saving, merging or evaluating on the main
    process) exits with gloo's threads still running, and the C++ runtime aborts it at exit ("terminate
    called without an active exception", SIGABRT), which fails the whole `accelerate launch`.
    """
    import sys

    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
