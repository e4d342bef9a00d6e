"""User-facing errors and the command-line wrapper that turns them into one clear message.

A `UserError` is a mistake the user can fix (a recipe key, a data line, a path): it is printed as
one message with what went wrong, where, and how to fix it, and the process exits with status 2.
Everything else is a bug and keeps its traceback. `--debug` keeps the traceback for user errors too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

logger = logging.getLogger("pipeline")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


class RecipeError(UserError):
    """A recipe file is wrong: unknown key, wrong type, value out of range, missing path."""


class DataError(UserError):
    """A data file is wrong: empty, malformed line, missing column."""


class RunInterrupted(UserError):
    """The run was stopped by a signal after saving a checkpoint; re-running resumes it."""


def setup_logging(level: int = logging.INFO) -> None:
    """One format for the project's and the libraries' loggers; only the main process logs INFO.

    Under `accelerate launch` every process runs the same code: the others log warnings and errors only,
    and show no progress bars, so a 2-process run prints its story once.
    """
    import os

    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:
        level = logging.WARNING
        try:
            import datasets

            datasets.disable_progress_bars()
        except ImportError:
            pass
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        import transformers

        (
            transformers.utils.logging.set_verbosity_warning()
            if is_main
            else transformers.utils.logging.set_verbosity_error()
        )
    except ImportError:  # the chain runner imports this module without the heavy stack
        pass


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a stage or tool `main(argv)`; user errors become one message and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    setup_logging()
    try:
        main(argv)
    except UserError as error:
        # The other processes (under accelerate launch) meet the same error in the same place, or are ended
        # by the launcher when this one exits: no closing barrier here, it could wait for ever.
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED if isinstance(error, RunInterrupted) else EXIT_USER_ERROR)
    from pipeline.distributed import end_process_group

    end_process_group()
