"""One registry style for everything built by name (datasets, heads, recipes): a dict filled by a
decorator, and a lookup whose error names the config key and the closest registered name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """`@REG.register("name")` on a class or function; `REG.lookup(name)` to look it up.

    `key` is what the user sets to choose an entry (`model.head`), so a wrong name reads as a config
    error: "model.head='lable_attention' is not a known head; did you mean 'label_attention'?".
    """

    def __init__(self, kind: str, key: str):
        super().__init__()
        self.kind, self.key = kind, key

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return add

    def lookup(self, name: str) -> T:
        if name not in self:
            close = difflib.get_close_matches(str(name), list(self), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(self))}"
            raise UnknownName(f"{self.key}={name!r} is not a known {self.kind}; {hint}")
        return self[name]


class UnknownName(InputError):
    """A name that no registry entry has; the message names the key and the closest entry."""
