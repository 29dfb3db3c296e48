"""A corpus of real English from Debian packages, for the dictionaries trained here on Gemma-3-270M.

    python -m saes.trained.corpus [--out DIR]     # writes DIR/{train,heldout}.jsonl + corpus.json

Sources (nobody here wrote them; each read from the files its Debian package installs):

- ``bible-kjv`` (+ ``bible-kjv-text``): the King James Bible, one document per chapter, read
  with the package's own ``bible`` program; the 1611 translation's copyright has expired.
- ``fortunes``/``fortunes-min``: the BSD fortune-cookie quotations, one document each.
- ``debian-reference-en``: the Debian Reference manual (GPL-2+), one document per section.
- ``python3.11-doc``: the Python 3.11 documentation's reStructuredText sources (PSF licence),
  one document per file.

Each document goes to the held-out split when a hash of its id says so (5%), so the split does
not depend on the order files are read in. Token counts are Gemma's tokenizer's.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HELDOUT_PERCENT = 5
FORMAT = "saes.trained.corpus/1"


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # the Debian package(s) to install
    licence: str
    read: Callable[[], Iterator[tuple[str, str]]]  # (document id, text)


def _bible() -> Iterator[tuple[str, str]]:
    if shutil.which("bible") is None:
        raise FileNotFoundError("the `bible` program (Debian package bible-kjv)")
    out = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line.strip())
        if m:  # "Ge1:1 In the beginning ..." -> chapter "Ge1"
            chapters.setdefault(m[1] + m[2], []).append(m[4])
        elif line.strip() and chapters:  # a verse wrapped onto a second line
            chapters[next(reversed(chapters))][-1] += " " + line.strip()
    for chapter, verses in chapters.items():
        yield f"kjv/{chapter}", " ".join(verses)


FORTUNE_DIR = Path("/usr/share/games/fortunes")
NOT_PROSE = {"art", "ascii-art"}  # pictures drawn in characters


def _fortunes() -> Iterator[tuple[str, str]]:
    files = sorted(f for f in FORTUNE_DIR.glob("*")
                   if f.suffix == "" and f.is_file() and f.name not in NOT_PROSE)
    if not files:
        raise FileNotFoundError(f"fortune files in {FORTUNE_DIR} (Debian package fortunes)")
    for f in files:
        quotes = f.read_text(encoding="utf-8", errors="replace").split("\n%\n")
        for i, quote in enumerate(quotes):
            if quote.strip():
                yield f"fortunes/{f.name}/{i}", quote.strip()


class _Text(html.parser.HTMLParser):
    """The visible text of an HTML page, one paragraph a line; sections split at <h1>-<h3>."""

    BLOCK = {"p", "div", "li", "pre", "tr", "h1", "h2", "h3", "h4", "dt", "dd", "br", "table"}
    SKIP = {"script", "style", "head"}

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[list[str]] = [[]]
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag in ("h1", "h2", "h3"):
            self.sections.append([])
        if tag in self.BLOCK:
            self.sections[-1].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.sections[-1].append(data)


def _tidy(text: str) -> str:
    lines = (re.sub(r"[ \t\r]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


DEBIAN_REFERENCE = Path("/usr/share/debian-reference")


def _debian_reference() -> Iterator[tuple[str, str]]:
    pages = sorted(DEBIAN_REFERENCE.glob("*.en.html"))
    if not pages:
        raise FileNotFoundError(
            f"{DEBIAN_REFERENCE}/*.en.html (Debian package debian-reference-en)")
    for page in pages:
        parser = _Text()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for i, section in enumerate(parser.sections):
            text = _tidy("".join(section))
            if len(text) > 200:
                yield f"debian-reference/{page.stem}/{i}", text


PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def _python_docs() -> Iterator[tuple[str, str]]:
    files = sorted(PYTHON_DOCS.rglob("*.rst.txt"))
    if not files:
        raise FileNotFoundError(f"{PYTHON_DOCS}/**/*.rst.txt (Debian package python3.11-doc)")
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if len(text) > 200:
            yield f"python-docs/{f.relative_to(PYTHON_DOCS)}", text


SOURCES = (
    Source("kjv-bible", "bible-kjv bible-kjv-text", "public domain (KJV, 1611)", _bible),
    Source("fortunes", "fortunes fortunes-min", "BSD (fortune-mod); quotations as attributed",
           _fortunes),
    Source("debian-reference", "debian-reference-en", "GPL-2+", _debian_reference),
    Source("python-docs", "python3.11-doc", "PSF License 2.0 (Python documentation)", _python_docs),
)
APT_COMMAND = "apt-get install -y " + " ".join(s.package for s in SOURCES)


def is_heldout(doc_id: str) -> bool:
    digest = hashlib.sha256(doc_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def documents() -> Iterator[tuple[Source, str, str]]:
    """(source, document id, text) for every document of every source."""
    for source in SOURCES:
        try:
            docs = list(source.read())
        except (FileNotFoundError, subprocess.CalledProcessError) as e:
            raise FileNotFoundError(
                f"corpus source {source.name!r} is missing ({e}); install it with: {APT_COMMAND}"
            ) from e
        for doc_id, text in docs:
            yield source, doc_id, text


def build(out: Path, tokenizer) -> dict:
    """Write out/train.jsonl, out/heldout.jsonl ({"id", "text"} a line) and out/corpus.json."""
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict] = {
        s.name: {"package": s.package, "licence": s.licence, "documents": 0, "tokens": 0,
                 "heldout_documents": 0, "heldout_tokens": 0}
        for s in SOURCES
    }
    with (out / "train.jsonl").open("w") as train, (out / "heldout.jsonl").open("w") as heldout:
        for source, doc_id, text in documents():
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            split = is_heldout(doc_id)
            (heldout if split else train).write(json.dumps({"id": doc_id, "text": text}) + "\n")
            entry = stats[source.name]
            entry["heldout_documents" if split else "documents"] += 1
            entry["heldout_tokens" if split else "tokens"] += n
    manifest = {
        "format": FORMAT,
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "heldout_percent": HELDOUT_PERCENT,
        "sources": stats,
        "tokens": sum(s["tokens"] for s in stats.values()),
        "heldout_tokens": sum(s["heldout_tokens"] for s in stats.values()),
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read(path: Path) -> Iterator[dict]:
    with path.open() as f:
        for line in f:
            yield json.loads(line)


def main(argv: list[str] | None = None) -> None:
    from saes.gemma import load_tokenizer
    from saes.trained.paths import corpus_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"folder (default {corpus_dir()})")
    args = parser.parse_args(argv)
    manifest = build(args.out or corpus_dir(), load_tokenizer())
    for name, s in manifest["sources"].items():
        print(f"{name:18} {s['tokens']:>10,} tokens ({s['documents']:,} documents) "
              f"+ {s['heldout_tokens']:,} held out   {s['licence']}")
    print(f"{'total':18} {manifest['tokens']:>10,} tokens "
          f"+ {manifest['heldout_tokens']:,} held out")


if __name__ == "__main__":
    main()
