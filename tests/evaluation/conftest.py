"""Fixtures of the evaluation tests: the shipped model organism (4 layers, d_model 64,
256-feature dictionaries at 13 sites), its neuron baseline, a held-out set and relp scores."""

from __future__ import annotations

import pytest
import torch

from circuits import attribute
from saes import load
from tasks import sva

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def organism():
    return load("organism", device="cpu")


@pytest.fixture(scope="module")
def neurons():
    return load("organism", dictionaries="neurons", device="cpu")


@pytest.fixture(scope="module")
def test_set(organism):
    return organism.tokenize(sva.load("across_pp", split="test", n=24))


@pytest.fixture(scope="module")
def relp(organism):
    return attribute(organism, sva.load("across_pp", n=48), "relp", progress=False)


def all_nodes(scores, value: bool):
    """Every node of the scores' sites kept (True) or none (False), shaped like the scores."""
    return {k: torch.full_like(v, value, dtype=torch.bool) for k, v in scores.sites.items()}
