"""Indirect object identification (IOI) prompt pairs with the three templates of RelP.

"Then, B and A went to the PLACE. B gave a OBJECT to" -> " A" (the indirect object). The patch
prompt swaps the two names everywhere, so its answer is " B". `case` names the template.
"""

from __future__ import annotations

import random
from collections import Counter

from transformers import PreTrainedTokenizerBase

from .pairs import PromptPair, encode_all, whole_number

TEMPLATES: dict[str, str] = {
    "then": "Then, {B} and {A} went to the {place}. {B} gave a {object} to",
    "when": "When, {B} and {A} went to the {place}. {B} gave a {object} to",
    "after": "After {B} and {A} went to the {place}, {B} gave a {object} to",
}

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Paul",
    "Anna", "Lisa", "Mark", "Michael", "David", "Sarah", "Emma", "Jack", "Ryan", "Alex",
    "Chris", "Laura", "Rachel", "Max", "Ben", "Sam", "Eric", "Jane", "Luke", "Adam",
    "Steve", "Kevin", "Jessica", "Lucy", "Peter", "George", "Henry", "Helen", "Grace", "Rose",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office",
    "house", "station", "park", "beach", "market", "library",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "drink", "ring", "book", "bone", "ball", "basketball",
    "computer", "necklace", "snack", "kiss", "gift", "letter",
)  # fmt: skip


def make_pair(template: str, a: str, b: str, place: str, obj: str) -> PromptPair:
    """The pair for one filling: clean answers " a", patch has a and b swapped."""
    text = TEMPLATES[template]
    clean = text.format(A=a, B=b, place=place, object=obj)
    patch = text.format(A=b, B=a, place=place, object=obj)
    return PromptPair(clean, patch, f" {a}", f" {b}", template)


def _fillings(
    template: str, tokenizer: PreTrainedTokenizerBase | None, names: list[str]
) -> list[tuple[str, str]]:
    """(place, object) fillings of a template; with a tokenizer, those giving its most common
    prompt length (so one template's prompts share one length)."""
    fills = [(p, o) for p in PLACES for o in OBJECTS]
    if tokenizer is None:
        return fills
    texts = [make_pair(template, names[0], names[1], p, o).clean for p, o in fills]
    lengths = [len(ids) for ids in encode_all(texts, tokenizer)]
    counts = Counter(lengths)
    mode = max(counts, key=lambda k: (counts[k], -k))
    return [f for f, n in zip(fills, lengths, strict=True) if n == mode]


def generate(
    n: int,
    *,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    templates: tuple[str, ...] | None = None,
) -> list[PromptPair]:
    """n distinct IOI pairs, templates in turn, names/place/object drawn with seed.

    With a tokenizer only names that are one known token (with their leading space; not the
    tokenizer's unknown token) are used, and
    each template keeps its most common prompt length, so clean and patch always match; the
    "after" template is one token shorter than "then"/"when" for GPT-NeoX, so pass
    templates=("then", "when") when every prompt must have one length.
    """
    n = whole_number("n", n)
    seed = whole_number("seed", seed, minimum=0)
    if isinstance(templates, str):
        raise ValueError(
            f"templates must be a tuple of template names, got the string {templates!r}; "
            f"pass ({templates!r},)"
        )
    templates = tuple(TEMPLATES) if templates is None else tuple(templates)
    unknown = [t for t in templates if t not in TEMPLATES]
    if unknown or not templates:
        raise ValueError(f"unknown IOI templates {unknown}; use some of {tuple(TEMPLATES)}")
    names = list(NAMES)
    if tokenizer is not None:
        ids = encode_all([f" {name}" for name in names], tokenizer)
        unk = tokenizer.unk_token_id
        names = [name for name, i in zip(names, ids, strict=True) if len(i) == 1 and i[0] != unk]
        if len(names) < 2:
            raise ValueError(
                f"fewer than two IOI names are one known token for this tokenizer (e.g. "
                f"{' ' + NAMES[0]!r} encodes to ids {ids[0]}); use a tokenizer that knows "
                "English names"
            )
    fills = {t: _fillings(t, tokenizer, names) for t in templates}
    capacity = len(templates) * min(len(f) for f in fills.values()) * len(names) * (len(names) - 1)
    if n > capacity:
        raise ValueError(f"asked for n={n} IOI pairs but only {capacity} distinct ones exist")
    rng = random.Random(seed)
    seen: set[PromptPair] = set()
    out: list[PromptPair] = []
    while len(out) < n:
        template = templates[len(out) % len(templates)]
        a, b = rng.sample(names, 2)
        place, obj = rng.choice(fills[template])
        pair = make_pair(template, a, b, place, obj)
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out
