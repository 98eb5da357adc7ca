"""One registry style for everything built by name (datasets, heads, recipes): a dict filled by a
decorator, and a lookup whose error names the config key and the closest registered name."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """`@REG.register("name")` on a class or function; `REG.lookup(name)` to look it up.

    `key` is what the user sets to choose an entry (`model.head`), so a wrong name reads as a config
    error: "model.head='lable_attention' is not a known head; did you mean 'label_attention'?".
    `load` imports the modules that register entries from elsewhere (recipes: fastmlic/plugins.py): it
    runs before the first read, so the registry is complete whoever reads it first, and again when a
    name is not found (a recipe added while the process runs). Entries are listed by name: the order
    does not depend on which module happened to be imported first.
    """

    def __init__(self, kind: str, key: str, load: Callable[[], None] | None = None):
        super().__init__()
        self.kind, self.key = kind, key
        self._load, self._loading, self._loaded = load, False, False
        self._lock = threading.RLock()  # one thread loads while the others wait for a complete registry

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if dict.__contains__(self, name):
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return add

    def lookup(self, name: str) -> T:
        if name not in self:
            self.complete(again=True)
        if name not in self:
            close = difflib.get_close_matches(str(name), list(self), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(self))}"
            raise UnknownName(f"{self.key}={name!r} is not a known {self.kind}; {hint}")
        return self[name]

    def complete(self, again: bool = False) -> Registry[T]:
        """Every entry registered, those of modules loaded on demand included (`again`: look again)."""
        if self._load is None or (self._loaded and not again):
            return self
        with self._lock:
            if not self._loading:  # else a module this thread is loading reads it: as far as it is
                self._loading = True
                try:
                    self._load()
                    self._loaded = True
                finally:
                    self._loading = False
        return self

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self.complete(), name)

    def __getitem__(self, name: str) -> T:
        return dict.__getitem__(self.complete(), name)

    def __iter__(self):
        return iter(sorted(dict.keys(self.complete())))

    def __len__(self) -> int:
        return dict.__len__(self.complete())

    def keys(self) -> list[str]:
        return list(self)

    def values(self) -> list[T]:
        return [dict.__getitem__(self, name) for name in self]

    def items(self) -> list[tuple[str, T]]:
        return [(name, dict.__getitem__(self, name)) for name in self]


class UnknownName(InputError):
    """A name that no registry entry has; the message names the key and the closest entry."""
