"""RelP nodes and the default circuit's edges on Gemma-3-270M with Gemma Scope 2 at real width.

The offline stand-in of google/gemma-scope-2-270m-pt (saes/offline_cache.py: the real layout and
widths, random JumpReLU calibrated to each release's stated L0) with the three kinds, res, mlp and
att (attn.hook_z), at width 16k and layers 5, 9, 12 and 15: twelve dictionaries, most blocks
between them unspliced, so every edge spans unspliced blocks. In one run: one plain forward over
the prompts, atp and relp node scores, the default circuit's relp edges; times, the ratios to
atp and to the plain forward, and the process's peak memory (max RSS, loading included).

    python3 benchmarks/gemma_scope.py [--cache .hf_cache/gemma-scope] [--n 100]

Builds the stand-in into --cache first if it is not there (about 1.5 GB, about 2 minutes).
Goals (issue 14): relp within 1.1x atp, edges within 3x nodes, peak memory under 8 GiB.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RELEASES = [f"gemma-scope-2-270m-pt-{kind}:width_16k_l0_medium" for kind in ("res", "mlp", "att")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=REPO / ".hf_cache" / "gemma-scope")
    parser.add_argument("--n", type=int, default=100, help="agreement prompt pairs")
    parser.add_argument("--construction", default="across_pp")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    # huggingface_hub reads these when first imported: set them before anything imports it
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(args.cache)
    if not (args.cache / "models--google--gemma-scope-2-270m-pt").exists():
        from saes import offline_cache

        offline_cache.main(["--out", str(args.cache), *[a for r in RELEASES
                                                        for a in ("--release", r)]])

    import torch

    from circuits import attribute, build
    from circuits.forward import Targets, forward
    from saes import load
    from tasks import sva

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load("gemma-3-270m", dictionaries="+".join(RELEASES), device="cpu")
    load_s = time.perf_counter() - started
    print(repr(model), f"loaded in {load_s:.0f}s")
    data = model.tokenize(sva.generate(args.construction, args.n, seed=0,
                                       tokenizer=model.tokenizer))
    tokens = int(data.lengths.sum())

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def plain():
        with torch.no_grad():
            for batch in data.batches(32):
                forward(model, batch.clean_tokens, Targets.of(batch))

    _, t_plain = timed(plain)
    atp, t_atp = timed(lambda: attribute(model, data, "atp", progress=False))
    relp, t_relp = timed(lambda: attribute(model, data, "relp", progress=False))
    circuit, t_edges = timed(lambda: build(relp, model=model, data=data))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"\n# Gemma-3-270M, Gemma Scope 2 stand-in: {len(model.dictionaries)} dictionaries "
          f"of 16k ({', '.join(model.dictionaries)}), {len(data)} {args.construction} pairs, "
          f"{tokens} tokens, {torch.get_num_threads()} threads\n")
    print("| step | seconds | × atp | × plain forward |\n|---|---|---|---|")
    for name, t in (("plain forward", t_plain), ("atp nodes", t_atp), ("relp nodes", t_relp),
                    (f"relp edges ({circuit.n_nodes} nodes, {circuit.n_edges} edges)",
                     t_edges)):
        print(f"| {name} | {t:.1f} | {t / t_atp:.2f} | {t / t_plain:.1f} |")
    print(f"\nrelp / atp {t_relp / t_atp:.2f} (goal ≤ 1.1), edges / relp nodes "
          f"{t_edges / t_relp:.2f} (goal ≤ 3), peak memory {peak_gib:.2f} GiB (goal < 8; "
          "max RSS of the process, loading included)")


if __name__ == "__main__":
    main()
