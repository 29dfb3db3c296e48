"""Subject-verb agreement prompt pairs in four constructions (Marks et al.; Finlayson et al.).

- simple:    "The parents"                        -> " are" / " is"   (agrees with parents)
- across_pp: "The kids near the bikes"            -> " are" / " is"   (agrees with kids)
- within_rc: "The athlete that the managers"      -> " are" / " is"   (agrees with managers)
- across_rc: "The athlete that the managers like" -> " is" / " are"   (agrees with athlete)

The patch prompt flips the number of the noun the answer agrees with. `case` is the clean
prompt's number, "singular"/"plural" for simple and "<subject>_<other noun>" for the rest
("plural_singular"), as in the feature-circuits files. Generated pairs enumerate the full
template space; train and test split it by prompt (a pair and its mirror image, which runs the
same two prompts, always fall on one side), so the splits share no forward pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
from functools import cache, lru_cache

from transformers import PreTrainedTokenizerBase

from . import sva_words as w
from .pairs import (
    DATA_DIR,
    Dropped,
    PromptPair,
    filter_uniform,
    keep_uniform,
    tokenizer_id,
    whole_number,
)

CONSTRUCTIONS = ("simple", "within_rc", "across_rc", "across_pp")
SPLITS = ("train", "test")
SOURCES = ("generated", "file")
FILES = {"simple": "simple", "across_pp": "nounpp", "within_rc": "within_rc"}
SVA_DIR = DATA_DIR / "sva"
TEST_FRACTION = 0.25  # share of prompt groups held out for split="test" (generated)
REPEATED = "repeating an earlier line"  # load_jsonl's reason for a repeat
_KEYS = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer")
_UNIFORM: dict[tuple[str, str], tuple[PromptPair, ...]] = {}  # (construction, tokenizer id)


def _check_construction(construction: str) -> None:
    if construction not in CONSTRUCTIONS:
        raise ValueError(
            f"unknown construction {construction!r}; use one of {CONSTRUCTIONS} "
            f"(or, for load, a path to a JSON Lines file)"
        )


def _pair(clean: str, patch: str, verb: tuple[str, str], num: int, case: str) -> PromptPair:
    """Pair whose answer agrees with a noun of number num (0 singular, 1 plural) in clean."""
    return PromptPair(clean, patch, f" {verb[num]}", f" {verb[1 - num]}", case)


@cache
def space(construction: str) -> tuple[PromptPair, ...]:
    """Every pair the templates of a construction produce, in a fixed order."""
    _check_construction(construction)
    out: list[PromptPair] = []
    two = (0, 1)
    if construction == "simple":
        for noun in w.SUBJECT_NOUNS + w.RC_NOUNS:
            for c in two:
                for verb in w.ANSWER_VERBS:
                    out.append(_pair(f"The {noun[c]}", f"The {noun[1 - c]}", verb, c, w.NUMBERS[c]))
    elif construction == "across_pp":
        for n1 in w.SUBJECT_NOUNS:
            for c in two:
                for prep in w.PREPOSITIONS:
                    for n2 in w.PP_NOUNS:
                        for d in two:
                            case = f"{w.NUMBERS[c]}_{w.NUMBERS[d]}"
                            clean = f"The {n1[c]} {prep} the {n2[d]}"
                            patch = f"The {n1[1 - c]} {prep} the {n2[d]}"
                            for verb in w.ANSWER_VERBS:
                                out.append(_pair(clean, patch, verb, c, case))
    elif construction == "within_rc":
        for n1 in w.SUBJECT_NOUNS:
            for c in two:
                for n2 in w.RC_NOUNS:
                    for d in two:
                        case = f"{w.NUMBERS[c]}_{w.NUMBERS[d]}"
                        clean = f"The {n1[c]} that the {n2[d]}"
                        patch = f"The {n1[c]} that the {n2[1 - d]}"
                        for verb in w.ANSWER_VERBS:
                            out.append(_pair(clean, patch, verb, d, case))
    else:  # across_rc
        for n1 in w.SUBJECT_NOUNS:
            for c in two:
                for n2 in w.RC_NOUNS:
                    for d in two:
                        case = f"{w.NUMBERS[c]}_{w.NUMBERS[d]}"
                        for rc_verb in w.RC_VERBS:
                            clean = f"The {n1[c]} that the {n2[d]} {rc_verb[d]}"
                            patch = f"The {n1[1 - c]} that the {n2[d]} {rc_verb[d]}"
                            for verb in w.ANSWER_VERBS:
                                out.append(_pair(clean, patch, verb, c, case))
    return tuple(out)


def _group(p: PromptPair) -> str:
    """The pair's two prompts, unordered: mirror-image pairs share a group."""
    return "\n".join(sorted((p.clean, p.patch)))


@cache
def _test_groups(construction: str) -> frozenset[str]:
    """The TEST_FRACTION of prompt groups with the smallest md5, fixed for a construction."""
    groups = sorted({_group(p) for p in space(construction)})
    groups.sort(key=lambda g: hashlib.md5(g.encode()).hexdigest())
    return frozenset(groups[: math.ceil(TEST_FRACTION * len(groups))])


def pool(
    construction: str,
    split: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[PromptPair]:
    """All distinct generated pairs of a construction, of one split (None: both), in a fixed
    order; with a tokenizer, only those with one-token answers at the construction's most
    common prompt length (measured over the whole space, so train and test share it)."""
    if tokenizer is None:
        pairs = list(space(construction))
    else:
        key = (construction, tokenizer_id(tokenizer))
        if key not in _UNIFORM:
            what = f"the {construction} templates"
            _UNIFORM[key] = tuple(keep_uniform(space(construction), tokenizer, what))
        pairs = list(_UNIFORM[key])
    if split is not None:
        _check_split(split)
        test = _test_groups(construction)
        pairs = [p for p in pairs if (_group(p) in test) == (split == "test")]
    return pairs


def generate(
    construction: str,
    n: int,
    *,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    split: str | None = None,
) -> list[PromptPair]:
    """n pairs of a construction drawn with seed, without repeats until the space runs out.

    With a tokenizer every pair has one-token answers and every prompt one shared token
    length. split ("train"/"test") draws from that part of the space only; a smaller n is a
    prefix of a larger one under the same seed.
    """
    n = whole_number("n", n)
    seed = whole_number("seed", seed, minimum=0)
    candidates = pool(construction, split, tokenizer)
    if not candidates:
        raise ValueError(
            f"no {construction} pairs fit this tokenizer (answers must be one token and clean "
            f"and patch prompts of equal length)"
        )
    rng = random.Random(seed)
    out: list[PromptPair] = []
    while len(out) < n:
        order = candidates[:]
        rng.shuffle(order)
        out += order[: n - len(out)]
    return out


def _rows(path: str | os.PathLike[str]) -> list[tuple[int, PromptPair]]:
    """(line number, pair) of every non-blank line of a JSON Lines file of prompt pairs; a line
    that is not a JSON object with the four keys, each a string, is an error naming it."""
    need = f"each line must be a JSON object with string values for {', '.join(_KEYS)}"
    out = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}:{line_no} is not UTF-8 text ({err.reason} at byte {err.start}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{line_no} is not valid JSON ({err.msg} at column {err.colno}); {need}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{line_no} is a JSON {type(row).__name__}, not an object; {need}"
                )
            missing = [k for k in _KEYS if k not in row]
            if missing:
                raise ValueError(f"{path}:{line_no} lacks keys {missing}; each line needs {_KEYS}")
            for key in (*_KEYS, "case"):
                if key in row and not isinstance(row[key], str):
                    raise ValueError(
                        f"{path}:{line_no}: {key} is {row[key]!r} "
                        f"({type(row[key]).__name__}), not a string; {need}"
                    )
            for key in _KEYS[:2]:
                if not row[key].strip():
                    raise ValueError(
                        f"{path}:{line_no}: {key} is empty; every prompt needs at least one word"
                    )
            clean, patch, clean_answer, patch_answer = (row[k] for k in _KEYS)
            pair = PromptPair(clean, patch, clean_answer, patch_answer, row.get("case", ""))
            out.append((line_no, pair))
    if not out:
        raise ValueError(f"{path} holds no prompt pairs (no non-blank line); {need}")
    return out


def read_jsonl(path: str | os.PathLike[str]) -> list[PromptPair]:
    """Pairs from a feature-circuits JSON Lines file (clean_prefix, patch_prefix, clean_answer,
    patch_answer, optional case), in file order, repeats kept. A malformed line (invalid JSON,
    missing keys, values not strings, an empty prompt) or an empty file is an error naming the
    file and the line."""
    return [pair for _, pair in _rows(path)]


def load_jsonl(
    path: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[list[PromptPair], Dropped]:
    """The distinct pairs of a JSON Lines file in file order and a report (by file line) of those
    dropped: repeats of an earlier line and, with a tokenizer, those `filter_uniform` drops
    (empty or multi-token answers, clean and patch of different lengths, prompts not of the
    most common length). A word that encodes to the tokenizer's unknown token is an error
    naming the line, and so is a file of which no pair remains."""
    rows = _rows(path)
    first: dict[PromptPair, int] = {}
    repeats = []
    for line_no, pair in rows:
        if pair in first:
            repeats.append(line_no)
        else:
            first[pair] = line_no
    pairs, lines = list(first), list(first.values())
    reasons = {REPEATED: repeats} if repeats else {}
    if tokenizer is not None:
        pairs, dropped = filter_uniform(pairs, tokenizer, names=[f"{path}:{n}" for n in lines])
        reasons |= {why: [lines[i] for i in where] for why, where in dropped.reasons.items()}
    report = Dropped(len(rows), reasons, unit="line")
    if not pairs:
        raise report.none_remain(str(path))
    return pairs, report


def _dedup(pairs: list[PromptPair]) -> list[PromptPair]:
    return list(dict.fromkeys(pairs))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def _file_pairs(
    construction: str, split: str, tokenizer: PreTrainedTokenizerBase | None
) -> list[PromptPair]:
    """A file split, deduplicated; test loses every pair also in train."""
    if construction not in FILES:
        raise ValueError(
            f"{construction!r} has no data file (the feature-circuits rc_train/rc_test files "
            f'were not obtainable); use source="generated"'
        )
    train = _dedup(read_jsonl(SVA_DIR / f"{FILES[construction]}_train.json"))
    seen = set(train)
    test = [
        p for p in _dedup(read_jsonl(SVA_DIR / f"{FILES[construction]}_test.json")) if p not in seen
    ]
    pairs = train if split == "train" else test
    if tokenizer is not None:  # one length for both splits
        kept = set(keep_uniform(train + test, tokenizer))
        pairs = [p for p in pairs if p in kept]
    return pairs


def load(
    construction: str | os.PathLike[str],
    split: str = "train",
    n: int | None = None,
    *,
    source: str = "generated",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[PromptPair]:
    """Distinct pairs of one split, train and test disjoint.

    source="generated": the split's part of the template space (test: a fixed 25% of
    prompt groups), shuffled with seed.
    source="file": the feature-circuits file (across_pp reads nounpp), deduplicated, in file
    order; test drops anything in train. construction may also be a path to a JSON Lines
    file (deduplicated; split is then ignored; what is dropped is counted in a warning, see
    `load_jsonl`). With a tokenizer, only pairs with one-token answers at one shared prompt
    length. n keeps the first n (error if fewer exist).
    """
    _check_split(split)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")
    if n is not None:
        n = whole_number("n", n)
    seed = whole_number("seed", seed, minimum=0)
    if isinstance(construction, os.PathLike):
        construction, is_path = str(os.fspath(construction)), True
    elif isinstance(construction, str):
        is_path = construction.endswith((".json", ".jsonl")) or "/" in construction
    else:
        raise ValueError(
            f"construction must be one of {CONSTRUCTIONS} or a path to a JSON Lines file, got "
            f"{construction!r} ({type(construction).__name__})"
        )
    if is_path:
        pairs, dropped = load_jsonl(construction, tokenizer)
        if dropped:
            warnings.warn(f"{construction}: {dropped}", stacklevel=2)
        what = str(construction)
    else:
        _check_construction(construction)
        if source == "file":
            pairs = _file_pairs(construction, split, tokenizer)
        else:
            pairs = pool(construction, split, tokenizer)
            random.Random(seed).shuffle(pairs)
        what = f"{construction} {split} ({source})"
    if n is not None:
        if n > len(pairs):
            raise ValueError(
                f"asked for n={n} pairs but {what} has only {len(pairs)} distinct ones"
                f"{' for this tokenizer' if tokenizer is not None else ''}; pass n <= {len(pairs)}"
            )
        pairs = pairs[:n]
    return pairs


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    words = set(w.FUNCTION_WORDS) | set(w.PREPOSITIONS)
    for pairs in (w.SUBJECT_NOUNS, w.RC_NOUNS, w.PP_NOUNS, w.ANSWER_VERBS, w.RC_VERBS):
        words |= {form for pair in pairs for form in pair}
    for path in sorted(SVA_DIR.glob("*.json")):
        for p in read_jsonl(path):
            words |= {
                *p.clean.split(),
                *p.patch.split(),
                p.clean_answer.strip(),
                p.patch_answer.strip(),
            }
    return frozenset(words)


def vocabulary() -> set[str]:
    """Every word of the SVA templates and of the shipped data files, cased as they appear."""
    return set(_vocabulary())
