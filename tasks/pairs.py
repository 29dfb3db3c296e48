"""Clean/patch prompt pairs and their tokenization into a `Dataset`.

A `PromptPair` is two prefixes that differ in one feature (e.g. the subject's number) and the two
one-token answers each prefix predicts. `tokenize` checks every pair against one tokenizer
(no word may encode to the tokenizer's unknown token, answers must be one token, clean and patch
must have equal token lengths, prompts must fit a given context) and pads them into tensors.
`filter_uniform` instead drops the pairs that do not fit one tokenizer and one prompt length,
and says in a `Dropped` report how many it dropped and why. Nothing here knows about models.
"""

from __future__ import annotations

import hashlib
import numbers
import re
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

DATA_DIR = Path(__file__).parent / "data"
NEOX_TOKENIZER_FILE = DATA_DIR / "tokenizers" / "gpt-neox-20b.json"
MISMATCHED = ("error", "drop")

# why filter_uniform drops a pair (the most common length's rule names the length) and the fix
EMPTY_ANSWER = "with an empty answer"
MULTI_TOKEN_ANSWER = "with a multi-token answer"
MISMATCHED_LENGTHS = "with clean and patch prompts of different token lengths"
FIXES = {
    EMPTY_ANSWER: "give each pair two answers of one token each, with their leading space",
    MULTI_TOKEN_ANSWER: "use answers that are one token for this tokenizer, with their leading "
    "space (e.g. ' is')",
    MISMATCHED_LENGTHS: "give clean and patch prompts the same number of tokens",
}


def whole_number(name: str, value: object, *, minimum: int = 1) -> int:
    """value as an int, or a ValueError naming it: bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be a whole number (an int), got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}={max(minimum, 10)}"
        )
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


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


@dataclass(frozen=True)
class Dropped:
    """What a filter dropped and why: for each reason, the positions of the dropped pairs in
    their input, in order (``unit`` names a position: "pair" 0-based, "line" of a file).
    Falsy when nothing was dropped; str() is one line:
    "dropped 12 of 400 pairs: 9 with a multi-token answer (first: line 17), 3 not of the most
    common length 7 (first: line 2)"."""

    total: int  # pairs the filter was given
    reasons: dict[str, list[int]] = field(default_factory=dict)  # reason -> positions
    unit: str = "pair"

    def __len__(self) -> int:
        return sum(len(where) for where in self.reasons.values())

    def describe(self) -> str:
        """'9 with a multi-token answer (first: line 17), 3 not of the ...': one part a reason."""
        return ", ".join(
            f"{len(where)} {reason} (first: {self.unit} {where[0]})"
            for reason, where in self.reasons.items()
            if where
        )

    def __str__(self) -> str:
        why = f": {self.describe()}" if self else ""
        return f"dropped {len(self)} of {self.total} pairs{why}"

    def none_remain(self, what: str | None = None) -> ValueError:
        """The error for a filter that dropped every pair: the reasons, and how to fix them."""
        fixes = [FIXES[r] for r, where in self.reasons.items() if r in FIXES and where]
        of = f" of {what}" if what else ""
        return ValueError(
            f"none remain of the {self.total} pairs{of} for this tokenizer: {self.describe()}; "
            + "; ".join(fixes or ["give pairs that fit this tokenizer"])
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


def _short(text: str, width: int = 60) -> str:
    return repr(text) if len(text) <= width else repr(text[: width - 3] + "...")


def _unknown_word(text: str, ids: list[int], tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The word of text that encodes to the tokenizer's unknown token ("" for whitespace that
    does), or None if none does (the unknown token written out literally, e.g. GPT-NeoX's
    "<|endoftext|>", does not count)."""
    unk = tokenizer.unk_token_id
    if unk is None or unk not in ids:
        return None
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [
            s
            for i, s in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
            if i == unk
        ]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # no offsets: a slow tokenizer
        words = text.split()
        for j, word in enumerate(words):
            if unk in encode_all([(" " if j else "") + word], tokenizer)[0]:
                return word
        return text.strip()
    for start, end in spans:
        piece = text[start:end]
        if piece.strip() == tokenizer.unk_token:
            continue
        start += len(piece) - len(piece.lstrip())
        for match in re.finditer(r"\S+", text):  # the whole whitespace-delimited word
            if match.start() < end and match.end() > start:
                return match.group()
        return piece.strip()
    return None


def _known(text: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    return tokenizer.unk_token_id not in encode_all([text], tokenizer)[0]


def _check_known(
    pairs: Sequence[PromptPair],
    ids: dict[str, list[int]],
    tokenizer: PreTrainedTokenizerBase,
    names: Sequence[str] | None = None,
) -> None:
    """Raise for the first pair with a prompt word or an answer that encodes to the unknown
    token (ids: the token ids of every prompt and answer of pairs); names[i] names pair i."""
    unk = tokenizer.unk_token_id
    if unk is None or not any(unk in i for i in ids.values()):
        return
    for i, p in enumerate(pairs):
        name = names[i] if names is not None else f"pair {i}"
        for answer in (p.clean_answer, p.patch_answer):
            if _unknown_word(answer, ids[answer], tokenizer) is None:
                continue
            spaced = " " + answer.lstrip()
            fix = (
                f"write answers with their leading space, {spaced!r}"
                if answer != spaced and _known(spaced, tokenizer)
                else "use an answer in the tokenizer's vocabulary"
            )
            raise ValueError(
                f"{name} (clean {_short(p.clean)}): answer {answer!r} encodes to the unknown "
                f"token {tokenizer.unk_token}; {fix}"
            )
        for side, text in (("clean", p.clean), ("patch", p.patch)):
            word = _unknown_word(text, ids[text], tokenizer)
            if word is None:
                continue
            if not word:
                what, fix = "whitespace", "remove leading, trailing and repeated spaces"
            else:
                what, fix = f"word {word!r}", "use words in the tokenizer's vocabulary"
                before = " " if not text.startswith(word) else ""
                cased = [v for v in dict.fromkeys((word.capitalize(), word.lower())) if v != word]
                known = [v for v in cased if _known(before + v, tokenizer)]
                fix += f" (it knows {known[0]!r})" if known else ", cased as it has them"
            raise ValueError(
                f"{name} ({side} {_short(text)}): {what} encodes to the unknown token "
                f"{tokenizer.unk_token}; {fix}"
            )


def _encode_pairs(
    pairs: Sequence[PromptPair], tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[int]]:
    """Token ids of every distinct prompt and answer of pairs."""
    texts = list(
        dict.fromkeys(t for p in pairs for t in (p.clean, p.patch, p.clean_answer, p.patch_answer))
    )
    return dict(zip(texts, encode_all(texts, tokenizer), strict=True))


def filter_uniform(
    pairs: Sequence[PromptPair],
    tokenizer: PreTrainedTokenizerBase,
    *,
    names: Sequence[str] | None = None,
) -> tuple[list[PromptPair], Dropped]:
    """The pairs whose answers are one token and whose clean and patch prompts both have the
    most common token length among such pairs (so all kept prompts share one length), and a
    report of the others. A prompt word or answer that encodes to the unknown token is an
    error, not a drop; names[i] (default "pair i") names pair i in it. Keeps nothing and drops
    everything rather than raising when no pair fits: see `Dropped.none_remain`."""
    pairs = list(pairs)
    ids = _encode_pairs(pairs, tokenizer)
    _check_known(pairs, ids, tokenizer, names)
    reasons: dict[str, list[int]] = {
        EMPTY_ANSWER: [],
        MULTI_TOKEN_ANSWER: [],
        MISMATCHED_LENGTHS: [],
    }
    ok = []
    for i, p in enumerate(pairs):
        answers = (len(ids[p.clean_answer]), len(ids[p.patch_answer]))
        if 0 in answers:
            reasons[EMPTY_ANSWER].append(i)
        elif answers != (1, 1):
            reasons[MULTI_TOKEN_ANSWER].append(i)
        elif len(ids[p.clean]) != len(ids[p.patch]):
            reasons[MISMATCHED_LENGTHS].append(i)
        else:
            ok.append(i)
    kept = ok
    if ok:
        counts = Counter(len(ids[pairs[i].clean]) for i in ok)
        mode = max(counts, key=lambda k: (counts[k], -k))  # ties: the shorter length
        kept = [i for i in ok if len(ids[pairs[i].clean]) == mode]
        reasons[f"not of the most common length {mode}"] = sorted(set(ok) - set(kept))
    dropped = Dropped(len(pairs), {reason: where for reason, where in reasons.items() if where})
    return [pairs[i] for i in kept], dropped


def keep_uniform(
    pairs: Sequence[PromptPair], tokenizer: PreTrainedTokenizerBase, what: str | None = None
) -> list[PromptPair]:
    """`filter_uniform`'s kept pairs; a ValueError naming what (e.g. "the simple templates")
    when none remain."""
    kept, dropped = filter_uniform(pairs, tokenizer)
    if not kept:
        raise dropped.none_remain(what)
    return kept


def tokenize(
    pairs: Sequence[PromptPair],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prepend_bos: bool = False,
    mismatched: str = "error",
    max_len: int | None = None,
) -> Dataset:
    """Tokenize prompt pairs into right-padded tensors, checking them against the tokenizer.

    No prompt word or answer may encode to the tokenizer's unknown token, and answers must be
    one token. Clean and patch prompts of different token lengths raise (mismatched="error")
    or are dropped with a warning (mismatched="drop"). max_len (the model's context, e.g.
    cfg.n_ctx; None: unchecked) bounds each prompt's tokens, BOS included.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError(
            "no prompt pairs: got an empty list; make some with tasks.sva.load / "
            "tasks.sva.generate or tasks.ioi.generate"
        )
    if mismatched not in MISMATCHED:
        raise ValueError(f"mismatched must be one of {MISMATCHED}, got {mismatched!r}")
    if not isinstance(prepend_bos, bool):
        raise ValueError(f"prepend_bos must be True or False, got {prepend_bos!r}")
    if max_len is not None:
        max_len = whole_number("max_len", max_len)

    ids = _encode_pairs(pairs, tokenizer)
    _check_known(pairs, ids, tokenizer)
    for i, p in enumerate(pairs):
        for answer in (p.clean_answer, p.patch_answer):
            if len(ids[answer]) != 1:
                raise ValueError(
                    f"answer {answer!r} is {len(ids[answer])} tokens "
                    f"({_pieces(ids[answer], tokenizer)}) for this tokenizer; answers must be "
                    f"one token (pair {i}: {p.clean!r})"
                )
        for side, text in (("clean", p.clean), ("patch", p.patch)):
            if not ids[text] and not prepend_bos:
                raise ValueError(
                    f"pair {i} ({side} {text!r}): the {side} prompt is empty (0 tokens); "
                    "give every prompt at least one word"
                )

    clean_ids = [ids[p.clean] for p in pairs]
    patch_ids = [ids[p.patch] for p in pairs]
    bad = [i for i, (c, q) in enumerate(zip(clean_ids, patch_ids, strict=True)) if len(c) != len(q)]
    if bad and mismatched == "error":
        i = bad[0]
        raise ValueError(
            f"pair {i} ({pairs[i].clean!r} / {pairs[i].patch!r}): clean is {len(clean_ids[i])} "
            f"tokens, patch is {len(patch_ids[i])}; clean and patch must have equal token "
            f"lengths ({len(bad)} of {len(pairs)} differ); pass mismatched='drop' to drop them"
        )
    if bad:
        dropped = Dropped(len(pairs), {MISMATCHED_LENGTHS: bad})
        if len(bad) == len(pairs):
            raise dropped.none_remain()
        warnings.warn(str(dropped), stacklevel=2)
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
        clean_ids = [[bos, *i] for i in clean_ids]
        patch_ids = [[bos, *i] for i in patch_ids]

    if max_len is not None:
        too_long = [i for i, c in enumerate(clean_ids) if len(c) > max_len]
        if too_long:
            i = too_long[0]
            with_bos = " with BOS" if prepend_bos else ""
            raise ValueError(
                f"pair {i} (clean {_short(pairs[i].clean)}): {len(clean_ids[i])} tokens"
                f"{with_bos}, more than the model's context of {max_len} tokens "
                f"({len(too_long)} of {len(pairs)} pairs are too long); shorten the prompts to "
                f"at most {max_len - int(prepend_bos)} tokens"
            )

    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    seq = max(len(i) for i in clean_ids)
    return Dataset(
        pairs=pairs,
        clean_tokens=torch.tensor([i + [pad] * (seq - len(i)) for i in clean_ids]),
        patch_tokens=torch.tensor([i + [pad] * (seq - len(i)) for i in patch_ids]),
        lengths=torch.tensor([len(i) for i in clean_ids], dtype=torch.long),
        clean_answer=torch.tensor([ids[p.clean_answer][0] for p in pairs]),
        patch_answer=torch.tensor([ids[p.patch_answer][0] for p in pairs]),
        tokenizer_id=tokenizer_id(tokenizer),
    )
