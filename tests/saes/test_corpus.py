"""Corpora for feature contexts: text and JSONL files, and the organism's own training text."""

from __future__ import annotations

import pytest

from saes import load
from saes.corpus import default_corpus, read_corpus
from saes.organism.data import SAE_DATA_SEED_OFFSET, token_rows


@pytest.fixture(scope="module")
def organism():
    return load("organism", device="cpu")


def test_a_text_file_splits_into_documents_at_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("The keys are here.\nThey shine.\n\n\n  \nThe dog runs.\n")
    corpus = read_corpus(path)
    assert corpus.documents == ("The keys are here.\nThey shine.", "The dog runs.")
    assert corpus.name == "notes.txt"


def test_a_jsonl_file_takes_each_lines_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "The keys are here."}\n\n{"text": "The dog runs.", "id": 2}\n')
    assert read_corpus(path).documents == ("The keys are here.", "The dog runs.")


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"txt": "no"}\n', 'line 2 has no "text" string'),
    ('{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
    ('[1, 2]\n', 'line 1 has no "text" string'),
    ("", "holds no text"),
])
def test_bad_jsonl_names_the_line_and_the_fix(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_corpus(path)


def test_missing_and_binary_files_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a text file"):
        read_corpus(tmp_path / "nope.txt")
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_corpus(binary)


def test_the_organism_corpus_is_its_dictionaries_training_rows(organism):
    """Deterministic, and tokenizing each document gives back exactly the training rows."""
    corpus = default_corpus(organism, n_rows=20)
    assert corpus is not None and corpus.max_tokens == 32 and len(corpus.documents) == 20
    rows = token_rows(organism.tokenizer, 20, 32, SAE_DATA_SEED_OFFSET, exclude_heldout=True)
    ids = [organism.tokenizer(d, add_special_tokens=False)["input_ids"] for d in corpus.documents]
    assert ids == rows.tolist()
    assert default_corpus(organism, n_rows=20) == corpus


def test_no_default_corpus_for_models_whose_training_text_is_not_here(tiny):
    assert default_corpus(tiny) is None  # a model of another name: no training text known
