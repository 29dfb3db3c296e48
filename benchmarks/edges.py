"""Edge attribution cost: time for all edges of the default-threshold circuit against the node
attribution time of the same run (goal: edges ≤ 3× nodes).

    python benchmarks/edges.py [--n 100] [--methods atp relp ig] [--pythia] [--device cpu]

For each method: node scores with `attribute` (timed), the default node threshold of `build`
(1% of the total effect, circuits.circuit.default_node_threshold), then `attribute_edges` among
those nodes (timed). Prints a markdown table with nodes kept, non-zero edges, both times and
their ratio, measured in one process after a warm-up on two examples. Data: tasks.sva across_pp
with the model's tokenizer. Model: the organism, or with --pythia the full-size offline
Pythia-70M (HF_HUB_OFFLINE=1 HF_HUB_CACHE=<dir from `python -m saes.offline_cache --d-sae 32768
--out <dir>`>). Run with OMP_NUM_THREADS set to the cores you mean to use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuits import attribute, attribute_edges, select_nodes  # noqa: E402
from circuits.circuit import default_node_threshold  # noqa: E402
from saes import load  # noqa: E402
from tasks import sva  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["atp", "relp", "ig"])
    parser.add_argument("--pythia", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.pythia:
        if os.environ.get("HF_HUB_OFFLINE") != "1" or "HF_HUB_CACHE" not in os.environ:
            sys.exit("--pythia needs HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<offline cache dir>")
        model = load("pythia-70m-deduped", device=args.device)
    else:
        model = load("organism", device=args.device)
    data = model.tokenize(sva.load("across_pp", n=args.n, tokenizer=model.tokenizer))
    print(f"{model!r}; {len(data)} across_pp prompts of {data.seq_len} tokens; "
          f"torch threads {torch.get_num_threads()}\n")
    rows = ["| method | nodes kept | edges | node time (s) | edge time (s) | edges / nodes |",
            "|---|---|---|---|---|---|"]
    for method in args.methods:
        kw = {"steps": args.steps} if method == "ig" else {}
        warm = data.subset([0, 1])
        warm_scores = attribute(model, warm, method, progress=False, **kw)
        attribute_edges(model, warm, method, select_nodes(warm_scores, top_k=20),
                        progress=False, **kw)
        start = time.perf_counter()
        scores = attribute(model, data, method, batch_size=args.batch_size, progress=False, **kw)
        node_time = time.perf_counter() - start
        selection = select_nodes(scores, node_threshold=default_node_threshold(scores))
        start = time.perf_counter()
        edges = attribute_edges(model, data, method, selection, batch_size=args.batch_size,
                                progress=False, **kw)
        edge_time = time.perf_counter() - start
        kept = sum(int(m.sum()) for m in selection.values())
        rows.append(f"| {method} | {kept} | {edges.n_edges} | {node_time:.2f} | "
                    f"{edge_time:.2f} | {edge_time / node_time:.2f} |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
