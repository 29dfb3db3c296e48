"""Text corpora to read features by: a file of the user's, or the text a model's dictionaries
were trained on.

A `Corpus` is a name and its documents (strings). ``read_corpus(path)`` reads a JSONL file (one
object a line with a "text" string; suffix .jsonl or .json) or a plain text file, split into
documents at blank lines. ``default_corpus(model)`` is the dictionaries' own training text where
this machine can make it: for the organism (and its neuron baseline), the rows of grammar text
its dictionaries were trained on (`token_rows` of the dictionaries' sentence stream, 32 tokens
each, decoded; deterministic from the seed); for gemma-3-270m with the dictionaries trained here
(saes.trained), the first rows of their training corpus (128 tokens each, the stream training
packs, decoded), where the corpus is built. Pythia's Marks dictionaries were trained on the Pile
and Gemma Scope 2 on Gemma's pretraining mix, neither of which is here: None, pass a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saes.splice import SplicedModel

JSONL_SUFFIXES = (".jsonl", ".json")
ORGANISM_ROWS = 2000  # rows of the default organism corpus (64k tokens)
TRAINED_ROWS = 256  # rows of the trained Gemma dictionaries' corpus (32k tokens)
CORPUS_FORMATS = ('a text file (documents separated by blank lines) or a JSONL file (.jsonl, one '
                  'object a line with a "text" string)')


@dataclass(frozen=True)
class Corpus:
    """Documents of text, and a name saying where they come from."""

    name: str
    documents: tuple[str, ...]
    max_tokens: int | None = None  # longest context the dictionaries saw (None: no limit known)


def read_corpus(path: str | Path) -> Corpus:
    """The documents of a JSONL or text file; a missing, unreadable or empty file, or a JSONL
    line without a "text" string, is an error naming the file (and line) and the fix."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"corpus {path} {what}; pass {CORPUS_FORMATS}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         f"pass {CORPUS_FORMATS}") from err
    documents = _jsonl(path, text) if path.suffix in JSONL_SUFFIXES else _paragraphs(text)
    if not documents:
        raise ValueError(f"corpus {path} holds no text; pass {CORPUS_FORMATS}")
    return Corpus(path.name, tuple(documents))


def _jsonl(path: Path, text: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"corpus {path} line {number} is not JSON ({err.msg}); each line "
                             'of a JSONL corpus is an object with a "text" string') from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'corpus {path} line {number} has no "text" string; each line of a '
                             'JSONL corpus is an object with a "text" string, e.g. {"text": '
                             '"The keys are here."}')
        if record["text"].strip():
            documents.append(record["text"])
    return documents


def _paragraphs(text: str) -> list[str]:
    """Documents of a text file: its blocks of lines between blank lines."""
    blocks, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            lines.append(line)
        elif lines:
            blocks.append("\n".join(lines))
            lines = []
    return blocks


def has_default_corpus(model_name: str) -> bool:
    """Whether `default_corpus` makes a corpus for the model of this name (before loading it)."""
    from saes.loader import TRAINED_FOR
    from saes.trained.paths import corpus_dir

    base = model_name.partition("+")[0]
    return base == "organism" or (base in TRAINED_FOR and (corpus_dir() / "train.jsonl").exists())


def default_corpus(model: SplicedModel, n_rows: int | None = None) -> Corpus | None:
    """The text ``model``'s dictionaries were trained on, if this machine can make it (the
    organism's grammar text, the trained Gemma dictionaries' corpus), else None."""
    if not has_default_corpus(model.name):
        return None
    if not model.name.startswith("organism"):
        return _trained_corpus(model, n_rows or TRAINED_ROWS)
    n_rows = n_rows or ORGANISM_ROWS
    from saes.loader import ORGANISM_DIR
    from saes.organism.data import SAE_DATA_SEED_OFFSET, token_rows

    training = json.loads((ORGANISM_DIR / "training.json").read_text())  # what train.py ran
    seq, seed = training["language_model"]["seq"], training["seed"] + SAE_DATA_SEED_OFFSET
    rows = token_rows(model.tokenizer, n_rows, seq, seed, exclude_heldout=True)
    documents = tuple(model.tokenizer.decode(row) for row in rows.tolist())
    return Corpus(f"organism grammar text (dictionary training stream, seed {seed}, {n_rows} "
                  f"rows of {seq} tokens)", documents, max_tokens=seq)


def _trained_corpus(model: SplicedModel, n_rows: int) -> Corpus | None:
    """The first n_rows rows of the training stream of saes.trained, if the model's dictionaries
    are those (or neurons); None for other dictionaries (e.g. Gemma Scope 2)."""
    from saes.loader import TRAINED
    from saes.trained import corpus as trained
    from saes.trained.paths import corpus_dir
    from saes.trained.train import TrainConfig, packed_rows

    if not model.name.endswith("+neurons") and any(
            d.release != TRAINED for d in model.dictionaries.values()):
        return None
    cfg = TrainConfig()
    rows = packed_rows(cfg, model.tokenizer, list(trained.read(corpus_dir() / "train.jsonl")),
                       max_rows=n_rows)
    documents = tuple(model.tokenizer.decode(row[1:]) for row in rows)  # BOS: the model adds it
    return Corpus(f"the trained dictionaries' corpus (saes.trained, seed {cfg.seed}, first "
                  f"{len(rows)} rows of {cfg.context} tokens)", documents, max_tokens=cfg.context)
