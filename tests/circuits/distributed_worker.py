"""One rank of the data-parallel API test (tests/circuits/test_distributed.py), run as
``python3 -m tests.circuits.distributed_worker OUT`` in each of several processes whose
environment names the process group (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), as torchrun
would. Every rank computes `compute` on 5 and on 1 pairs (uneven shards; fewer pairs than
ranks); rank 0 saves the results in OUT for the test to compare with one process. Then each
rank passes attribute pairs of its own (2 + rank of them), which every rank must refuse.

`compute` is also what the test runs in one process: node scores of several methods (summed,
per position, per example), edges, node means, faithfulness, completeness, a sweep and an
agreement table on the organism."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from circuits import attribute, build, distributed
from evaluation import completeness, faithfulness, node_means, sweep
from evaluation.agreement import agreement
from saes import load
from saes.splice import SplicedModel
from tasks import sva

SIZES = (5, 1)  # pairs: uneven over 2 ranks (3 + 2), and fewer than the ranks (1 + 0)
TASK = "within_rc"


def compute(model: SplicedModel, n: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, JSON values) of every data-parallel result on n pairs of within_rc."""
    train = sva.load(TASK, "train", n=n, tokenizer=model.tokenizer)
    test = sva.load(TASK, "test", n=n, tokenizer=model.tokenizer)
    tensors: dict[str, Tensor] = {}
    values: dict[str, Any] = {}
    kw: dict[str, Any] = {"batch_size": 2, "progress": False}
    scores = {m: attribute(model, train, m, **kw) for m in ("relp", "atp")}
    scores["ig"] = attribute(model, train, "ig", steps=3, **kw)
    scores["exact"] = attribute(model, train, "exact", **kw)
    scores["per_example"] = attribute(model, train, "relp", aggregation="none", per_example=True,
                                      **kw)
    for label, s in scores.items():
        tensors |= {f"scores/{label}/{site}": v for site, v in s.sites.items()}
        values[f"n_examples/{label}"] = s.n_examples
    circuit = build(scores["relp"], model=model, data=train, batch_size=2)
    values["nodes"] = sorted(circuit.graph.nodes)
    values["edges"] = sorted([u, v, w] for u, v, w in circuit.graph.edges(data="weight"))
    means = node_means(model, test, batch_size=2)
    tensors |= {f"means/features/{k}": v for k, v in means.features.items()}
    tensors |= {f"means/error/{k}": v for k, v in means.error.items()}
    for name, ratio in (("faithfulness", faithfulness), ("completeness", completeness)):
        result = ratio(model, circuit, test, means=means, batch_size=4)
        values[name] = [result.value, result.m_circuit, result.m_empty, result.m_full]
    table = sweep(model, {"relp": scores["relp"]}, test, node_counts=[0, 5, 40, 400],
                  batch_size=4, progress=False)
    values["sweep"] = table.drop(columns=["method"]).to_dict("list")
    table = agreement({m: scores[m] for m in ("relp", "atp", "ig")}, scores["exact"])
    values["agreement"] = table["r"].tolist()
    return tensors, values


def main(out: Path) -> None:
    distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    model = load("organism", device="cpu")
    for n in SIZES:
        tensors, values = compute(model, n)
        if distributed.is_main():
            save_file({k: v.contiguous() for k, v in tensors.items()}, out / f"{n}.safetensors")
            (out / f"{n}.json").write_text(json.dumps(values))
    # ranks given different pairs: refused on every rank, naming the sizes
    pairs = sva.load(TASK, "train", n=2 + distributed.rank(), tokenizer=model.tokenizer)
    try:
        attribute(model, pairs, "atp", progress=False)
    except ValueError as err:
        (out / f"refused-{distributed.rank()}.txt").write_text(str(err))
    distributed.leave()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
