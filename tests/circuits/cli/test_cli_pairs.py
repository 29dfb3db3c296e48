"""The prompt pairs of `circuits discover --task FILE.jsonl` on the organism: a word the model's
tokenizer does not know, a prompt longer than its context, a malformed line or a file none of
whose pairs fit is one line on stderr naming the word / pair / file:line, exit code 2, nothing
written; pairs that are dropped are counted on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuits.cli import main
from tasks import PromptPair, sva

SMALL = ["--n", "4", "--eval-n", "4", "--batch-size", "4", "--quiet", "--no-edges"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread


def _row(p: PromptPair, **change: str) -> dict[str, str]:
    return {"clean_prefix": p.clean, "patch_prefix": p.patch, "clean_answer": p.clean_answer,
            "patch_answer": p.patch_answer, **change}


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = sva.generate("across_pp", 8, seed=0)  # words the organism knows, 5 tokens each


def _stderr(capsys) -> list[str]:
    """The non-empty lines on stderr (the organism loads without a progress bar)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _fails(path: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """Run discover on path: exit code 2, one line on stderr (returned), nothing written."""
    out = tmp_path / "run"
    code = main(["discover", "--task", str(path), *SMALL, *extra, "--out", str(out)])
    lines = _stderr(capsys)
    assert code == 2 and len(lines) == 1, lines
    err = lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    return err


def test_answer_without_leading_space(tmp_path, capsys):
    rows = [_row(p) for p in GOOD[:2]] + [_row(GOOD[2], clean_answer=GOOD[2].clean_answer[1:])]
    path = _write(tmp_path / "mine.jsonl", rows + [_row(p) for p in GOOD[3:]])
    err = _fails(path, tmp_path, capsys)
    bare, spaced = GOOD[2].clean_answer[1:], GOOD[2].clean_answer
    assert err == (f"circuits discover: error: {path}:3 (clean {GOOD[2].clean!r}): answer "
                   f"{bare!r} encodes to the unknown token <|unk|>; write answers with their "
                   f"leading space, {spaced!r}")


@pytest.mark.parametrize("word", ["zebras", "café"])
def test_unknown_prompt_word(word, tmp_path, capsys):
    odd = PromptPair(f"The dog near the {word}", f"The dogs near the {word}", " is", " are")
    path = _write(tmp_path / "mine.jsonl", [_row(p) for p in GOOD[:5]] + [_row(odd)]
                  + [_row(p) for p in GOOD[5:]])
    err = _fails(path, tmp_path, capsys)
    assert f"{path}:6 (clean 'The dog near the {word}'): word '{word}' encodes to the unknown " \
           "token <|unk|>" in err


def test_prompt_longer_than_the_context(tmp_path, capsys):
    """The organism's context is 128 tokens: a 131-token prompt (known words) is refused."""
    tail = " near the cats" * 42
    long = [PromptPair(p.clean + tail, p.patch + tail, p.clean_answer, p.patch_answer)
            for p in GOOD]
    path = _write(tmp_path / "long.jsonl", [_row(p) for p in long])
    err = _fails(path, tmp_path, capsys)
    assert "pair 0 (clean " in err and "131 tokens, more than the model's context of 128 tokens" \
           " (4 of 4 pairs are too long); shorten the prompts to at most 128 tokens" in err


def test_dropped_pairs_counted_on_one_line(tmp_path, capsys):
    rows = [_row(p) for p in GOOD[:3]]
    rows += [_row(GOOD[0]),  # 4: a repeat
             _row(GOOD[3], clean_answer=" are happy"),  # 5: multi-token answer
             _row(PromptPair("The dog", "The dogs", " is", " are"))]  # 6: 2 tokens, not 5
    path = _write(tmp_path / "mine.jsonl", rows + [_row(p) for p in GOOD[3:]])
    out = tmp_path / "run"
    assert main(["discover", "--task", str(path), *SMALL, "--out", str(out)]) == 0
    assert _stderr(capsys) == [
        f"warning: {path}: dropped 3 of 11 pairs: 1 repeating an earlier line (first: line 4), "
        "1 with a multi-token answer (first: line 5), 1 not of the most common length 5 (first: "
        "line 6)"
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_discovery"] == summary["n_evaluation"] == 4


def test_too_few_after_dropping_says_why(tmp_path, capsys):
    rows = [_row(p) for p in GOOD[:6]] + [_row(GOOD[6], patch_answer=" are happy")]
    err = _fails(_write(tmp_path / "mine.jsonl", rows), tmp_path, capsys)
    assert err.endswith("has 6 usable pairs for this model (dropped 1 of 7 pairs: 1 with a "
                        "multi-token answer (first: line 7)); --n 4 + --eval-n 4 need 8: lower "
                        "them")


def test_none_remain_names_the_rule_and_the_fix(tmp_path, capsys):
    rows = [_row(p, patch_prefix=p.patch + " near the cats") for p in GOOD]
    err = _fails(_write(tmp_path / "mine.jsonl", rows), tmp_path, capsys)
    assert "none remain of the 8 pairs of" in err and "8 with clean and patch prompts of " \
           "different token lengths (first: line 1); give clean and patch prompts the same " \
           "number of tokens" in err


@pytest.mark.parametrize(
    "line, message",
    [
        ("{oops", ":3 is not valid JSON (Expecting property name enclosed in double quotes at "
                  "column 2)"),
        ('{"clean_prefix": "The dog"}', ":3 lacks keys ['patch_prefix', 'clean_answer', "
                                        "'patch_answer']"),
        (json.dumps(_row(GOOD[0], clean_answer=7)), ":3: clean_answer is 7 (int), not a string"),  # type: ignore[arg-type]
    ],
)
def test_malformed_line_names_file_and_line(line, message, tmp_path, capsys):
    rows = [_row(p) for p in GOOD[:2]] + [line] + [_row(p) for p in GOOD[2:]]
    path = _write(tmp_path / "mine.jsonl", rows)
    assert f"{path}{message}" in _fails(path, tmp_path, capsys)


@pytest.mark.parametrize("flag", ["--n", "--eval-n"])
def test_non_integer_count(flag, tmp_path, capsys):
    code = main(["discover", flag, "2.5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "'2.5' is not an integer" in err
    assert list(tmp_path.iterdir()) == []
