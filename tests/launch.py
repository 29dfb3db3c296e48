"""Start several processes of one process group on this machine (gloo on the CPU), for the
data-parallel tests: with torchrun (`torchrun`), or by hand with the environment torchrun would
set (`ranks`), which runs no agent that stops the others when one fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds; a hung collective fails the test instead of the CI job


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def torchrun(args: list[str], n: int = 2) -> Finished:
    """``python3 -m torch.distributed.run --nproc-per-node n ARGS`` from the repository root."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    return Finished(done.returncode, done.stdout, done.stderr)


def ranks(args: list[str], n: int = 2) -> list[Finished]:
    """``python3 ARGS`` in n processes with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set;
    each one's outcome, by rank."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                                       LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port))
             for r in range(n)]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(Finished(p.returncode, stdout, stderr))
    return out
