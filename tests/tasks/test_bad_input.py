"""Bad input to tasks/ is an error naming it, or a drop that is counted (never a silent wrong
result): words the tokenizer does not know, prompts longer than the context, malformed or
partly unusable JSON Lines files, and counts that are not whole numbers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import tasks
from saes.loader import ORGANISM_DIR
from tasks import PromptPair, ioi, sva, tokenize
from tasks.pairs import Dropped, filter_uniform

DOG = PromptPair("The dog near the cats", "The dogs near the cats", " is", " are")
UNK = "<|unk|>"


@pytest.fixture(scope="module")
def organism():
    """The organism's word-level tokenizer: every word it does not know is <|unk|>."""
    return AutoTokenizer.from_pretrained(ORGANISM_DIR)


@pytest.fixture(scope="module")
def neox():
    return tasks.neox_tokenizer()


def _row(p: PromptPair) -> dict[str, str]:
    return {"clean_prefix": p.clean, "patch_prefix": p.patch, "clean_answer": p.clean_answer,
            "patch_answer": p.patch_answer, "case": p.case}


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# --- class 2: words the tokenizer does not know ----------------------------------------------


def test_answer_without_leading_space_is_an_error_not_unk(organism):
    assert organism.encode("is", add_special_tokens=False) == [organism.unk_token_id]  # the trap
    bare = PromptPair(DOG.clean, DOG.patch, "is", " are")
    with pytest.raises(ValueError) as err:
        tokenize([DOG, bare], organism)
    assert str(err.value) == (
        f"pair 1 (clean 'The dog near the cats'): answer 'is' encodes to the unknown token "
        f"{UNK}; write answers with their leading space, ' is'"
    )


@pytest.mark.parametrize(
    "clean, patch, message",
    [
        ("The dog near the zebras", "The dogs near the zebras",
         r"pair 0 \(clean 'The dog near the zebras'\): word 'zebras' encodes to the unknown"),
        ("The dog near the cats", "The dogs near the café",
         r"pair 0 \(patch 'The dogs near the café'\): word 'café' encodes to the unknown"),
        ("the dog near the cats", "the dogs near the cats",
         r"word 'the' encodes to the unknown token <\|unk\|>; .*\(it knows 'The'\)"),
        ("The dog near the cats ", "The dogs near the cats ",
         r"whitespace encodes to the unknown token .*remove leading, trailing"),
    ],
)
def test_unknown_prompt_word_is_named(organism, clean, patch, message):
    with pytest.raises(ValueError, match=message):
        tokenize([PromptPair(clean, patch, " is", " are")], organism)


def test_unknown_answer_out_of_vocabulary(organism):
    with pytest.raises(ValueError, match=r"answer ' zebra' encodes to the unknown token"):
        tokenize([PromptPair("The dog", "The dogs", " zebra", " are")], organism)


def test_literal_special_token_is_not_unknown(neox):
    """NeoX's unk is "<|endoftext|>" (id 0, also BOS/EOS): written out it is that token, not a
    word the byte-level BPE failed to encode."""
    pair = PromptPair("The <|endoftext|> parents", "The <|endoftext|> parent", " are", " is")
    data = tokenize([pair], neox)
    assert 0 in data.clean_tokens[0].tolist()


def test_filtering_raises_on_unknown_instead_of_keeping_it(organism, tmp_path):
    """'is' is one token (<|unk|>), so a length filter alone would keep it."""
    path = _write(tmp_path / "mine.jsonl", [_row(DOG), _row(DOG), "",
                                            {**_row(DOG), "clean_answer": "is"}])
    with pytest.raises(ValueError) as err:
        sva.load(str(path), tokenizer=organism)
    assert str(err.value).startswith(f"{path}:4 (clean 'The dog near the cats'): answer 'is' "
                                     "encodes to the unknown token")
    with pytest.raises(ValueError, match=r"pair 1 \(clean"):
        filter_uniform([DOG, PromptPair(DOG.clean, DOG.patch, "is", " are")], organism)


@pytest.mark.parametrize("construction", sva.CONSTRUCTIONS)
def test_organism_knows_every_generated_word(organism, construction):
    pairs = sva.load(construction, n=100, tokenizer=organism)
    data = tokenize(pairs, organism)
    assert organism.unk_token_id not in data.clean_tokens.tolist()
    assert organism.unk_token_id not in data.clean_answer.tolist() + data.patch_answer.tolist()


def test_ioi_skips_unknown_names(organism, neox):
    with pytest.raises(ValueError, match=r"fewer than two IOI names are one known token"):
        ioi.generate(4, tokenizer=organism)  # every name is <|unk|>, one token
    assert len(ioi.generate(4, tokenizer=neox)) == 4


def test_prompt_longer_than_the_context(neox):
    long = PromptPair("The parents" + " near the cats" * 3, "The parent" + " near the cats" * 3,
                      " are", " is")  # 11 tokens
    assert tokenize([long], neox, max_len=11).seq_len == 11
    with pytest.raises(ValueError, match=r"pair 1 .*12 tokens with BOS, more than the model's "
                                         r"context of 11 tokens .*at most 10 tokens"):
        tokenize([DOG, long], neox, max_len=11, prepend_bos=True)
    with pytest.raises(ValueError, match=r"context of 4 tokens \(1 of 2 pairs"):
        tokenize([PromptPair("The parents", "The parent", " are", " is"), long], neox, max_len=4)
    with pytest.raises(ValueError, match=r"max_len must be a whole number"):
        tokenize([long], neox, max_len=11.0)


def test_empty_prompt_and_bad_flags(neox):
    with pytest.raises(ValueError, match=r"pair 0 \(clean ''\): the clean prompt is empty"):
        tokenize([PromptPair("", "The", " are", " is")], neox)
    with pytest.raises(ValueError, match=r"prepend_bos must be True or False"):
        tokenize([DOG], neox, prepend_bos="no")  # type: ignore[arg-type]


# --- class 5: dropped pairs are counted; file errors name the line ----------------------------


def _mixed_file(tmp_path: Path) -> tuple[Path, list[PromptPair]]:
    """8 good pairs (5 tokens) and, on lines 3, 5, 6, 8, 9, 11, the dropped ones."""
    good = sva.generate("across_pp", 8, seed=0)
    rows = [
        _row(good[0]), _row(good[1]),
        _row(good[0]),  # 3: repeat of line 1
        _row(good[2]),
        {**_row(good[3]), "clean_answer": " are happy"},  # 5: multi-token answer
        {**_row(good[3]), "patch_answer": ""},  # 6: empty answer
        _row(good[3]),
        {**_row(good[4]), "patch_prefix": "The dogs near the big cats"},  # 8: lengths differ
        _row(PromptPair("The dog", "The dogs", " is", " are")),  # 9: 2 tokens, not 5
        _row(good[4]),
        _row(PromptPair("The cat", "The cats", " is", " are")),
        *[_row(p) for p in good[5:]],
    ]
    return _write(tmp_path / "mine.jsonl", rows), good


def test_dropped_pairs_are_counted_by_rule_with_their_first_line(organism, tmp_path):
    path, good = _mixed_file(tmp_path)
    pairs, dropped = sva.load_jsonl(path, organism)
    assert pairs == good
    assert str(dropped) == (
        "dropped 6 of 14 pairs: 1 repeating an earlier line (first: line 3), 1 with an empty "
        "answer (first: line 6), 1 with a multi-token answer (first: line 5), 1 with clean and "
        "patch prompts of different token lengths (first: line 8), 2 not of the most common "
        "length 5 (first: line 9)"
    )
    assert len(dropped) + len(pairs) == dropped.total == 14
    with pytest.warns(UserWarning) as record:
        assert sva.load(str(path), tokenizer=organism, n=8) == good
    assert [str(w.message) for w in record] == [f"{path}: {dropped}"]


def test_a_clean_file_drops_nothing_and_warns_nothing(organism, tmp_path):
    good = sva.generate("across_pp", 6, seed=1)
    path = _write(tmp_path / "ok.jsonl", [_row(p) for p in good])
    pairs, dropped = sva.load_jsonl(path, organism)
    assert pairs == good and not dropped and str(dropped) == "dropped 0 of 6 pairs"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sva.load(path, tokenizer=organism) == good  # a Path is a path too


def test_none_remain_names_the_rules_and_the_fix(organism, tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        {**_row(DOG), "clean_answer": " is happy"},
        {**_row(DOG), "patch_prefix": "The dogs near the big cats"},
    ])
    with pytest.raises(ValueError) as err:
        sva.load(str(path), tokenizer=organism)
    assert str(err.value) == (
        f"none remain of the 2 pairs of {path} for this tokenizer: 1 with a multi-token answer "
        "(first: line 1), 1 with clean and patch prompts of different token lengths (first: "
        "line 2); use answers that are one token for this tokenizer, with their leading space "
        "(e.g. ' is'); give clean and patch prompts the same number of tokens"
    )


def test_filter_uniform_report_of_pairs(neox):
    aunt = PromptPair("The aunts", "The aunt", " are", " is")  # 3 vs 2 tokens
    kept, dropped = filter_uniform([aunt, DOG, DOG], neox)
    assert kept == [DOG, DOG] and dropped == Dropped(3, {
        "with clean and patch prompts of different token lengths": [0]})
    with pytest.raises(ValueError, match=r"none remain of the 1 pairs of the aunts"):
        tasks.pairs.keep_uniform([aunt], neox, "the aunts")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{bad json", r":2 is not valid JSON \(Expecting property name .* at column 2\)"),
        ("[1, 2]", r":2 is a JSON list, not an object"),
        ('{"clean_prefix": "The dog"}', r":2 lacks keys \['patch_prefix', 'clean_answer'"),
        (json.dumps({**_row(DOG), "clean_answer": 5}), r":2: clean_answer is 5 \(int\), not a str"),
        (json.dumps({**_row(DOG), "case": None}), r":2: case is None \(NoneType\), not a string"),
        (json.dumps({**_row(DOG), "patch_prefix": " "}), r":2: patch_prefix is empty"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "mine.jsonl", [_row(DOG), line, _row(DOG)])
    for read in (sva.read_jsonl, sva.load, sva.load_jsonl):
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + message):
            read(str(path))


def test_not_utf8_and_empty_files(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(_row(DOG)).encode() + b'\n{"clean_prefix": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin\.jsonl:2 is not UTF-8 text"):
        sva.load(str(latin))
    blank = _write(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(ValueError, match=r"blank\.jsonl holds no prompt pairs"):
        sva.load(str(blank))


# --- class 7: counts must be whole numbers -----------------------------------------------------

LOADERS = {
    "sva.load": lambda **kw: sva.load("simple", **kw),
    "sva.generate": lambda n=3, **kw: sva.generate("simple", n, **kw),
    "ioi.generate": lambda n=3, **kw: ioi.generate(n, **kw),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("bad", [2.5, "10", True, 3.0, None])
def test_non_integer_n_is_refused(loader, bad):
    if bad is None and loader == "sva.load":
        return  # n=None: every pair
    with pytest.raises(ValueError, match=rf"n must be a whole number \(an int\), got {bad!r}"):
        LOADERS[loader](n=bad)


@pytest.mark.parametrize("loader", LOADERS)
def test_n_below_one_and_bad_seed_are_refused(loader):
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        LOADERS[loader](n=0)
    with pytest.raises(ValueError, match=r"seed must be a whole number .* got '1'"):
        LOADERS[loader](n=2, seed="1")
    with pytest.raises(ValueError, match="seed must be at least 0"):
        LOADERS[loader](n=2, seed=-1)
    assert len(LOADERS[loader](n=np.int64(2), seed=torch.tensor(1).item())) == 2


def test_other_silently_accepted_inputs():
    with pytest.raises(ValueError, match=r"templates must be a tuple .* pass \('then',\)"):
        ioi.generate(3, templates="then")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"construction must be one of .* got 5 \(int\)"):
        sva.load(5)  # type: ignore[arg-type]
