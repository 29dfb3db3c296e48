"""Tests of tasks/: prompt pairs, tokenization checks, metrics, SVA and IOI generators."""

from __future__ import annotations

import json

import pytest
import torch

import tasks
from tasks import Dataset, PromptPair, accuracy, ioi, last_logits, logit_diff, sva, tokenize
from tasks import sva_words as words


@pytest.fixture(scope="module")
def neox():
    return tasks.neox_tokenizer()


PARENTS = PromptPair("The parents", "The parent", " are", " is", "plural")
RC = PromptPair(
    "The athlete that the managers like",
    "The athletes that the managers like",
    " is",
    " are",
    "singular_plural",
)


# --- tokenize -------------------------------------------------------------------------------


def test_tokenize_shapes_ids_and_padding(neox):
    data = tokenize([PARENTS, RC], neox)
    assert data.clean_tokens.shape == data.patch_tokens.shape == (2, 6)
    assert data.clean_tokens.dtype == torch.long
    assert data.lengths.tolist() == [2, 6]
    # " The athlete that the managers like" is [380, ...] (PROVENANCE); without the space "The"
    assert data.clean_tokens[1].tolist() == [510, 27799, 326, 253, 15071, 751]
    assert data.clean_tokens[0, :2].tolist() == neox.encode("The parents")
    assert data.patch_tokens[0, :2].tolist() == neox.encode("The parent")
    assert data.clean_tokens[0, 2:].tolist() == [0] * 4  # right padding with eos (id 0)
    assert [neox.decode([int(i)]) for i in data.clean_answer] == [" are", " is"]
    assert [neox.decode([int(i)]) for i in data.patch_answer] == [" is", " are"]
    assert not data.uniform_length and len(data) == 2
    assert data.tokenizer_id == tasks.tokenizer_id(neox)


def test_tokenize_prepend_bos(neox):
    data = tokenize([PARENTS, RC], neox, prepend_bos=True)
    assert data.lengths.tolist() == [3, 7]
    assert data.clean_tokens[:, 0].tolist() == [neox.bos_token_id] * 2
    assert data.clean_tokens[1, 1:].tolist() == [510, 27799, 326, 253, 15071, 751]


def test_multi_token_answer_names_the_word(neox):
    bad = PromptPair("The parents", "The parent", " carpenters", " is")
    with pytest.raises(ValueError, match=r"answer ' carpenters' is 3 tokens.*one token"):
        tokenize([PARENTS, bad], neox)


def test_mismatched_lengths_error_or_drop(neox):
    aunt = PromptPair("The aunts", "The aunt", " are", " is", "plural")  # 3 vs 2 tokens
    with pytest.raises(ValueError, match=r"'The aunts'.*3 tokens.*2.*mismatched='drop'"):
        tokenize([PARENTS, aunt], neox)
    with pytest.warns(UserWarning, match=r"dropped 1 of 2 pairs: 1 with clean and patch .* pair 0"):
        data = tokenize([aunt, PARENTS], neox, mismatched="drop")
    assert data.pairs == [PARENTS] and data.clean_tokens.shape == (1, 2)
    with pytest.raises(ValueError, match="none remain"):
        tokenize([aunt], neox, mismatched="drop")


def test_empty_raises(neox):
    with pytest.raises(ValueError, match="no prompt pairs"):
        tokenize([], neox)


def test_tokenizer_id_is_content_based(neox):
    again = tasks.neox_tokenizer()
    assert tasks.tokenizer_id(again) == tasks.tokenizer_id(neox)
    again.add_tokens(["<new-token>"])
    assert tasks.tokenizer_id(again) != tasks.tokenizer_id(neox)


def test_subset_and_batches_round_trip(neox):
    pairs = sva.generate("simple", 5, tokenizer=neox)
    data = tokenize(pairs, neox)
    parts = list(data.batches(2))
    assert [len(b) for b in parts] == [2, 2, 1]
    assert all(isinstance(b, Dataset) for b in parts)
    assert torch.equal(torch.cat([b.clean_tokens for b in parts]), data.clean_tokens)
    assert sum((b.pairs for b in parts), []) == pairs
    picked = data.subset(torch.tensor([False, True, False, True, False]))
    assert picked.pairs == [pairs[1], pairs[3]]
    assert torch.equal(picked.patch_answer, data.patch_answer[[1, 3]])
    assert data.subset([4, 0]).pairs == [pairs[4], pairs[0]]


# --- metrics --------------------------------------------------------------------------------


def _hand_dataset() -> Dataset:
    pairs = [PARENTS, RC, PARENTS]
    return Dataset(
        pairs=pairs,
        clean_tokens=torch.zeros(3, 4, dtype=torch.long),
        patch_tokens=torch.zeros(3, 4, dtype=torch.long),
        lengths=torch.tensor([2, 4, 1]),
        clean_answer=torch.tensor([1, 2, 3]),
        patch_answer=torch.tensor([5, 6, 7]),
        tokenizer_id="test",
    )


def test_logit_diff_reads_last_real_position():
    data = _hand_dataset()
    logits = torch.randn(3, 4, 10) * 100  # noise everywhere else, incl. padding positions
    logits[0, 1, 1], logits[0, 1, 5] = 3.0, 1.0  # row 0: length 2 -> position 1
    logits[1, 3, 2], logits[1, 3, 6] = -1.0, 4.0  # row 1: length 4 -> position 3
    logits[2, 0, 3], logits[2, 0, 7] = 0.5, 0.25  # row 2: length 1 -> position 0
    expected = torch.tensor([1.0 - 3.0, 4.0 - (-1.0), 0.25 - 0.5])
    assert torch.allclose(logit_diff(logits, data), expected)
    assert torch.allclose(logit_diff(logits, data, use="evaluation"), -expected)
    assert accuracy(logits, data) == pytest.approx(2 / 3)
    assert torch.equal(last_logits(logits, data.lengths)[1], logits[1, 3])
    assert torch.allclose(logit_diff(last_logits(logits, data.lengths), data), expected)


def test_metric_errors():
    data = _hand_dataset()
    with pytest.raises(ValueError, match="unknown logit_diff use 'probs'"):
        logit_diff(torch.zeros(3, 4, 10), data, use="probs")
    with pytest.raises(ValueError, match="batch 2 but data has 3"):
        logit_diff(torch.zeros(2, 4, 10), data)
    with pytest.raises(ValueError, match="lengths must lie in"):
        last_logits(torch.zeros(3, 3, 10), data.lengths)


# --- SVA --------------------------------------------------------------------------------------

SINGULAR_VERBS = {" is", " has", " does", " goes"}
PLURAL_VERBS = {" are", " have", " do", " go"}
SINGULAR = {s for nouns in (words.SUBJECT_NOUNS, words.RC_NOUNS, words.PP_NOUNS) for s, _ in nouns}
PLURAL = {p for nouns in (words.SUBJECT_NOUNS, words.RC_NOUNS, words.PP_NOUNS) for _, p in nouns}
AGREES_WITH = {"simple": 1, "across_pp": 1, "within_rc": -1, "across_rc": 1}  # word index
EXAMPLES = {  # a known pair of each construction (the first three are lines of the files)
    "simple": PromptPair("The parents", "The parent", " are", " is", "plural"),
    "across_pp": PromptPair(
        "The kids near the bikes", "The kid near the bikes", " are", " is", "plural_plural"
    ),
    "within_rc": PromptPair(
        "The athlete that the chefs",
        "The athlete that the chef",
        " have",
        " has",
        "singular_plural",
    ),
    "across_rc": PromptPair(
        "The athlete that the chefs like",
        "The athletes that the chefs like",
        " is",
        " are",
        "singular_plural",
    ),
}


def _number(word: str) -> str:
    assert (word in SINGULAR) != (word in PLURAL), word
    return "singular" if word in SINGULAR else "plural"


def _verb_number(answer: str) -> str:
    assert (answer in SINGULAR_VERBS) != (answer in PLURAL_VERBS), answer
    return "singular" if answer in SINGULAR_VERBS else "plural"


@pytest.mark.parametrize("construction", sva.CONSTRUCTIONS)
def test_generate_agreement_and_one_length(construction, neox):
    pairs = sva.generate(construction, 60, seed=3, tokenizer=neox)
    assert len(pairs) == 60 and len(set(pairs)) == 60
    data = tokenize(pairs, neox)
    assert data.uniform_length
    assert (
        data.lengths[0]
        == {"simple": 2, "across_pp": 5, "within_rc": 5, "across_rc": 6}[construction]
    )
    i = AGREES_WITH[construction]
    for p in pairs:
        assert p.clean != p.patch and p.clean_answer != p.patch_answer
        clean_noun, patch_noun = p.clean.split()[i], p.patch.split()[i]
        assert _verb_number(p.clean_answer) == _number(clean_noun) != _number(patch_noun)
        assert _verb_number(p.patch_answer) == _number(patch_noun)
        assert p.case.split("_")[0] == _number(p.clean.split()[1])  # the main subject
    assert EXAMPLES[construction] in sva.space(construction)


@pytest.mark.parametrize("construction", sva.CONSTRUCTIONS)
def test_generate_deterministic_under_seed(construction, neox):
    a = sva.generate(construction, 20, seed=1, tokenizer=neox)
    assert a == sva.generate(construction, 20, seed=1, tokenizer=neox)
    assert a != sva.generate(construction, 20, seed=2, tokenizer=neox)
    assert a[:10] == sva.generate(construction, 10, seed=1, tokenizer=neox)


def test_generated_space_contains_every_file_pair():
    for construction, stem in sva.FILES.items():
        space = set(sva.space(construction))
        for split in sva.SPLITS:
            pairs = sva.read_jsonl(sva.SVA_DIR / f"{stem}_{split}.json")
            assert all(p in space for p in pairs), construction


def test_every_verb_is_one_neox_token(neox):
    for verbs in (words.ANSWER_VERBS, words.RC_VERBS):
        for form in (f for pair in verbs for f in pair):
            assert len(neox.encode(f" {form}")) == 1, form


@pytest.mark.parametrize("construction", sva.CONSTRUCTIONS)
def test_generated_splits_disjoint(construction, neox):
    train = sva.load(construction, "train", tokenizer=neox)
    test = sva.load(construction, "test", n=40, tokenizer=neox)
    prompts = lambda ps: {t for p in ps for t in (p.clean, p.patch)}
    assert not prompts(train) & prompts(test)
    assert len(set(train)) == len(train)
    both = tokenize(train[:50] + test, neox)
    assert both.uniform_length  # train and test share one prompt length
    with pytest.raises(ValueError, match=f"has only {len(train)} distinct"):
        sva.load(construction, "train", n=len(train) + 1, tokenizer=neox)


@pytest.mark.parametrize("construction", ["simple", "across_pp", "within_rc"])
def test_load_file_dedups_and_splits_disjoint(construction):
    train = sva.load(construction, "train", source="file")
    test = sva.load(construction, "test", source="file")
    raw = sva.read_jsonl(sva.SVA_DIR / f"{sva.FILES[construction]}_train.json")
    assert len(train) == len(set(train)) < len(raw)  # the files repeat lines
    assert len(test) == len(set(test)) and not set(train) & set(test)
    assert train[0] == raw[0]  # file order kept
    assert sva.load(construction, "train", n=7, source="file") == train[:7]


def test_load_file_with_tokenizer_one_length(neox):
    data = tokenize(sva.load("across_pp", "test", source="file", tokenizer=neox), neox)
    assert data.uniform_length and len(data) > 100


def test_load_errors():
    with pytest.raises(ValueError, match=r"'across_rc' has no data file.*source=\"generated\""):
        sva.load("across_rc", source="file")
    with pytest.raises(ValueError, match=r"unknown construction 'nounpp'.*across_pp"):
        sva.load("nounpp")
    with pytest.raises(ValueError, match="unknown split"):
        sva.load("simple", "dev")
    with pytest.raises(ValueError, match=r"n=10000 .* only 150 distinct"):
        sva.load("simple", n=10000, source="file")


def test_load_jsonl_path(tmp_path):
    row = {
        "clean_prefix": "The boys",
        "patch_prefix": "The boy",
        "clean_answer": " are",
        "patch_answer": " is",
        "case": "plural",
    }
    path = tmp_path / "mine.json"
    path.write_text(
        "\n".join(
            json.dumps(r)
            for r in (row, row, {**row, "clean_answer": " do", "patch_answer": " does"})
        )
    )
    with pytest.warns(UserWarning, match=r"dropped 1 of 3 pairs: 1 repeating an earlier line"):
        pairs = sva.load(str(path))
    assert pairs == [
        PromptPair("The boys", "The boy", " are", " is", "plural"),
        PromptPair("The boys", "The boy", " do", " does", "plural"),
    ]


def test_vocabulary_covers_templates_and_files():
    vocab = sva.vocabulary()
    assert {"The", "the", "that", "near", "athletes", "men", "likes", "are", "skaters"} <= vocab
    for construction in sva.CONSTRUCTIONS:
        for p in sva.space(construction)[::97]:
            assert set(p.clean.split()) | {p.clean_answer.strip()} <= vocab
    assert not any(w.startswith(" ") or w == "" for w in vocab)


# --- IOI --------------------------------------------------------------------------------------


def test_ioi_pairs(neox):
    pairs = ioi.generate(30, seed=0, tokenizer=neox)
    assert len(set(pairs)) == 30
    assert {p.case for p in pairs} == {"then", "when", "after"}
    for p in pairs:
        a, b = p.clean_answer.strip(), p.patch_answer.strip()
        assert a != b and p.clean.split().count(a) == 1
        assert p.patch == p.clean.replace(a, "#").replace(b, a).replace("#", b)  # names swapped
        assert p.patch.split().count(b) == 1
    data = tokenize(pairs, neox)  # answers one token, clean and patch equal length
    by_case = {
        c: {int(n) for p, n in zip(pairs, data.lengths, strict=True) if p.case == c}
        for c in ioi.TEMPLATES
    }
    assert all(len(lengths) == 1 for lengths in by_case.values())
    assert pairs == ioi.generate(30, seed=0, tokenizer=neox)
    assert pairs != ioi.generate(30, seed=1, tokenizer=neox)
    uniform = tokenize(ioi.generate(10, tokenizer=neox, templates=("then", "when")), neox)
    assert uniform.uniform_length
    with pytest.raises(ValueError, match="unknown IOI templates"):
        ioi.generate(3, templates=("before",))
