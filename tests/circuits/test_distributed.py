"""Data parallelism (circuits/distributed.py): shards, and two gloo processes on the CPU giving
what one process gives, on 5 pairs (uneven shards, 3 + 2) and on 1 pair (fewer pairs than
ranks, 1 + 0): node scores of relp, atp, ig and exact (summed, and per position and example),
the circuit's nodes and edges, node means, faithfulness, completeness, a sweep, an agreement
table. Same nodes and edges; values within 1e-5 of the largest of their kind. Ranks given
different pairs are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from circuits import distributed
from saes import load
from tests.circuits.distributed_worker import SIZES, compute
from tests.launch import ranks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread
RTOL = 1e-5


def test_shards_partition_the_examples_in_order():
    for n in range(0, 12):
        for world in range(1, 6):
            sizes = distributed.shard_sizes(n, world)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
            slices = [distributed.shard(n, r, world) for r in range(world)]
            assert [i for s in slices for i in range(n)[s]] == list(range(n))
    assert distributed.shard_sizes(5, 2) == [3, 2] and distributed.shard_sizes(1, 2) == [1, 0]


def test_one_process_is_left_as_it_is():
    x = torch.arange(6.0).view(3, 2)
    assert not distributed.active() and distributed.rank() == 0 and distributed.is_main()
    assert distributed.reduce_sum(x) is x and distributed.gather_rows(x, [3]) is x
    assert distributed.reduce_sums({"a": x})["a"] is x
    assert distributed.shard(3) == slice(0, 3)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's results on rank 0 of two processes."""
    out = tmp_path_factory.mktemp("ranks")
    done = ranks(["-m", "tests.circuits.distributed_worker", str(out)])
    for r, d in enumerate(done):
        assert d.returncode == 0, f"rank {r}:\n{d.stderr[-3000:]}"
    refused = [(out / f"refused-{r}.txt").read_text() for r in range(2)]
    assert refused[0] == refused[1] and "rank 0: 2 pairs, rank 1: 3 pairs" in refused[0]
    return {n: (load_file(out / f"{n}.safetensors"), json.loads((out / f"{n}.json").read_text()))
            for n in SIZES}


@pytest.fixture(scope="module")
def one_process():
    model = load("organism", device="cpu")
    return {n: compute(model, n) for n in SIZES}


def close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(b), scale)


@pytest.mark.parametrize("n", SIZES)
def test_two_processes_give_what_one_gives(n, two_ranks, one_process):
    tensors, values = two_ranks[n]
    want_tensors, want = one_process[n]
    assert set(tensors) == set(want_tensors)
    for key, expected in want_tensors.items():
        scale = float(expected.abs().max()) or 1.0
        torch.testing.assert_close(tensors[key], expected, rtol=RTOL, atol=RTOL * scale,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert values["nodes"] == want["nodes"] and len(want["nodes"]) > 1
    got_edges = {(u, v): w for u, v, w in values["edges"]}
    want_edges = {(u, v): w for u, v, w in want["edges"]}
    assert got_edges.keys() == want_edges.keys() and want_edges
    scale = max(abs(w) for w in want_edges.values())
    assert all(close(got_edges[e], w, scale) for e, w in want_edges.items())
    for key in ("faithfulness", "completeness", "agreement"):
        assert values[key] == pytest.approx(want[key], rel=RTOL, abs=RTOL), key
    for column, expected in want["sweep"].items():
        assert values["sweep"][column] == pytest.approx(expected, rel=RTOL, abs=RTOL,
                                                        nan_ok=True), column
    assert values["n_examples/relp"] == want["n_examples/relp"] == n
