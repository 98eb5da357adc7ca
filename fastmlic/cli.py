"""The one way every command ends on bad input: `error: <what and where>` and exit status 2,
without a traceback (the message already names the file, key or step)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .config import ConfigError
from .data import DataError
from .distributed import cleanup
from .engine import NonFiniteLoss

USER_ERRORS = (ConfigError, DataError, FileNotFoundError, FileExistsError, ValueError, NonFiniteLoss)


def exit_on_user_error(main: Callable[[], object]) -> int:
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        cleanup()
        return 2
    return 0
