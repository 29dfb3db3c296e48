"""Run directories, complete or absent: assembled in a hidden temporary sibling, moved into
place only when the run succeeded, with ``run.json`` (the command line) written last."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from circuits.cli.common import UsageError

RUN_MARKER = "run.json"  # written last into every run directory


@dataclass
class Run:
    path: Path  # where the run ends up
    work: Path  # where it is written meanwhile


@contextmanager
def run_dir(out: Path | None, name: str, args: argparse.Namespace) -> Iterator[Run]:
    """A run directory assembled in a hidden temporary sibling and moved into place at the end.

    An existing ``out`` is replaced only if it is an earlier run (it holds run.json) or empty; a
    failure removes the temporary folder and leaves ``out`` as it was.
    """
    path = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file; pass a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / RUN_MARKER).exists():
        raise UsageError(
            f"--out {path} exists and is not a circuits run directory; pass a new or empty one"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes it private; a run directory is not
    except OSError as err:
        raise UsageError(f"cannot write the run directory {path}: {err.strerror}") from err
    try:
        yield Run(path, work)
        meta = {"command": args.command, "argv": sys.argv[1:], "finished": time.ctime(),
                **{k: str(v) for k, v in vars(args).items() if k != "func"}}
        (work / RUN_MARKER).write_text(json.dumps(meta, indent=1))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            work.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"\nwrote {path}/")
