"""Dictionaries trained here (saes.trained): the corpus split, the packing of rows, sae_lens'
multi-dictionary training (reproducible from a seed, resumable after an interruption) and
loading the result by the path users take. Training runs on the organism (a small real model
with a BOS token) so that it takes seconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saes import load
from saes.organism.grammar import Grammar
from saes.trained import card, corpus
from saes.trained.train import TrainConfig, packed_rows, train

TINY = TrainConfig(sites=("resid_1", "attn_2"), d_sae=32, k=4, tokens=3072, batch=256,
                   context=16, checkpoint_tokens=1024)


@pytest.fixture(scope="module")
def organism():
    return load("organism")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, organism) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    sentences = list(Grammar().sentences(480, seed=0))
    docs = [{"id": f"grammar/{i}", "text": " ".join(sentences[8 * i : 8 * i + 8])}
            for i in range(60)]
    with (folder / "train.jsonl").open("w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    (folder / "corpus.json").write_text(json.dumps({"tokens": 0, "sources": {}}))
    return folder


def test_heldout_split_is_a_stable_five_percent():
    ids = [f"doc/{i}" for i in range(20_000)]
    share = sum(map(corpus.is_heldout, ids)) / len(ids)
    assert abs(share - corpus.HELDOUT_PERCENT / 100) < 0.005
    assert [corpus.is_heldout(i) for i in ids[:50]] == [corpus.is_heldout(i) for i in ids[:50]]


def test_missing_source_names_the_package(monkeypatch):
    monkeypatch.setattr(corpus, "FORTUNE_DIR", Path("/nonexistent"))
    monkeypatch.setattr(corpus, "SOURCES", [s for s in corpus.SOURCES if s.name == "fortunes"])
    with pytest.raises(FileNotFoundError, match=r"fortunes.*apt-get install -y .*fortunes"):
        list(corpus.documents())


def test_rows_begin_with_bos_and_cap_the_python_docs(organism):
    tok = organism.tokenizer
    docs = [{"id": f"python-docs/{i}", "text": " cats near" * 20}
            for i in range(10)] + [{"id": f"kjv/{i}", "text": " dog ." * 20}
                                   for i in range(10)]
    cfg = TrainConfig(context=16, python_docs_tokens=150)
    rows = packed_rows(cfg, tok, docs)
    assert rows and all(len(r) == 16 and r[0] == tok.bos_token_id for r in rows)
    n_python = len(tok(docs[0]["text"] + "\n\n", add_special_tokens=False)["input_ids"])
    (near,) = tok(" near", add_special_tokens=False)["input_ids"]
    assert near != tok.unk_token_id
    assert near not in tok(docs[-1]["text"], add_special_tokens=False)["input_ids"]
    kept = sum(1 for r in rows for t in r[1:] if t == near)
    # each python doc holds 20 "near"; the cap lets ceil(150 / n_python) docs through
    assert kept <= 20 * -(-150 // n_python)
    assert packed_rows(cfg, tok, docs) == rows  # the seed fixes the order


def _weights(out: Path, site: str) -> dict[str, torch.Tensor]:
    return load_file(out / site / "sae_weights.safetensors")


def test_training_reproduces_from_a_seed_and_loads_as_jumprelu(tmp_path, organism, tiny_corpus):
    runs = []
    for name in ("a", "b"):
        out = train(TINY, out=tmp_path / name, corpus=tiny_corpus,
                    checkpoints=tmp_path / f"ckpt-{name}", model=organism.transformer)
        runs.append(out)
    for site in TINY.sites:
        a, b = _weights(runs[0], site), _weights(runs[1], site)
        assert set(a) >= {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not any((tmp_path / "ckpt-a").glob("*/*")), "a finished run leaves no checkpoint"
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(runs[0] / "resid_1"))
    assert sae.cfg.architecture() == "jumprelu" and sae.cfg.d_sae == TINY.d_sae
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    record = json.loads((runs[0] / "training.json").read_text())
    assert record["config"]["tokens"] == TINY.tokens and record["resumed_from"] is None


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, organism, tiny_corpus,
                                                       monkeypatch):
    from sae_lens.training.sae_trainer import SAETrainer

    step, calls = SAETrainer.step, {"n": 0}

    def interrupted_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 2 * 7 + 1:  # step 8 of 12 (2 dictionaries): after 2 checkpoints
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(SAETrainer, "step", interrupted_step)
    model = organism.transformer
    with pytest.raises(KeyboardInterrupt):
        train(TINY, out=tmp_path / "out", corpus=tiny_corpus, checkpoints=tmp_path / "ckpt",
              model=model)
    monkeypatch.setattr(SAETrainer, "step", step)
    saved = sorted(int(p.name) for p in (tmp_path / "ckpt" / TINY.run_name).iterdir())
    assert saved and saved[-1] > 0
    out = train(TINY, out=tmp_path / "out", corpus=tiny_corpus, checkpoints=tmp_path / "ckpt",
                model=model)
    record = json.loads((out / "training.json").read_text())
    assert record["resumed_from"] == str(saved[-1])
    assert all((out / s / "sae_weights.safetensors").exists() for s in TINY.sites)


def test_trained_dictionaries_are_what_load_finds(tmp_path, monkeypatch):
    """load(..., dictionaries="trained") reads the folder saes.trained.paths names; absent, it
    says how to build them."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    from saes.loader import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match=r"python -m saes.trained.train"):
        load("gemma-3-270m", dictionaries="trained")
    with pytest.raises(ValueError, match=r"exist for gemma-3-270m only"):
        load("pythia-70m-deduped", dictionaries="trained")


def test_card_identities_on_the_neuron_baseline(organism):
    """With identity dictionaries ("neurons") the splice without error terms is the plain
    model: variance explained 1, loss recovered 1, agreement unchanged, L0 = active neurons."""
    model = load("organism", dictionaries="neurons", sites=["resid_1", "mlp_2"])
    rows = torch.tensor(packed_rows(
        TrainConfig(context=16), model.tokenizer,
        [{"id": str(i), "text": s} for i, s in enumerate(Grammar().sentences(200, seed=1))]))[:32]
    stats = card.dictionary_stats(model, rows)
    assert [d["site"] for d in stats] == ["resid_1", "mlp_2"]
    for d in stats:
        assert d["variance_explained"] == pytest.approx(1, abs=1e-5)
        assert d["loss_recovered"] == pytest.approx(1, abs=1e-4)
        assert 0 < d["mean_share"] <= 1  # |E x|^2 <= E|x|^2
        assert d["bias_mean_cosine"] == 0  # an identity dictionary's bias is 0
    sets = card.agreement_sets(model, limit=50)
    assert card.agreement(model, sets, no_error="resid_1") == card.agreement(model, sets)
    measured = card.measure(model=model, data=rows, limit=20, features=2)
    for d in measured["dictionaries"]:
        assert 1 <= len(d["contexts"]) <= 2
        for contexts in d["contexts"].values():
            assert contexts and all("«" in c["text"] and c["activation"] > 0 for c in contexts)
            values = [c["activation"] for c in contexts]
            assert values == sorted(values, reverse=True)


def test_max_rows_are_the_first_rows_of_the_stream(organism):
    docs = [{"id": f"kjv/{i}", "text": f" cats near dog{'s' * (i % 2)} ." * 9} for i in range(30)]
    cfg = TrainConfig(context=16)
    every = packed_rows(cfg, organism.tokenizer, docs)
    first = packed_rows(cfg, organism.tokenizer, docs, max_rows=5)
    assert len(first) == 5 and all(row in every for row in first)


def test_the_trained_corpus_is_gemmas_default_once_built(tmp_path, monkeypatch):
    from saes.corpus import has_default_corpus

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    assert not has_default_corpus("gemma-3-270m")
    (tmp_path / "gemma-3-270m-trained" / "corpus").mkdir(parents=True)
    (tmp_path / "gemma-3-270m-trained" / "corpus" / "train.jsonl").write_text("")
    assert has_default_corpus("gemma-3-270m") and has_default_corpus("gemma-3-270m+neurons")
    assert not has_default_corpus("pythia-70m-deduped")


def test_each_decoder_bias_starts_at_its_sites_mean_activation(tmp_path, organism, tiny_corpus):
    """With lr ~0 nothing trains: the saved decoder bias is the start, the site's mean activation
    over the first mean_rows rows (BOS left out), in the units of the activations (sae_lens
    folds its normalization back in on saving; its scale comes from other batches, hence the
    tolerance). Without it the bias starts, and stays, at 0."""
    from saes.trained.train import mean_activations

    model = organism.transformer
    rows = packed_rows(TINY, organism.tokenizer, [json.loads(line) for line in
                                                  (tiny_corpus / "train.jsonl").open()])
    sites = [organism.site(name) for name in TINY.sites]
    raw = {}
    for site in sites:
        _, cache = model.run_with_cache(torch.tensor(rows[: TINY.mean_rows]),
                                        names_filter=site.hook_name)
        x = site.vectors(cache[site.hook_name])[:, 1:].reshape(-1, site.width(model.cfg))
        raw[site.name] = x.mean(0)
        scaled = mean_activations(model, [site], rows[: TINY.mean_rows])[site.name]
        torch.testing.assert_close(scaled, x.mean(0) * x.shape[-1] ** 0.5
                                   / x.norm(dim=-1).mean())
    for mean_rows in (TINY.mean_rows, 0):
        cfg = dataclasses.replace(TINY, lr=1e-12, mean_rows=mean_rows)  # sae_lens refuses 0
        out = train(cfg, out=tmp_path / str(mean_rows), corpus=tiny_corpus,
                    checkpoints=tmp_path / "ckpt", model=model)
        for site in TINY.sites:
            b_dec = _weights(out, site)["b_dec"]
            if mean_rows:
                assert torch.cosine_similarity(b_dec, raw[site], 0) > 0.999
                assert abs(b_dec.norm() / raw[site].norm() - 1) < 0.1
            else:
                assert b_dec.norm() < 1e-6 * raw[site].norm()
