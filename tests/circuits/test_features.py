"""Feature contexts against a direct recomputation: the model run on each chunk alone, every
feature encoded by the splice (not encode_features), density and top contexts counted here."""

from __future__ import annotations

import pytest
import torch

from circuits import attribute, build
from circuits.features import FeatureContexts, circuit_features, feature_contexts, key
from saes.corpus import Corpus
from saes.dictionary import Dictionary
from saes.splice import SiteNodes, SplicedModel
from tasks import sva

DOCUMENTS = (
    "The keys to the cabinet are on the table, and the dog sleeps.",
    "Every morning the old man walks to the river with his two dogs.",
    "",  # no tokens: not a document
    "A short one.",
    "The parents near the school say that the children are happy today.",
)
# all below 32, d_model of the tiny model: its neurons have them too
FEATURES = {"embed": [0, 5, 17], "resid_0": [3, 30], "attn_1": [1, 2, 31], "mlp_1": [7]}


@pytest.fixture(scope="module", params=["features", "bos", "neurons"])
def model(request, tiny) -> SplicedModel:
    if request.param == "features":
        return tiny
    if request.param == "bos":  # as Gemma: a BOS before every chunk, which is no corpus token
        return SplicedModel(tiny.transformer, tiny.dictionaries, name="tiny-bos",
                            family="neox", prepend_bos=True)
    neurons = {s: Dictionary.identity_of(tiny.cfg.d_model) for s in tiny.dictionaries}
    return SplicedModel(tiny.transformer, neurons, name="tiny+neurons", family="neox",
                        prepend_bos=False)


def reference(model: SplicedModel, chunks: list[list[int]]) -> dict[str, torch.Tensor]:
    """site -> [tokens, d_sae] activations of every corpus token, each chunk run alone."""
    out: dict[str, list[torch.Tensor]] = {s: [] for s in model.dictionaries}
    bos = [model.tokenizer.bos_token_id] if model.prepend_bos else []
    for ids in chunks:
        record: dict[str, SiteNodes] = {}
        with torch.no_grad():
            model.logits(torch.tensor([bos + ids]), record=record)
        for site, nodes in record.items():
            out[site].append(nodes.features[0, len(bos):])
    return {s: torch.cat(v) for s, v in out.items()}


def chunks_of(model, max_tokens) -> list[list[int]]:
    ids = [model.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCUMENTS]
    return [c[i:i + max_tokens] for c in ids for i in range(0, len(c), max_tokens)]


@pytest.mark.parametrize("max_tokens", [128, 5])
def test_contexts_and_density_match_a_direct_recomputation(model, max_tokens):
    k = 3
    corpus = Corpus("test", DOCUMENTS)
    got = feature_contexts(model, FEATURES, corpus, k=k, window=(2, 1), max_tokens=max_tokens,
                           batch_size=2)
    chunks = chunks_of(model, max_tokens)
    acts = reference(model, chunks)
    starts = torch.tensor([0, *[len(c) for c in chunks]]).cumsum(0)
    assert got.corpus.n_documents == 4 and got.corpus.n_tokens == int(starts[-1])
    assert list(got.features) == [key(s, i) for s, idx in FEATURES.items() for i in idx]
    fired = 0
    for site, indices in FEATURES.items():
        for i in indices:
            f = acts[site][:, i]  # [tokens]
            entry = got.get(site, i)
            assert entry is not None and (entry.site, entry.feature) == (site, i)
            assert entry.density == pytest.approx(float((f > 0).float().mean()))
            assert entry.max_activation == pytest.approx(float(f.max()), abs=1e-5)
            # the k strongest chunks by their strongest token, with the token marked
            peaks = [(float(f[a:b].max()), c, int(f[a:b].argmax()))
                     for c, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True))]
            peaks = sorted((p for p in peaks if p[0] > 0), key=lambda p: -p[0])[:k]
            assert [c.activation for c in entry.contexts] == pytest.approx(
                [p[0] for p in peaks], abs=1e-5)
            for context, (_, c, at) in zip(entry.contexts, peaks, strict=True):
                first = max(at - 2, 0)
                ids = chunks[c][first:at + 2]
                assert context.tokens == tuple(model.tokenizer.decode([t]) for t in ids)
                assert context.mark == at - first
            fired += bool(peaks)
    assert fired >= 4  # not vacuous: features that fire, with contexts to check


def test_a_per_position_circuit_has_one_entry_per_feature(tiny):
    data = tiny.tokenize(sva.generate("across_pp", 4, seed=1, tokenizer=tiny.tokenizer))
    scores = attribute(tiny, data, "atp", aggregation="none", progress=False)
    circuit = build(scores, top_k=40, edges=False)
    wanted = circuit_features(circuit)
    positions = [a["position"] for _, a in circuit.graph.nodes(data=True) if a["role"] == "feature"]
    assert len(set(positions)) > 1  # positions to strip
    got = feature_contexts(tiny, circuit, Corpus("test", DOCUMENTS), k=2)
    assert list(got.features) == [key(s, i) for s, idx in wanted.items() for i in idx]
    assert not any("@" in name for name in got.features)
    assert sum(map(len, wanted.values())) < len(positions)  # some feature at several positions


def test_round_trip_and_reuse(tiny, tmp_path):
    corpus = Corpus("test", DOCUMENTS)
    first = feature_contexts(tiny, {"resid_0": [3, 40]}, corpus, k=2)
    path = first.save(tmp_path / "features.json")
    loaded = FeatureContexts.load(path)
    assert loaded == first
    # reused entries are taken as they are, new ones computed
    marked = FeatureContexts(first.corpus, 2, first.window, dict(first.features))
    marked.features["resid_0/3"] = type(first.features["resid_0/3"])("resid_0", 3, 0.5, 9.0, ())
    again = feature_contexts(tiny, {"resid_0": [3, 40, 41]}, corpus, k=2, reuse=marked)
    assert again.features["resid_0/3"].max_activation == 9.0
    assert again.features["resid_0/40"] == first.features["resid_0/40"]
    assert "resid_0/41" in again.features
    # another corpus: nothing reused
    other = feature_contexts(tiny, {"resid_0": [3]}, Corpus("other", DOCUMENTS), k=2,
                             reuse=marked)
    assert other.features["resid_0/3"].max_activation == pytest.approx(
        first.features["resid_0/3"].max_activation, abs=1e-5)


def test_bad_input_names_the_feature_and_the_file(tiny, tmp_path):
    corpus = Corpus("test", DOCUMENTS)
    with pytest.raises(ValueError, match=r"feature\(s\) \[64\] of site 'resid_0'"):
        feature_contexts(tiny, {"resid_0": [64]}, corpus)
    with pytest.raises(ValueError, match="site 'attn_z_0' has no dictionary"):
        feature_contexts(tiny, {"attn_z_0": [1]}, corpus)
    with pytest.raises(ValueError, match="no tokens"):
        feature_contexts(tiny, {"resid_0": [1]}, Corpus("empty", ("",)))
    with pytest.raises(ValueError, match="k must be >= 1"):
        feature_contexts(tiny, {"resid_0": [1]}, corpus, k=0)
    data = tiny.tokenize(sva.generate("across_pp", 4, seed=1, tokenizer=tiny.tokenizer))
    circuit = build(attribute(tiny, data, "atp", progress=False), top_k=10, edges=False)
    neurons = SplicedModel(tiny.transformer, {s: Dictionary.identity_of(tiny.cfg.d_model)
                                              for s in tiny.dictionaries},
                           name="tiny+neurons", family="neox", prepend_bos=False)
    with pytest.raises(ValueError, match="the circuit's site 'embed' has 64 features, the "
                                         "dictionary of tiny.neurons there 32"):
        feature_contexts(neurons, circuit, corpus)
    bad = tmp_path / "features.json"
    bad.write_text('{"format": "circuits.features/1", "corpus": {}}')
    with pytest.raises(ValueError, match="features.json: not a circuits.features/1 file"):
        FeatureContexts.load(bad)
