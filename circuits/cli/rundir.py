"""Run directories: complete or absent, one writer at a time, and never a lost file.

- A run is assembled in a hidden sibling ``.NAME.partial-PID-XXXX``; ``run.json`` (the command
  line, and under "files" every file the run wrote) is written last.
- An existing --out is replaced only if it is empty or an earlier run holding nothing but the
  files its run.json lists; anything else (a user's NOTES.md, a folder that is no run) is
  refused before the run starts, naming the foreign files. So is an --out that holds one of the
  run's inputs (the circuit.json evaluate reads, a JSONL task file).
- A lock ``.NAME.lock`` beside --out (flock, POSIX: the kernel drops it when its process dies,
  so a killed run never blocks the next) makes a second run into the same --out refuse.
- The replacement is atomic where the system allows: Linux ``renameat2(RENAME_EXCHANGE)`` swaps
  the new and the old directory in one step, so --out is never missing. Elsewhere, or on a
  filesystem without it, two renames with the old run parked as ``.NAME.old-PID`` in between;
  should the process die between them, the next run into --out puts the old run back.
- The old run is then deleted file by file from its own list: a run deletes only what a run
  wrote. Hidden siblings a killed run left (their PID is in the name) are cleaned up by the next
  run into the same --out.
- Under torchrun (several ranks, circuits/cli/ranks.py) rank 0 alone writes the run directory;
  the others write into a private scratch folder that is removed. Before rank 0 writes run.json
  and moves the run into place, every rank meets in one collective: if a rank has failed, that
  collective fails on rank 0 and the partial folder is removed.
- A command that adds to an existing run (``circuits features``, ``circuits label``) amends it
  the same way (`amend_run`): the run's files are copied into a partial sibling, changed there,
  and swapped in whole; run.json keeps the original command and lists the amendments.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from circuits import distributed
from circuits.cli.common import UsageError

RUN_MARKER = "run.json"  # written last into every run directory
SHOWN = 5  # foreign files named in a refusal


@dataclass
class Run:
    path: Path  # where the run ends up
    work: Path  # where it is written meanwhile


@contextmanager
def run_dir(out: Path | None, name: str, args: argparse.Namespace,
            inputs: Iterable[Path] = ()) -> Iterator[Run]:
    """A run directory assembled in a hidden sibling and moved into place at the end.

    Refused (UsageError) before anything is written: an ``out`` that is a file or a link, holds
    files no run wrote or one of ``inputs``, or is being written by another run. A failure
    inside the block removes the partial folder and leaves ``out`` as it was.
    """
    shown = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not distributed.is_main():  # another rank under torchrun: rank 0 writes the run
        yield from _scratch(shown)
        return
    path = Path(os.path.abspath(shown))
    _make_parent(path, shown)
    with _locked(path, shown):
        clean_stale(path)
        check_target(path, shown, inputs)
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-",
                                         dir=path.parent))
            umask = os.umask(0)
            os.umask(umask)
            work.chmod(0o777 & ~umask)  # mkdtemp makes it private; a run directory is not
        except OSError as err:
            raise UsageError(f"cannot write the run directory {shown}: {err.strerror}") from err
        yield from _assemble(work, path, shown, lambda: {
            "command": getattr(args, "command", None), "argv": sys.argv[1:],
            "finished": time.ctime(), "files": written_files(work),
            **{k: str(v) for k, v in vars(args).items() if k != "func"}})
    print(f"\nwrote {shown}/")


@contextmanager
def amend_run(run: Path, args: argparse.Namespace) -> Iterator[Run]:
    """The existing run directory ``run`` to change: its files copied into a partial sibling
    (``Run.work``), which replaces it atomically when the block ends; run.json keeps the run's
    own record, adds this command under "amended" and lists the files anew. Refused
    (UsageError): no run directory, foreign files in it, or a run writing it."""
    path = Path(os.path.abspath(run))
    if not (path / RUN_MARKER).is_file():
        raise UsageError(f"{run} is not a run directory (no {RUN_MARKER}); pass a directory "
                         "written by `circuits discover`")
    with _locked(path, run):
        clean_stale(path)
        check_target(path, run)
        record = json.loads((path / RUN_MARKER).read_text())
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-",
                                         dir=path.parent))
        except OSError as err:
            raise UsageError(f"cannot amend the run directory {run}: {err.strerror}") from err
        try:
            work.chmod(path.stat().st_mode & 0o777)
            for name in record["files"]:
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path / name, work / name)
        except OSError as err:
            shutil.rmtree(work, ignore_errors=True)
            raise UsageError(f"cannot amend the run directory {run}: {err.strerror}") from err
        amended = [*record.get("amended", []), {
            "command": getattr(args, "command", None), "argv": sys.argv[1:],
            "finished": time.ctime()}]
        yield from _assemble(work, path, run, lambda: {
            **record, "amended": amended, "files": written_files(work)})
    print(f"\nwrote {run}/")


def _assemble(work: Path, path: Path, shown: Path, record) -> Iterator[Run]:
    """Yield the Run being written in ``work``; then write run.json (``record()``, made after
    the block) and put ``work`` in place of ``path``. A failure removes ``work``."""
    try:
        yield Run(shown, work)
        distributed.check_peers("before rank 0 writes the run")  # every rank got to the end
        (work / RUN_MARKER).write_text(json.dumps(record(), indent=1))
        old = replace(work, path, shown)
    except BaseException:  # work is still this run's own folder: nothing else is in it
        with _deferred(signal.SIGTERM):  # torchrun's SIGTERM (ranks.py) waits for the cleanup
            shutil.rmtree(work, ignore_errors=True)
        raise
    if old is not None:
        _discard(old, path)


@contextmanager
def _deferred(signum: int) -> Iterator[None]:
    """Hold the signal back for the block (it is delivered after it); POSIX, main thread."""
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _scratch(shown: Path) -> Iterator[Run]:
    """A rank other than 0 writes into a private temporary folder, removed afterwards; it waits
    at the end for the others (the collective before rank 0 moves the run into place)."""
    with tempfile.TemporaryDirectory(prefix=f"circuits-rank{distributed.rank()}-") as work:
        yield Run(shown, Path(work))
        distributed.check_peers("before rank 0 writes the run")


# ---- what may be replaced --------------------------------------------------------------------
def check_target(path: Path, shown: Path, inputs: Iterable[Path] = ()) -> None:
    """Refuse an --out whose replacement would delete something no run wrote."""
    for given in inputs:
        if Path(os.path.realpath(given)).is_relative_to(os.path.realpath(path)):
            raise UsageError(f"--out {shown} holds this run's input {given}; replacing it would "
                             "delete it: choose another --out")
    if path.is_symlink():
        raise UsageError(f"--out {shown} is a symbolic link; pass the directory it points to")
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"--out {shown} is a file; pass a directory")
    foreign = foreign_files(path)
    if foreign:
        names = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more"
                                              if len(foreign) > SHOWN else "")
        what = ("is not a circuits run directory" if not (path / RUN_MARKER).is_file()
                else "holds files its run did not write")
        raise UsageError(f"--out {shown} {what} ({names}); replacing it would delete them: "
                         "move them out or choose another --out")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cannot replace --out {shown}: it is not writable; choose another --out")


def foreign_files(path: Path) -> list[str]:
    """Entries of the directory ``path`` that no circuits run wrote: all of them without a
    run.json, else those its "files" list does not name (folders holding listed files aside).
    A run.json without the list (an older version) or unreadable names itself."""
    entries = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
    if RUN_MARKER not in entries:
        return entries
    listed = _listed(path)
    if listed is None:
        return [f"{RUN_MARKER} without the list of its files"]
    own = set(listed) | {RUN_MARKER}
    folders = {parent.as_posix() for f in own for parent in Path(f).parents}
    return [e for e in entries if e not in own and e not in folders]


def written_files(work: Path) -> list[str]:
    """Every file (or link) under ``work``, as sorted relative paths: the run's own list."""
    return sorted(p.relative_to(work).as_posix() for p in work.rglob("*")
                  if p.is_symlink() or not p.is_dir())


def _listed(path: Path) -> list[str] | None:
    """The "files" list of path/run.json, or None if it has none or cannot be read."""
    try:
        files = json.loads((path / RUN_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) and _inside(f) for f in files):
        return None
    return files


def _inside(name: str) -> bool:
    """A relative path that stays inside its folder (a list naming ../x deletes nothing)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _make_parent(path: Path, shown: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write the run directory {shown}: {err.strerror} "
                         f"({path.parent}); pass an --out in a writable directory") from err


# ---- one writer at a time --------------------------------------------------------------------
@contextmanager
def _locked(path: Path, shown: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path`` (flock, non-blocking) for the block.

    The lock file holds the holder's PID, for the refusal's message only: flock, unlike a bare
    O_EXCL file, dies with its process, so a stale lock file never blocks. After locking, the
    file must still be the one at the path (a finishing holder unlinks it); else retry.
    """
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError(f"cannot write the run directory {shown}: {err.strerror} "
                             f"({lock}); pass an --out in a writable directory") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"another run (pid {holder}) is writing --out {shown}; wait for it "
                             "to finish or choose another --out") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            lock.unlink()
        except OSError:
            pass
        os.close(fd)


# ---- replacing atomically --------------------------------------------------------------------
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` in one atomic step (Linux renameat2 with
    RENAME_EXCHANGE). False where the system or filesystem cannot; other errors raise OSError."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28 (macOS, musl, ...)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace(work: Path, path: Path, shown: Path) -> Path | None:
    """Put the finished run ``work`` at ``path``; returns where the old run now is (None: there
    was none), for `_discard`. On failure ``work`` and ``path`` are as they were.

    With an exchange ``path`` is never missing; with the two-rename fallback the old run waits as
    ``.NAME.old-PID`` (restored by `clean_stale` should this process die in between).
    """
    try:
        if not path.exists():
            work.rename(path)
            return None
        if exchange(work, path):
            old = work
        else:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            try:
                work.rename(path)
            except OSError:
                old.rename(path)
                raise
    except OSError as err:
        raise UsageError(f"cannot move the run into --out {shown}: {err.strerror}; pass an --out "
                         "in a directory you can write") from err
    return old


def remove_run(run: Path) -> list[str]:
    """Delete what the run at ``run`` wrote (its run.json's list, then run.json and the folders
    left empty); returns what is left, the files no run wrote."""
    real = Path(os.path.realpath(run))
    for name in [*(_listed(run) or []), RUN_MARKER]:
        target = run / name
        if Path(os.path.realpath(target.parent)) != real / Path(name).parent:
            continue  # reached through a link to a folder elsewhere: not the run's own
        if target.is_symlink() or target.is_file():
            target.unlink()
    for folder in sorted((p for p in run.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    if not left:
        run.rmdir()
    return left


def _discard(old: Path, path: Path) -> None:
    """Remove a replaced run; files no run wrote (added while this run ran) are kept, moved to
    a visible ``NAME.kept-PID`` next to --out, with a warning naming them."""
    left = remove_run(old)
    if left:
        kept = path.with_name(f"{path.name}.kept-{os.getpid()}")
        for n in range(2, 1000):
            if not kept.exists():
                break
            kept = path.with_name(f"{path.name}.kept-{os.getpid()}-{n}")
        old.rename(kept)
        print(f"warning: {path} held files no run wrote ({', '.join(left[:SHOWN])}); kept them "
              f"in {kept}", file=sys.stderr)


# ---- what a killed run leaves ----------------------------------------------------------------
def clean_stale(path: Path) -> None:
    """Clean up the hidden siblings of ``path`` a dead process left (called holding the lock).

    ``.NAME.old-PID`` is a complete earlier run: put back if --out is missing (the process died
    between the two renames), else removed file by file. ``.NAME.partial-PID-*`` is removed;
    one holding a run.json may be the old run an exchange swapped out, so it goes file by file.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-(\d+)(-.*)?")
    for sibling in sorted(path.parent.iterdir()):
        match = pattern.fullmatch(sibling.name)
        if not match or not sibling.is_dir() or _alive(int(match[2])):
            continue
        if match[1] == "old" and not path.exists():
            sibling.rename(path)
        elif (sibling / RUN_MARKER).is_file():
            _discard(sibling, path)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether another live process has this PID (ours is not: our own folders do not exist yet
    when `clean_stale` runs, so one with our PID is from a dead process that had it)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
