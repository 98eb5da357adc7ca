"""What a user can get wrong, as our own exception types: a command ends on one of them with one line
naming the file, key or step and exit status 2 (fastmlic/cli.py); any other exception is a bug, ours or
a library's, and keeps its traceback. This module imports only errno, so every layer may raise them."""

import errno


class UserError(Exception):
    """Input a command cannot use (a config value, a data file, a run folder, a checkpoint, a diverged
    loss...); the message says which and what to do."""


class InputError(UserError, ValueError):
    """A value, or the content of a file, that cannot be used (also a ValueError, as it always was)."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder that a command needs is not there (also a FileNotFoundError)."""


class MissingPackage(UserError):
    """An optional package a command needs is not installed; the message says what to install."""


class OutputError(UserError, OSError):
    """A location the file system refuses (read-only, no permission, full); the message names it."""


# what the file system answers when a location is the user's to fix, not our bug
_REFUSALS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not accessible: permission denied",
    errno.EPERM: "is not accessible: the operation is not permitted there",
    errno.ENOSPC: "cannot be written: no space left on its disk",
    errno.EDQUOT: "cannot be written: the disk quota is exhausted",
}


def refused_location(e: OSError) -> OutputError | None:
    """`e` as an OutputError naming its path where the file system refused a location, else None."""
    why = _REFUSALS.get(e.errno)
    if why is None or isinstance(e, UserError):
        return None
    path = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return OutputError(f"{path or 'a file'} {why}; write elsewhere (the command's --out, train.out_dir) or "
                       f"make room there. Nothing was left half-written")  # fmt: skip
