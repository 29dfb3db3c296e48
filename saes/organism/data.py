"""Token sequences of grammar text: rows of `seq` tokens, each starting at a sentence start.

Sentences are joined by "<|endoftext|>" (no space after it, so a sentence always begins with its
space-less capitalised first word, as agreement prompts do at position 0). Each row starts at the
beginning of a sentence and is cut after `seq` tokens, so the model sees sentence starts both at
position 0 (how prompts are run, without BOS) and after an EOS.

Training text leaves out every sentence that begins with a held-out agreement prompt (the
generated test split of across_pp, within_rc and across_rc, and the test split of the shared
files, clean and patch prompts alike), so accuracy on those prompts measures generalisation to
unseen combinations of words. Simple prompts ("The parents") cannot be held out this way: every
subject begins one.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from saes.organism.grammar import Grammar

TRAIN_SEED_OFFSET, HELDOUT_SEED_OFFSET = 0, 1_000_003  # independent streams, not disjoint
SAE_DATA_SEED_OFFSET = 2_000_003  # sentence stream for dictionary activations


@cache
def heldout_prompts() -> frozenset[str]:
    """Prompts of the held-out agreement pairs whose word combinations training never shows."""
    from tasks import sva

    pairs = [p for c in ("across_pp", "within_rc", "across_rc") for p in sva.pool(c, "test")]
    pairs += [p for c in sva.FILES if c != "simple" for p in sva.load(c, "test", source="file")]
    return frozenset(prompt for p in pairs for prompt in (p.clean, p.patch))


def _without_heldout(sentences: Iterator[str]) -> Iterator[str]:
    prompts = heldout_prompts()
    lengths = sorted({len(p.split()) for p in prompts})
    for sentence in sentences:
        words = sentence.split()
        if not any(" ".join(words[:k]) in prompts for k in lengths):
            yield sentence


def token_rows(
    tokenizer: PreTrainedTokenizerBase,
    n_rows: int,
    seq: int,
    seed: int,
    *,
    grammar: Grammar | None = None,
    exclude_heldout: bool = False,
) -> torch.Tensor:
    """[n_rows, seq] long tensor of grammar text from the sentence stream of `seed`
    (exclude_heldout: without sentences that begin with a held-out agreement prompt)."""
    grammar = grammar or Grammar()
    eos = tokenizer.eos_token_id
    rows: list[np.ndarray] = []
    sentences = grammar.sentences(10**12, seed)
    if exclude_heldout:
        sentences = _without_heldout(sentences)
    while len(rows) < n_rows:
        # about 10 tokens a sentence with its EOS; a block of sentences gives many rows
        block = [next(sentences) for _ in range(max(1000, (n_rows - len(rows)) * seq // 8))]
        ids = tokenizer(block, add_special_tokens=False)["input_ids"]
        stream = np.fromiter((t for s in ids for t in (*s, eos)), dtype=np.int64)
        starts = np.cumsum([0] + [len(s) + 1 for s in ids[:-1]])
        pos = 0
        while pos + seq <= len(stream) and len(rows) < n_rows:
            rows.append(stream[pos : pos + seq])
            nxt = np.searchsorted(starts, pos + seq)  # next sentence start after this row
            if nxt >= len(starts):
                break
            pos = int(starts[nxt])
    return torch.from_numpy(np.stack(rows))
