"""Data parallelism over examples with torch.distributed (torchrun): shard, then sum.

Every quantity this toolkit averages over examples is a sum divided by a count: node scores
(Σ_examples score / n), edge weights, node means (Σ_prompts f[pos] / count[pos]) and ablation
metrics (Σ_prompts m / n). With W processes (ranks), rank r takes a contiguous shard of the
examples, forms its partial sums, and an all-reduce adds them:

    Σ_{i < n} x_i = Σ_{r < W} Σ_{i ∈ shard(r)} x_i          then / n (or / the reduced count)

so the result is the single-process result up to the order of float summation, on every rank.
Shards are contiguous and balanced (the first n mod W ranks take one more); a rank whose shard
is empty adds zeros. Per-example rows are gathered back in example order. Without an initialized
process group of more than one rank every function here is the identity: one process runs
exactly as it did before.

Failure: a rank that raises stops taking part; the others' next collective fails (gloo: its
connection closes; under torchrun the agent also stops them with SIGTERM). They raise
`PeerFailed`, naming the rank that failed and its error where that rank could leave a note in
the rendezvous store (`note_failure`; processes joined through `init_from_env`).

Collectives run on the backend's device: CUDA tensors under NCCL (each rank on its own device,
``torch.cuda.set_device(LOCAL_RANK)``, as `init_from_env` does), CPU tensors under gloo; a tensor
elsewhere is moved there and back.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Hashable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from tasks.pairs import Dataset

K = TypeVar("K", bound=Hashable)

# how long a rank waits for the others in a collective: rank 0 alone reads the feature contexts
# and writes the run while the others wait (torch's default is 30 min for gloo, 10 for NCCL)
TIMEOUT = timedelta(minutes=30)
NOTE = "circuits/failed/{rank}"  # key of a rank's failure note in the rendezvous store
_store: dist.Store | None = None  # the store of the group init_from_env joined


class PeerFailed(RuntimeError):
    """Another rank stopped while this one waited for it in a collective."""


# ---- where this process stands -------------------------------------------------------------
def active() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints, shows progress and writes files."""
    return rank() == 0


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# ---- shards ---------------------------------------------------------------------------------
def shard_sizes(n: int, world: int | None = None) -> list[int]:
    """Examples per rank: contiguous and balanced, the first n mod W ranks one more (some may
    take none when n < W)."""
    world = world_size() if world is None else world
    return [n // world + (r < n % world) for r in range(world)]


def shard(n: int, r: int | None = None, world: int | None = None) -> slice:
    """The contiguous slice of range(n) that rank ``r`` (default: this rank) takes."""
    sizes = shard_sizes(n, world)
    r = rank() if r is None else r
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


def shard_dataset(data: Dataset, what: str) -> Dataset:
    """This rank's shard of ``data``, after checking that every rank was given the same dataset
    (a fingerprint of its tokens; ``what`` names the caller in the error). One process: data."""
    if not active():
        return data
    mine = torch.tensor([len(data), fingerprint(data)], dtype=torch.long)
    everyone = gather_rows(mine[None], [1] * world_size(),
                           f"{what}: checking the ranks have the same pairs")  # [W, 2]
    if not bool((everyone == mine).all()):
        sizes = ", ".join(f"rank {r}: {int(row[0])} pairs" for r, row in enumerate(everyone))
        raise ValueError(
            f"{what}: the ranks were given different datasets ({sizes}; equal sizes: other "
            "prompts); every rank must pass the same pairs in the same order, each takes its "
            "own shard"
        )
    return data.subset(shard(len(data)))


def fingerprint(data: Dataset) -> int:
    """A 63-bit hash of a dataset's tokens, lengths and answers."""
    h = hashlib.blake2b(digest_size=8)
    for t in (data.clean_tokens, data.patch_tokens, data.lengths, data.clean_answer,
              data.patch_answer):
        h.update(t.detach().cpu().long().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


# ---- collectives ----------------------------------------------------------------------------
def reduce_sum(x: Tensor, what: str = "a sum over examples") -> Tensor:
    """Σ over ranks of ``x`` (same shape and dtype on every rank), on every rank; a new tensor
    on x's device. One process: x itself."""
    if not active():
        return x
    y = x.detach().to(_comm_device(x), copy=True).contiguous()
    _collective(lambda: dist.all_reduce(y, op=dist.ReduceOp.SUM), what)
    return y.to(x.device)


def reduce_sums(tensors: dict[K, Tensor], what: str = "sums over examples") -> dict[K, Tensor]:
    """`reduce_sum` of every value of a dict (the same keys, shapes and dtypes on every rank),
    one flat all-reduce per dtype; a new dict."""
    if not active():
        return dict(tensors)
    out: dict[K, Tensor] = {}
    for dtype in dict.fromkeys(t.dtype for t in tensors.values()):
        group = [k for k, t in tensors.items() if t.dtype == dtype]
        total = reduce_sum(torch.cat([tensors[k].detach().reshape(-1).to(_comm_device(tensors[k]))
                                      for k in group]), what)
        for k, part in zip(group, total.split([tensors[k].numel() for k in group]), strict=True):
            out[k] = part.view_as(tensors[k]).to(tensors[k].device)
    return {k: out[k] for k in tensors}


def gather_rows(x: Tensor, sizes: list[int], what: str = "per-example rows") -> Tensor:
    """Every rank's rows of ``x`` [sizes[rank], ...] concatenated in rank order (example order,
    as the shards are contiguous): [Σ sizes, ...] on every rank. One process: x itself."""
    if not active():
        return x
    if x.shape[0] != sizes[rank()]:
        raise ValueError(f"gather_rows: this rank has {x.shape[0]} rows of {what}, its shard "
                         f"{sizes[rank()]}")
    device = _comm_device(x)
    most = max(sizes)
    padded = x.new_zeros(most, *x.shape[1:], device=device)
    padded[: x.shape[0]] = x.detach().to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    _collective(lambda: dist.all_gather(parts, padded), what)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(x.device)


def check_peers(what: str) -> None:
    """A collective every rank reaches when it has done its part (before rank 0 writes a run):
    raises `PeerFailed` if another rank has stopped."""
    if active():
        reduce_sum(torch.ones(1), what)


def _comm_device(x: Tensor) -> torch.device:
    """Where the backend takes x: its own device where the group has a backend for it (CUDA:
    NCCL, CPU: gloo, or both, e.g. "cpu:gloo,cuda:nccl"); else the CPU for gloo, this rank's
    GPU for NCCL."""
    backend = str(dist.get_backend())
    if x.device.type == "cuda" and "nccl" in backend:
        return x.device
    if x.device.type == "cpu" and "gloo" in backend:
        return x.device
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(run, what: str) -> None:
    """Run a collective; a failure (a peer that stopped) as `PeerFailed`, saying why."""
    try:
        run()
    except RuntimeError as err:
        why = failure_notes() or "another rank stopped without saying why (killed? out of memory?)"
        first = (str(err).splitlines() or [""])[0]
        low = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:120]  # gloo: no source path
        raise PeerFailed(f"rank {rank()} of {world_size()} stopped while waiting for the others "
                         f"({what}): {why}; its own output says more ({low})") from err


# ---- joining and failing --------------------------------------------------------------------
def init_from_env(device: str | None = None, timeout: timedelta | None = None) -> str | None:
    """Join the process group a launcher (torchrun) describes in the environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT; LOCAL_RANK), if WORLD_SIZE > 1 and none is joined yet.

    device: cpu, cuda (or None: cuda where available). With CUDA the backend is NCCL and each
    rank takes cuda:LOCAL_RANK (an explicit cuda:N is refused with several ranks on a node);
    otherwise gloo. timeout: how long a collective waits (TIMEOUT). Returns the device this
    rank should load the model on (``device`` as given when not launched)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return device
    global _store
    cuda = (device is None and torch.cuda.is_available()) or (
        device is not None and torch.device(device).type == "cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        index = torch.device(device).index if device is not None else None
        if index is not None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise ValueError(f"--device {device}: under torchrun each rank takes its own GPU, "
                             "cuda:LOCAL_RANK; pass --device cuda")
        local = local if index is None else index
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but {torch.cuda.device_count()} CUDA "
                             "device(s) here; start at most that many ranks per node")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    timeout = timeout or TIMEOUT
    store, r, world = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=r, world_size=world,
                            timeout=timeout)
    _store = store
    return device


def leave() -> None:
    """Leave the process group init_from_env joined (no-op otherwise)."""
    global _store
    if _store is not None and dist.is_initialized():
        dist.destroy_process_group()
    _store = None


def note_failure(error: BaseException) -> None:
    """Leave this rank's error in the rendezvous store, for the others' `PeerFailed` message."""
    if _store is None or isinstance(error, PeerFailed):
        return
    message = " ".join(f"{type(error).__name__}: {error}".split())[:500]
    try:
        _store.set(NOTE.format(rank=rank()), message)
    except RuntimeError:  # the store went with its host
        pass


def failure_notes() -> str:
    """'rank 1 failed: ValueError: ...' for the ranks that left a note; '' if none could."""
    if _store is None:
        return ""
    found = []
    for r in range(world_size()):
        key = NOTE.format(rank=r)
        try:
            if r != rank() and _store.check([key]):
                found.append(f"rank {r} failed: {_store.get(key).decode(errors='replace')}")
        except RuntimeError:  # the store's host (rank 0 without torchrun) is gone
            break
    return "; ".join(found)
