"""What a user can get wrong, as our own exception types: a command ends on one of them with one line
naming the file, key or step and exit status 2 (fastmlic/cli.py); any other exception is a bug, ours or
a library's, and keeps its traceback. This module imports nothing, so every layer may raise them."""


class UserError(Exception):
    """Input a command cannot use (a config value, a data file, a run folder, a checkpoint, a diverged
    loss...); the message says which and what to do."""


class InputError(UserError, ValueError):
    """A value, or the content of a file, that cannot be used (also a ValueError, as it always was)."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder that a command needs is not there (also a FileNotFoundError)."""


class MissingPackage(UserError):
    """An optional package a command needs is not installed; the message says what to install."""
