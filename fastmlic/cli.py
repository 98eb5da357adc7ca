"""The one way every command ends on bad input: `error: <what and where>` and exit status 2,
without a traceback (the message already names the file, key or step). Bad input is a `UserError`
(fastmlic/errors.py), or a location the file system refuses (read-only, forbidden, full), and nothing
else: an exception of any other type, ours or a library's, is a bug
and keeps its traceback. Under torchrun the message names the rank. A preempted training run exits
with PREEMPTED, or 130 after Ctrl-C (fastmlic/preemption.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .errors import UserError, refused_location
from .preemption import Preempted


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
    except Preempted as e:
        _cleanup()
        return e.exit_code  # the trainer has printed where it saved and how to continue
    except UserError as e:
        print(f"error{where}: {e}", file=sys.stderr)
        return _end_after_user_error(rank)
    except OSError as e:  # a read-only, forbidden or full location is the user's to fix; others are bugs
        if (refused := refused_location(e)) is None:
            raise
        print(f"error{where}: {refused}", file=sys.stderr)
        return _end_after_user_error(rank)
    except Exception as e:  # a bug or a failed rank: the traceback, then one line saying which rank
        if rank is not None:
            print(f"rank {rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    return 0


def _end_after_user_error(rank: int | None) -> int:
    """2, after the process group is torn down; a rank under torchrun leaves at once instead. Its peers
    fail on the same input or are stopped by torchrun, and tearing a Gloo group down while they go
    aborted the process in C++ now and then ("terminate called without an active exception", exit 134
    instead of 2). Run logs are appended and closed a line at a time, so nothing is lost by leaving."""
    if rank is None:
        _cleanup()
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


def _cleanup() -> None:
    """Leave the process group, if fastmlic.distributed made one: a command that never imported it
    (and so torch) has none."""
    distributed = sys.modules.get("fastmlic.distributed")
    if distributed is not None:
        distributed.cleanup()
