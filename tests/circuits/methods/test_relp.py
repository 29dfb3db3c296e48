"""RelP: with no rules it is AtP exactly."""

from __future__ import annotations

import torch

from saes import SplicedModel
from tasks.pairs import Dataset
from tests.circuits.conftest import scores


def test_relp_without_rules_is_atp(tiny: SplicedModel, data: Dataset):
    plain, relp = scores(tiny, data, "atp"), scores(tiny, data, "relp", rules=())
    for name in plain:
        assert torch.equal(plain[name], relp[name]), name
    default = scores(tiny, data, "relp")
    assert (default["embed"] - plain["embed"]).abs().max() > 1e-4
