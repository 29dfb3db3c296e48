"""A subcommand as one of several ranks under torchrun (``python3 -m torch.distributed.run
--nproc-per-node N -m circuits -- discover --n 100 ...``; the ``--`` keeps torchrun's own parser
from reading ``--n`` as an abbreviation of its ``--nnodes``): every rank runs the same command
on the same pairs, the library shards them and all-reduces the sums (circuits/distributed.py),
and rank 0 alone prints and writes the run directory (rundir.py gives the other ranks a scratch
folder).

- The process group comes from torchrun's environment: gloo on the CPU, NCCL with CUDA (each
  rank on cuda:LOCAL_RANK).
- Ranks other than 0 print nothing on stdout and show no progress bars; their errors still go to
  stderr, each line tagged with its rank.
- A rank that fails leaves its error in the rendezvous store and exits; the others stop at their
  next collective (or on torchrun's SIGTERM, turned into an exit that cleans up) with an error
  naming it, and rank 0 never moves a run into place unless every rank reached the end.
- Commands whose work is not a sum over pairs (render, view, features, label, export) are
  refused under torchrun: they run in one process.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

from circuits import distributed
from circuits.cli.common import UsageError, check_device

DATA_PARALLEL = ("discover", "sweep", "evaluate", "compare")


@contextmanager
def data_parallel(args: argparse.Namespace) -> Iterator[None]:
    """Join torchrun's process group for the command (and leave it after); one process, or a
    group the caller joined: nothing to do."""
    if not distributed.launched() or distributed.active():
        yield
        return
    if args.command not in DATA_PARALLEL:
        raise UsageError(f"circuits {args.command} runs in one process, not under torchrun "
                         f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); only "
                         f"{', '.join(DATA_PARALLEL)} run data-parallel")
    check_device(args.device)
    try:
        args.device = distributed.init_from_env(args.device)
    except ValueError as err:
        raise UsageError(str(err)) from err
    args.world_size = distributed.world_size()  # recorded in run.json
    previous = signal.signal(signal.SIGTERM, _terminated(args.command))
    try:
        if distributed.is_main():
            yield
        else:
            args.quiet = True  # no progress bars, no loading messages
            with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
                yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.leave()


def _terminated(command: str):
    """SIGTERM (torchrun stops every rank once one has failed) as an exit that runs the cleanup
    (a partial run directory is removed) and says why."""

    def handler(signum, frame):
        notes = distributed.failure_notes()
        raise SystemExit(f"circuits {command}: error{tag()}: stopped by SIGTERM (torchrun stops "
                         "every rank when one fails)" + (f": {notes}" if notes else ""))

    return handler


def tag() -> str:
    """' (rank 1 of 4)' under torch.distributed, '' in one process."""
    return f" (rank {distributed.rank()} of {distributed.world_size()})" if (
        distributed.active()) else ""


def note_failure(error: BaseException) -> None:
    """This rank's error, for the others' message (not an exit the SIGTERM handler made)."""
    if not isinstance(error, SystemExit):
        distributed.note_failure(error)
