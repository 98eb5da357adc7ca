"""torchrun, ending in one line when a rank fails:

    python -m fastmlic.launch --nproc_per_node 8 fastmlic/train.py --cfg vg500.yaml    # as torchrun takes it

torchrun ends a run in which a rank exited non-zero by raising ChildFailedError: its traceback and a
table of failures follow the rank's own one-line error (`error (rank R): ...`), and bury it. This runs
torchrun's own launcher (torch.distributed.run: the same options, rendezvous, restarts and signal
handling) and turns that ending into one line naming the failed ranks and their exit codes. It exits
with the code of the rank that failed first: 2 after bad input, 128 + N for a rank killed by signal N. A
SIGTERM or Ctrl-C to the launcher is passed on to the ranks by torchrun's agent (each rank saves and
says how to resume); the launcher then ends in one line and exits 128 + the signal's number.
"""

from __future__ import annotations

import sys


def exit_code(code: int) -> int:
    """A rank's exit code as a shell reports it: a negative code is a kill by that signal."""
    return 128 - code if code < 0 else code or 1


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:  # the agent has passed the signal on and stopped the ranks
        print(f"launch: stopped by {e.sigval.name}; the ranks' own lines above say what they saved",
              file=sys.stderr)  # fmt: skip
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        failed = sorted(e.failures.items())
        ranks = ", ".join(f"rank {rank} exited with {exit_code(f.exitcode)}" for rank, f in failed)
        print(f"launch: {ranks}; what failed is printed above", file=sys.stderr)
        # the first to fail is the cause; torchrun stops the others (a SIGTERM, 143) once one fails
        return exit_code(e.get_first_failure()[1].exitcode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
