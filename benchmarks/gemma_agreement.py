"""Subject-verb agreement accuracy of Gemma-3-270M (dequantized Q4_K_M GGUF, `saes.gemma`).

A pair counts as correct when, at the prompt's last position, the logit of the verb form that
agrees beats the logit of the one that does not. Both prompts of a pair are scored: the clean
prefix (right answer = clean_answer) and the patch prefix (right answer = patch_answer). Pairs
whose answers are not single Gemma tokens are skipped. Prompts are tokenized with
transformer_lens's default for Gemma (BOS prepended) and batched by length, so no padding.

Pairs come from `tasks.sva.load(construction, split, source="file")` (the feature-circuits
JSON Lines files, deduplicated; test drops pairs in train).
The default split is "all" (train + test): the model is not trained on them, and the file test
splits are nearly all repeats of train pairs (5 distinct new pairs for simple, 61 for within_rc).

    python benchmarks/gemma_agreement.py [--split all|train|test] [--cache-dir DIR]
        [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from saes.gemma import load_gemma
from tasks import sva
from tasks.pairs import PromptPair

CONSTRUCTIONS = ("simple", "across_pp", "within_rc")  # the ones with a shared file


def load_pairs(construction: str, split: str) -> tuple[list[PromptPair], str]:
    """Distinct pairs of the shared file's split ("all": train, then test minus train)."""
    if split == "all":
        return load_pairs(construction, "train")[0] + load_pairs(construction, "test")[0], "file"
    return sva.load(construction, split, source="file"), "file"


def single_token(model: HookedTransformer, text: str) -> int | None:
    ids = model.to_tokens(text, prepend_bos=False)[0]
    return int(ids[0]) if len(ids) == 1 else None


def last_logits(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """model(tokens)[:, -1], unembedding only the last position (Gemma-3 has no logit softcap)."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)[:, -1:]
    return model.unembed(model.ln_final(resid))[:, 0]


@torch.no_grad()
def correct(
    model: HookedTransformer, prompts: list[str], right: list[int], wrong: list[int], batch: int
) -> torch.Tensor:
    """Per prompt: logit[right] > logit[wrong] at the last position (prompts batched by length)."""
    tokens = [model.to_tokens(p)[0] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tokens):
        by_length[len(t)].append(i)
    out = torch.zeros(len(prompts), dtype=torch.bool)
    for idx in by_length.values():
        for start in range(0, len(idx), batch):
            rows = torch.tensor(idx[start : start + batch])
            last = last_logits(model, torch.stack([tokens[i] for i in rows]))
            r, w = torch.tensor(right)[rows], torch.tensor(wrong)[rows]
            out[rows] = last.gather(1, r[:, None])[:, 0] > last.gather(1, w[:, None])[:, 0]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--split", default="all", choices=("train", "test", "all"), help="all = train + test"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="load_gemma cache folder")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = load_gemma(cache_dir=args.cache_dir)
    print(f"loaded Gemma-3-270M in {time.perf_counter() - start:.1f} s")
    rows = []
    for construction in CONSTRUCTIONS:
        pairs, source = load_pairs(construction, args.split)
        kept = []
        for p in pairs:
            ids = single_token(model, p.clean_answer), single_token(model, p.patch_answer)
            if None not in ids:
                kept.append((p, *ids))
        t = time.perf_counter()
        clean = correct(
            model,
            [p.clean for p, *_ in kept],
            [c for _, c, _ in kept],
            [w for *_, w in kept],
            args.batch_size,
        )
        patch = correct(
            model,
            [p.patch for p, *_ in kept],
            [w for *_, w in kept],
            [c for _, c, _ in kept],
            args.batch_size,
        )
        logging.info(
            "%s: %d pairs scored in %.1f s", construction, len(kept), time.perf_counter() - t
        )
        rows.append(
            f"| {construction} | {len(kept)} | {len(pairs) - len(kept)} | "
            f"{clean.float().mean():.3f} | {patch.float().mean():.3f} | "
            f"{(clean & patch).float().mean():.3f} | {source} |"
        )
    print(f"\nGemma-3-270M (Q4_K_M, dequantized) agreement accuracy, {args.split} split\n")
    print(
        "| construction | pairs | skipped (multi-token answer) | clean acc | patch acc "
        "| both | source |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
