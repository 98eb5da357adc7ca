"""Preemption: clusters ask a job to stop before they kill it, and people press Ctrl-C. SIGTERM
(Kubernetes, torchrun passing its own on, most schedulers), SIGUSR1 (SLURM's `--signal=USR1@120`) and
SIGINT make the trainer finish the current step, save a checkpoint on every rank's behalf, print the
`--resume` command and exit: with status PREEMPTED, or 130 (a shell's code for Ctrl-C) after SIGINT.
A second signal stops the process at once, as if nothing listened."""

from __future__ import annotations

import os
import signal
import sys
import threading

PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: "try again later", which a requeue script can test for
INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a program Ctrl-C stopped
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after saving; the message says where and how to continue."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return INTERRUPTED if self.signum == signal.SIGINT else PREEMPTED


def ignore_interrupts(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: Ctrl-C reaches the whole process group, and the main process saves
    after the step only if the workers that feed that step are still alive."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopSignals:
    """While entered (in the main thread), remembers the first stop signal in `received`."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python only signals the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: saving after this step, then stopping "
              "(send it again to stop at once, without saving)", file=sys.stderr, flush=True)  # fmt: skip
