"""Clean/patch prompt pairs and their tokenization into a `Dataset`.

A `PromptPair` is two prefixes that differ in one feature (e.g. the subject's number) and the two
one-token answers each prefix predicts. `tokenize` checks every pair against one tokenizer
(answers must be one token, clean and patch must have equal token lengths) and pads them into
tensors. Nothing here knows about models.
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

DATA_DIR = Path(__file__).parent / "data"
NEOX_TOKENIZER_FILE = DATA_DIR / "tokenizers" / "gpt-neox-20b.json"
MISMATCHED = ("error", "drop")


@dataclass(frozen=True)
class PromptPair:
    """A clean prefix and a patch prefix with the one-token answer each predicts."""

    clean: str  # clean prefix, e.g. "The parents"
    patch: str  # patch prefix, e.g. "The parent"
    clean_answer: str  # begins with a space, e.g. " are"
    patch_answer: str  # e.g. " is"
    case: str = ""  # e.g. "plural"


@dataclass
class Dataset:
    """Prompt pairs tokenized for one tokenizer; rows are right-padded to a common length."""

    pairs: list[PromptPair]
    clean_tokens: torch.Tensor  # [n, seq] long, right-padded
    patch_tokens: torch.Tensor  # [n, seq] long, right-padded
    lengths: torch.Tensor  # [n] long: real length of clean and of patch (always equal)
    clean_answer: torch.Tensor  # [n] long token ids
    patch_answer: torch.Tensor  # [n] long token ids
    tokenizer_id: str  # see `tokenizer_id`; a model refuses data tokenized for another

    def __post_init__(self) -> None:
        n = len(self.pairs)
        if self.clean_tokens.ndim != 2 or self.clean_tokens.shape != self.patch_tokens.shape:
            raise ValueError(
                f"clean_tokens {tuple(self.clean_tokens.shape)} and patch_tokens "
                f"{tuple(self.patch_tokens.shape)} must both be [n, seq]"
            )
        for name in ("clean_tokens", "lengths", "clean_answer", "patch_answer"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows for {n} pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def seq_len(self) -> int:
        """Padded sequence length (columns of the token tensors)."""
        return self.clean_tokens.shape[1]

    @property
    def uniform_length(self) -> bool:
        """True when every prompt has the same real length (per-position scores need this)."""
        return bool((self.lengths == self.lengths[0]).all()) if len(self) else True

    def subset(self, idx: slice | Sequence[int] | torch.Tensor) -> Dataset:
        """Rows selected by a slice, a list of indices, or an index / boolean tensor."""
        if isinstance(idx, slice):
            pairs = self.pairs[idx]
        else:
            idx = torch.as_tensor(idx)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            idx = idx.long().flatten()
            pairs = [self.pairs[i] for i in idx.tolist()]
        return replace(
            self,
            pairs=pairs,
            clean_tokens=self.clean_tokens[idx],
            patch_tokens=self.patch_tokens[idx],
            lengths=self.lengths[idx],
            clean_answer=self.clean_answer[idx],
            patch_answer=self.patch_answer[idx],
        )

    def batches(self, batch_size: int) -> Iterator[Dataset]:
        """Contiguous slices of at most batch_size rows, in order (padding width unchanged)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.subset(slice(start, start + batch_size))

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on device."""
        return replace(
            self,
            clean_tokens=self.clean_tokens.to(device),
            patch_tokens=self.patch_tokens.to(device),
            lengths=self.lengths.to(device),
            clean_answer=self.clean_answer.to(device),
            patch_answer=self.patch_answer.to(device),
        )


_ID_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_id(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identify a tokenizer by its content: vocabulary size and a hash of its vocabulary.

    Content, not name: the same tokenizer read from a file or from a hub cache has different
    name_or_path but must give the same id.
    """
    size = len(tokenizer)
    try:
        cached = _ID_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha1("\n".join(f"{i}\t{t}" for t, i in vocab).encode()).hexdigest()[:12]
    ident = f"vocab{size}-{digest}"
    try:
        _ID_CACHE[tokenizer] = (size, ident)
    except TypeError:
        pass
    return ident


def neox_tokenizer() -> PreTrainedTokenizerFast:
    """The GPT-NeoX-20B tokenizer (Pythia's), from the copy shipped in tasks/data/tokenizers.

    Special tokens are set as Pythia's Hugging Face tokenizer sets them: bos = eos = unk =
    "<|endoftext|>" (id 0), no pad token.
    """
    tok = PreTrainedTokenizerFast(tokenizer_file=str(NEOX_TOKENIZER_FILE))
    tok.bos_token = tok.eos_token = tok.unk_token = "<|endoftext|>"
    return tok


def encode_all(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    if not texts:
        return []
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])


def _pieces(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    return tokenizer.batch_decode([[i] for i in ids])  # each id decoded alone


def _answer_ids(answers: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    distinct = list(dict.fromkeys(answers))
    return dict(zip(distinct, encode_all(distinct, tokenizer), strict=True))


def keep_uniform(
    pairs: Sequence[PromptPair], tokenizer: PreTrainedTokenizerBase
) -> list[PromptPair]:
    """Pairs whose answers are one token and whose clean and patch prompts both have the most
    common token length among such pairs, so that all kept prompts share one length."""
    answer_ids = _answer_ids(
        [a for p in pairs for a in (p.clean_answer, p.patch_answer)], tokenizer
    )
    prompts = list(dict.fromkeys(t for p in pairs for t in (p.clean, p.patch)))
    length = {t: len(ids) for t, ids in zip(prompts, encode_all(prompts, tokenizer), strict=True)}
    ok = [
        p
        for p in pairs
        if len(answer_ids[p.clean_answer]) == 1
        and len(answer_ids[p.patch_answer]) == 1
        and length[p.clean] == length[p.patch]
    ]
    if not ok:
        return []
    counts = Counter(length[p.clean] for p in ok)
    mode = max(counts, key=lambda k: (counts[k], -k))  # ties: the shorter length
    return [p for p in ok if length[p.clean] == mode]


def tokenize(
    pairs: Sequence[PromptPair],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prepend_bos: bool = False,
    mismatched: str = "error",
) -> Dataset:
    """Tokenize prompt pairs into right-padded tensors, checking them against the tokenizer.

    Answers must be one token. Clean and patch prompts of different token lengths raise
    (mismatched="error") or are dropped with a warning (mismatched="drop").
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError(
            "no prompt pairs: got an empty list; make some with tasks.sva.load / "
            "tasks.sva.generate or tasks.ioi.generate"
        )
    if mismatched not in MISMATCHED:
        raise ValueError(f"mismatched must be one of {MISMATCHED}, got {mismatched!r}")

    answer_ids = _answer_ids(
        [a for p in pairs for a in (p.clean_answer, p.patch_answer)], tokenizer
    )
    for i, p in enumerate(pairs):
        for answer in (p.clean_answer, p.patch_answer):
            ids = answer_ids[answer]
            if len(ids) != 1:
                raise ValueError(
                    f"answer {answer!r} is {len(ids)} tokens ({_pieces(ids, tokenizer)}) for this "
                    f"tokenizer; answers must be one token (pair {i}: {p.clean!r})"
                )

    prompts = list(dict.fromkeys(t for p in pairs for t in (p.clean, p.patch)))
    prompt_ids = dict(zip(prompts, encode_all(prompts, tokenizer), strict=True))
    clean_ids = [prompt_ids[p.clean] for p in pairs]
    patch_ids = [prompt_ids[p.patch] for p in pairs]
    bad = [i for i, (c, q) in enumerate(zip(clean_ids, patch_ids, strict=True)) if len(c) != len(q)]
    if bad and mismatched == "error":
        i = bad[0]
        raise ValueError(
            f"pair {i} ({pairs[i].clean!r} / {pairs[i].patch!r}): clean is {len(clean_ids[i])} "
            f"tokens, patch is {len(patch_ids[i])}; clean and patch must have equal token "
            f"lengths ({len(bad)} of {len(pairs)} differ); pass mismatched='drop' to drop them"
        )
    if bad:
        if len(bad) == len(pairs):
            raise ValueError(
                f"all {len(pairs)} pairs have clean and patch prompts of different token lengths "
                f"for this tokenizer (e.g. {pairs[0].clean!r} / {pairs[0].patch!r}); none remain"
            )
        warnings.warn(
            f"dropped {len(bad)} of {len(pairs)} pairs whose clean and patch prompts have "
            f"different token lengths",
            stacklevel=2,
        )
        keep = sorted(set(range(len(pairs))) - set(bad))
        pairs = [pairs[i] for i in keep]
        clean_ids = [clean_ids[i] for i in keep]
        patch_ids = [patch_ids[i] for i in keep]

    if prepend_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ValueError(
                "prepend_bos=True but the tokenizer has no bos_token; set tokenizer.bos_token "
                "(e.g. '<|endoftext|>' for GPT-NeoX) or pass prepend_bos=False"
            )
        clean_ids = [[bos, *ids] for ids in clean_ids]
        patch_ids = [[bos, *ids] for ids in patch_ids]

    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    seq = max(len(ids) for ids in clean_ids)
    return Dataset(
        pairs=pairs,
        clean_tokens=torch.tensor([ids + [pad] * (seq - len(ids)) for ids in clean_ids]),
        patch_tokens=torch.tensor([ids + [pad] * (seq - len(ids)) for ids in patch_ids]),
        lengths=torch.tensor([len(ids) for ids in clean_ids], dtype=torch.long),
        clean_answer=torch.tensor([answer_ids[p.clean_answer][0] for p in pairs]),
        patch_answer=torch.tensor([answer_ids[p.patch_answer][0] for p in pairs]),
        tokenizer_id=tokenizer_id(tokenizer),
    )
