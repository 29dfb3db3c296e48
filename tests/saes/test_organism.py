"""The shipped model organism: it loads through `saes.load`, agrees, splices exactly, and its
tokenizer keeps prompt + answer = prompt tokens + answer token. Loads; never trains."""

from __future__ import annotations

import json
import random

import pytest
import torch

from saes import load
from saes.loader import ORGANISM_DIR
from saes.organism import grammar
from saes.organism.data import HELDOUT_SEED_OFFSET, token_rows
from saes.organism.tokenizer import UNK, build
from tasks import accuracy, sva

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread


@pytest.fixture(scope="module")
def organism():
    return load("organism", device="cpu")


@pytest.fixture(scope="module")
def text(organism) -> torch.Tensor:
    """[16, 32] held-out grammar text."""
    return token_rows(organism.tokenizer, 16, 32, HELDOUT_SEED_OFFSET)


@pytest.mark.parametrize("construction", sva.CONSTRUCTIONS)
def test_agreement_on_held_out_generated_prompts(organism, construction):
    pairs = sva.load(construction, "test", source="generated", tokenizer=organism.tokenizer)
    data = organism.tokenize(pairs)
    with torch.no_grad():
        acc = accuracy(organism.logits(data.clean_tokens, spliced=False), data)
    assert acc >= 0.97, f"{construction}: accuracy {acc:.3f} on {len(data)} held-out pairs"


@pytest.mark.parametrize("construction", ["simple", "within_rc", "across_pp"])
def test_agreement_on_the_shared_sva_files(organism, construction):
    """The shared files (../shared/data/sva) hold words of every kind: all are in the vocabulary,
    and agreement holds on their whole test split (across_rc has no file)."""
    pairs = sva.load(construction, "test", source="file", tokenizer=organism.tokenizer)
    data = organism.tokenize(pairs)
    with torch.no_grad():
        acc = accuracy(organism.logits(data.clean_tokens, spliced=False), data)
    assert acc >= 0.97, f"{construction} file: accuracy {acc:.3f} on {len(data)} pairs"


def test_spliced_forward_equals_plain(organism, text):
    data = organism.tokenize(sva.load("across_rc", "test", n=32, tokenizer=organism.tokenizer))
    assert len(organism.dictionaries) == len(organism.sites)
    with torch.no_grad():
        for tokens in (text, data.clean_tokens):
            plain = organism.logits(tokens, spliced=False)
            torch.testing.assert_close(organism.logits(tokens), plain, atol=1e-5, rtol=0)
            no_error = organism.logits(tokens, edit=lambda s, f, e: (f, torch.zeros_like(e)))
            assert (no_error - plain).abs().max() > 1e-3  # the splice is not a no-op


def test_hooked_model_equals_hugging_face_checkpoint(organism, text):
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(ORGANISM_DIR).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            organism.transformer(text), hf(input_ids=text).logits, atol=1e-4, rtol=1e-4
        )


def test_tokenizer_prompt_plus_answer_round_trip(organism):
    tok = organism.tokenizer
    for word in sva.vocabulary() - {"The"}:
        ids = tok(f" {word}", add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, f"' {word}' is {ids}"
        assert tok.decode(ids) == f" {word}"
    pairs = [p for c in sva.CONSTRUCTIONS for p in sva.load(c, "test", n=50)]
    pairs += [p for c in sva.FILES for p in sva.load(c, "test", source="file")[:50]]
    for p in pairs:
        for prompt, answer in ((p.clean, p.clean_answer), (p.patch, p.patch_answer)):
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
            assert len(answer_ids) == 1, f"answer {answer!r} is {answer_ids}"
            assert len(prompt_ids) == len(prompt.split())  # one token a word
            assert tok(prompt + answer, add_special_tokens=False)["input_ids"] == (
                prompt_ids + answer_ids
            ), f"{prompt!r} + {answer!r}"
    assert tok.bos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")


def test_shipped_tokenizer_matches_the_code(organism):
    assert organism.tokenizer.get_vocab() == build().get_vocab()


def test_grammar_text_is_all_known_words(organism):
    rng = random.Random(0)
    sentences = [grammar.Grammar().sentence(rng) for _ in range(2000)]
    ids = organism.tokenizer(sentences, add_special_tokens=False)["input_ids"]
    unk = organism.tokenizer.convert_tokens_to_ids(UNK)
    assert all(unk not in s for s in ids)
    assert sva.vocabulary() <= grammar.words()


def test_every_dictionary_site_exists(organism):
    assert set(organism.dictionaries) == {s.name for s in organism.sites}
    for site in organism.sites:
        cfg = json.loads((ORGANISM_DIR / "dictionaries" / site.name / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == site.hook_name
        assert site.hook_name in organism.transformer.hook_dict
        assert cfg["d_in"] == organism.cfg.d_model
        assert cfg["normalize_activations"] == "none"


def test_shipped_size_under_15_mb():
    size = sum(f.stat().st_size for f in ORGANISM_DIR.rglob("*") if f.is_file())
    assert size <= 15e6, f"saes/organism/weights is {size / 1e6:.1f} MB"
