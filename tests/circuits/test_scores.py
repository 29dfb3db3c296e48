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


def test_nan_scores_fail_naming_the_site():
    """A NaN score would drop out of every threshold and table: selection, the top-node table
    and build refuse, naming the site."""
    from circuits import build, select_nodes
    from circuits.top import top_nodes

    sites = {"resid_0": torch.tensor([0.5, float("nan"), 2.0]), "mlp_0": torch.tensor([1.0, 0.0])}
    scores = Scores("atp", "toy", "sum", False, sites, n_examples=1)
    for call in (lambda: select_nodes(scores, top_k=2), lambda: top_nodes(scores),
                 lambda: build(scores)):
        with pytest.raises(ValueError, match=r"NaN or inf at resid_0 \(1\)"):
            call()
