"""Retrain the organism from its seed into a scratch folder and compare with the shipped one.

    python benchmarks/retrain_organism.py [--seed 0] [--threads 1]

Runs `saes.organism.train` (the README's retrain command) into a temporary folder, then prints
its wall time and, for the language model and each dictionary, the largest absolute difference
from the shipped tensors (0 everywhere: the retrain is bit-identical).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saes.loader import ORGANISM_DIR  # noqa: E402
from saes.organism.dictionaries import DictConfig  # noqa: E402
from saes.organism.lm import LMConfig  # noqa: E402
from saes.organism.train import train  # noqa: E402


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys():
        return float("inf")
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "organism"
        start = time.perf_counter()
        train(args.seed, out, LMConfig(), DictConfig())
        minutes = (time.perf_counter() - start) / 60
        shipped = sorted(ORGANISM_DIR.rglob("*.safetensors"))
        print(f"retrained in {minutes:.1f} min on {args.threads} thread(s)\n")
        print("| tensors | max abs(retrained − shipped) |\n|---|---|")
        for path in shipped:
            rel = path.relative_to(ORGANISM_DIR)
            print(f"| {rel.parent if rel.parent != Path('.') else 'model'} | "
                  f"{max_difference(path, out / rel):.3g} |")


if __name__ == "__main__":
    main()
