"""The one way every command ends on bad input: `error: <what and where>` and exit status 2,
without a traceback (the message already names the file, key or step). Under torchrun the message
names the rank. A preempted training run exits with PREEMPTED (fastmlic/preemption.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .preemption import PREEMPTED, Preempted


class UserError(RuntimeError):
    """Input that a command cannot use (data, run folder, diverged loss...); the modules that raise it
    subclass it (DataError, RunFolderError, NonFiniteLoss), so this module imports none of them, nor
    the torch that they import: `--help` and a bad option answer at once."""


class MissingPackage(UserError):
    """An optional package a command needs is not installed; the message says what to install."""


# ConfigError and the errors of file readers are ValueErrors
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, ValueError)


def probability(text: str) -> float:
    """argparse type: a score threshold in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1] (a sigmoid score)")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def exit_on_user_error(main: Callable[[], object]) -> int:
    rank = int(os.environ.get("RANK", 0)) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
    where = f" (rank {rank})" if rank is not None else ""
    try:
        main()
    except Preempted:
        _cleanup()
        return PREEMPTED  # the trainer has printed where it saved and how to continue
    except USER_ERRORS as e:
        print(f"error{where}: {e}", file=sys.stderr)
        _cleanup()
        return 2
    except Exception as e:  # a bug or a failed rank: the traceback, then one line saying which rank
        if rank is not None:
            print(f"rank {rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    return 0


def _cleanup() -> None:
    """Leave the process group, if fastmlic.distributed made one: a command that never imported it
    (and so torch) has none."""
    distributed = sys.modules.get("fastmlic.distributed")
    if distributed is not None:
        distributed.cleanup()
