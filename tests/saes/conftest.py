"""The offline stand-in for Gemma Scope 2 (google/gemma-scope-2-270m-pt), built once a session
into the session's HF_HUB_CACHE (tests/conftest.py): res, mlp and att dictionaries of the
width_16k_l0_medium variant at layers 5 and 9, shrunk to d_sae=512 (ids keep their names)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GEMMA_SCOPE_RELEASES = [
    f"gemma-scope-2-270m-pt-{kind}:width_16k_l0_medium" for kind in ("res", "mlp", "att")
]
GEMMA_SCOPE_LAYERS = [5, 9]
GEMMA_SCOPE_D_SAE = 512  # wide enough for the stated l0 (55-60) to be a sparse fraction


@pytest.fixture(scope="session")
def gemma_scope_cache() -> Path:
    """HF_HUB_CACHE holding the stand-in (needs the Gemma GGUF packages or their cache)."""
    from saes.offline_cache import build

    cache = Path(os.environ["HF_HUB_CACHE"])
    repo = cache / "models--google--gemma-scope-2-270m-pt"
    if not any(repo.glob("snapshots/*/attn_out/layer_9_width_16k_l0_medium/params.safetensors")):
        build(cache, releases=GEMMA_SCOPE_RELEASES, layers=GEMMA_SCOPE_LAYERS,
              d_sae=GEMMA_SCOPE_D_SAE)
    return cache

