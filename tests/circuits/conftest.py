"""Fixtures of the circuits tests: a dataset for the tiny spliced model of tests/conftest.py, the
same model with sequential blocks and without dictionaries, and small helpers."""

from __future__ import annotations

import pytest
import torch

from circuits import attribute
from saes import SplicedModel
from saes.splice import SiteNodes
from tasks import sva
from tasks.pairs import Dataset
from tests.conftest import tiny_spliced


@pytest.fixture(scope="module")
def data(tiny: SplicedModel) -> Dataset:
    return tiny.tokenize(sva.generate("across_pp", 6, seed=1, tokenizer=tiny.tokenizer))


@pytest.fixture(scope="module")
def sequential(neox_tokenizer) -> SplicedModel:
    """Sequential blocks (GPT-2/Llama style): mlp_L reads attn_L, so a patched attn_L must run
    block L again (the other sites enter after their block)."""
    return tiny_spliced(neox_tokenizer, parallel=False, seed=1)


@pytest.fixture(scope="module")
def bare(tiny: SplicedModel) -> SplicedModel:
    return SplicedModel(tiny.transformer, {}, name="tiny-bare", family="neox", prepend_bos=False)


def scores(model, data, method, **kwargs) -> dict[str, torch.Tensor]:
    """Per-example, per-position scores of ``method``, site -> [n, pos, n_nodes]."""
    kwargs = {"aggregation": "none", "per_example": True, "progress": False, **kwargs}
    return attribute(model, data, method, **kwargs).sites


def spliced_nodes(model: SplicedModel, tokens: torch.Tensor) -> dict[str, SiteNodes]:
    record: dict[str, SiteNodes] = {}
    with torch.no_grad():
        model.logits(tokens, record=record)
    return record


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the HTML view's tests (circuits/cli/browser.py); skipped where
    none is installed (CI installs Debian's chromium through scripts/setup.sh)."""
    from circuits.cli.browser import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium not found on PATH (scripts/setup.sh installs Debian's chromium; "
                    "$CHROMIUM names another): the HTML view's browser tests need it")
    with Browser(width=1400, height=900) as b:
        yield b
