"""Where the corpus and the dictionaries trained here for Gemma-3-270M live.

``$CIRCUITS_CACHE/gemma-3-270m-trained/`` (else ``~/.cache/sparse-circuits/...``): ``corpus/``
(saes.trained.corpus), ``checkpoints/`` (resumable training state) and ``dictionaries/<site>/``
(sae_lens' inference layout: cfg.json + sae_weights.safetensors), unless shipped in the repo.
"""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    base = os.environ.get("CIRCUITS_CACHE") or Path.home() / ".cache" / "sparse-circuits"
    return Path(base).expanduser() / "gemma-3-270m-trained"


def corpus_dir() -> Path:
    return root() / "corpus"


def checkpoint_dir() -> Path:
    return root() / "checkpoints"


def dictionaries_dir() -> Path:
    return root() / "dictionaries"
