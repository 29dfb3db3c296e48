"""`Scores`: round trip through safetensors, and score files told apart."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits import Scores, attribute
from saes import SplicedModel
from tasks.pairs import Dataset


def test_scores_round_trip(tiny: SplicedModel, data: Dataset, tmp_path):
    original = attribute(tiny, data, "relp", aggregation="none", progress=False)
    path = original.save(tmp_path / "scores.safetensors")
    loaded = Scores.load(path)
    for field in dataclasses.fields(Scores):
        if field.name != "sites":
            assert getattr(loaded, field.name) == getattr(original, field.name), field.name
    assert list(loaded.sites) == list(original.sites)
    for name, tensor in original.sites.items():
        assert torch.equal(loaded.sites[name], tensor)
    assert loaded.error("mlp_0").shape == (data.seq_len,)
    assert loaded.features("mlp_0").shape == (data.seq_len, 64)


def test_score_files_are_told_apart(tiny: SplicedModel, data: Dataset, tmp_path):
    """An EdgeScores file read as Scores (and a missing file) fail with the type named."""
    from circuits import EdgeScores

    scores = attribute(tiny, data, "atp", progress=False)
    path = scores.save(tmp_path / "scores.safetensors")
    with pytest.raises(ValueError, match="not a EdgeScores file"):
        EdgeScores.load(path)
    with pytest.raises(FileNotFoundError, match="no Scores file at"):
        Scores.load(tmp_path / "missing.safetensors")
