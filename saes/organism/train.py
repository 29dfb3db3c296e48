"""Retrain the model organism and its dictionaries from a seed, into saes/organism/weights/.

    python -m saes.organism.train --seed 0

1. the word-level tokenizer (saes.organism.tokenizer), saved and read back as `load` reads it;
2. the language model on grammar text (saes.organism.lm), saved as a Hugging Face GPT-NeoX
   checkpoint (config.json + model.safetensors);
3. that checkpoint converted exactly as `load` converts it (saes.neox.neox_to_hooked), and a
   sae_lens dictionary trained at every site on its activations (saes.organism.dictionaries);
4. training.json: seed, settings, library versions and timings (the model card reads it).

Everything is written into a temporary folder beside the target and swapped in at the end, so
an interrupted run leaves the shipped organism as it was. Then `python -m saes.organism.card`
measures it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from saes.organism.data import SAE_DATA_SEED_OFFSET, token_rows
from saes.organism.dictionaries import DictConfig, train_all
from saes.organism.lm import LMConfig, train_lm

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parent / "weights"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "tokenizers", "sae-lens", "transformer-lens")
    return {"python": platform.python_version(), **{p: version(p) for p in packages}}


def train(seed: int, out: Path, lm_cfg: LMConfig, dict_cfg: DictConfig) -> dict:
    """Train everything into a temporary folder, then replace `out` with it."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from saes.neox import neox_to_hooked
    from saes.organism import tokenizer as word_tokenizer

    start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        word_tokenizer.save(word_tokenizer.build(), tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)  # read back as `load` reads it

        lm, lm_stats = train_lm(tokenizer, seed, lm_cfg)
        lm.save_pretrained(tmp)

        t = time.perf_counter()
        hf_model = GPTNeoXForCausalLM.from_pretrained(tmp)
        model = neox_to_hooked(hf_model, tokenizer)
        rows = token_rows(
            tokenizer,
            dict_cfg.cache_rows,
            lm_cfg.seq,
            seed + SAE_DATA_SEED_OFFSET,
            exclude_heldout=True,
        )
        dict_stats = train_all(model, rows, dict_cfg, seed=seed, out=tmp / "dictionaries")
        dict_seconds = time.perf_counter() - t

        record = {
            "seed": seed,
            "threads": torch.get_num_threads(),
            "language_model": {**dataclasses.asdict(lm_cfg), **lm_stats},
            "dictionaries": {
                **dataclasses.asdict(dict_cfg),
                "seconds": round(dict_seconds, 1),
                "sites": dict_stats,
            },
            "total_seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),  # all threads
            "versions": _versions(),
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _swap_in(new: Path, out: Path) -> None:
    """Replace folder `out` by `new` (two renames on one filesystem; never a half-written out)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine two threads wait on each "
        "other at every op whenever another process holds a core, measured 30x slower)",
    )
    parser.add_argument("--lm-steps", type=int, default=LMConfig.steps)
    parser.add_argument("--sae-steps", type=int, default=DictConfig.steps)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # a terminated run still removes its temporary folder (the `finally` in train)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    torch.set_num_threads(args.threads)
    record = train(
        args.seed, args.out, LMConfig(steps=args.lm_steps), DictConfig(steps=args.sae_steps)
    )
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(
        f"organism written to {args.out} ({size / 1e6:.1f} MB) in "
        f"{record['total_seconds'] / 60:.1f} min; measure it with "
        f"`python -m saes.organism.card`"
    )


if __name__ == "__main__":
    main()
