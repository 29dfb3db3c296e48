"""The card of the dictionaries trained here for Gemma-3-270M (markdown; --json for the numbers).

    python -m saes.trained.card [--rows 64] [--limit 200] [--json card.json]

Loads them through ``saes.load("gemma-3-270m", dictionaries="trained")`` (the path every user
takes) and reports, per dictionary, on the held-out split of the corpus (saes.trained.corpus):

- variance explained = 1 - sum |x - x_hat|^2 / sum |x - mean x|^2, mean L0, dead fraction
  (never active on the held-out tokens); the mean's share of E|x|^2 and the cosine of the
  decoder bias with the mean (saes.trained.train says why these matter);
- next-token loss recovered = (L_zero - L_spliced) / (L_zero - L_clean), where L_spliced has the
  site replaced by its reconstruction (the dictionary spliced without its error term) and
  L_zero has the site's activation zeroed;
- agreement accuracy with that dictionary spliced without its error term, per construction;
- the top-activating held-out contexts of a few features.

Every measurement leaves position 0 (BOS) alone: the dictionaries never saw BOS activations,
whose norm is hundreds of times a token's, and Gemma Scope 2 leaves them out likewise. So
"spliced without its error term" keeps the error term at BOS only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from saes.contexts import feature_contexts, key
from saes.corpus import Corpus
from saes.loader import TRAINED, load
from saes.sites import Site
from saes.splice import SplicedModel, TLHook
from saes.trained import corpus as corpus_module
from saes.trained.paths import corpus_dir, dictionaries_dir
from saes.trained.train import TRAINING_FILE, TrainConfig, packed_rows
from tasks import Dataset, accuracy, sva

CONSTRUCTIONS = sva.CONSTRUCTIONS


def _no_error_after_bos(site: Site, features: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    kept = torch.zeros_like(error)
    kept[:, :1] = error[:, :1]
    return features, kept


def heldout_rows(model: SplicedModel, n: int, context: int = 128) -> Tensor:
    """The first n packed rows of the held-out split ([n, context], each starting with BOS)."""
    docs = list(corpus_module.read(corpus_dir() / "heldout.jsonl"))
    cfg = TrainConfig(context=context, python_docs_tokens=10**12)
    rows = packed_rows(cfg, model.tokenizer, docs)[:n]
    return torch.tensor(rows)


def _loss(logits: Tensor, rows: Tensor) -> float:
    """Mean next-token loss, predicting positions 2.. (the token after BOS onwards)."""
    return F.cross_entropy(logits[:, 1:-1].flatten(0, 1), rows[:, 2:].flatten()).item()


@torch.no_grad()
def dictionary_stats(model: SplicedModel, rows: Tensor, batch: int = 4) -> list[dict]:
    hooks = {s.hook_name: s for s in model.spliced_sites}
    acts: dict[str, list[Tensor]] = {s.name: [] for s in hooks.values()}
    clean = 0.0
    for part in rows.split(batch):
        logits, cache = model.transformer.run_with_cache(part, names_filter=lambda n: n in hooks)
        clean += _loss(logits, part) * len(part)  # type: ignore[arg-type]
        for hook_name, site in hooks.items():
            acts[site.name].append(site.vectors(cache[hook_name])[:, 1:].flatten(0, 1))
    out = []
    for site in model.spliced_sites:
        dictionary = model.dictionaries[site.name]
        x = torch.cat(acts.pop(site.name))
        f = dictionary.encode(x)
        x_hat = dictionary.decode(f)
        zero_hook: list[TLHook] = [(site.hook_name, _zero_after_bos)]
        zero = spliced = 0.0
        for part in rows.split(batch):
            zeroed = model.transformer.run_with_hooks(part, fwd_hooks=zero_hook)
            zero += _loss(zeroed, part) * len(part)
            edited = model.logits(part, edit=_no_error_after_bos, sites=[site.name])
            spliced += _loss(edited, part) * len(part)
        n = len(rows)
        unexplained = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        mean = x.mean(0)
        out.append({
            "site": site.name,
            "d_sae": dictionary.d_sae,
            "variance_explained": 1 - unexplained.item(),
            "l0": (f > 0).float().sum(-1).mean().item(),
            "dead_fraction": ((f > 0).sum(0) == 0).float().mean().item(),
            # how much of the activation is its mean, and whether the decoder bias found it
            "mean_share": (mean.pow(2).sum() / x.pow(2).sum(-1).mean()).item(),
            "bias_mean_cosine": torch.cosine_similarity(dictionary.b_dec, mean, 0).item(),
            "loss_clean": clean / n,
            "loss_zero": zero / n,
            "loss_spliced": spliced / n,
            "loss_recovered": (zero - spliced) / (zero - clean),
        })
    return out


def _zero_after_bos(act: Tensor, hook) -> Tensor:
    act = act.clone()
    act[:, 1:] = 0
    return act


def agreement_sets(model: SplicedModel, limit: int) -> dict[str, Dataset]:
    """Test pairs of each construction (generated; Gemma's tokenizer keeps single-token verbs)."""
    return {c: model.tokenize(sva.load(c, "test", tokenizer=model.tokenizer)[:limit])
            for c in CONSTRUCTIONS}


@torch.no_grad()
def agreement(model: SplicedModel, sets: dict[str, Dataset], no_error: str | None = None,
              batch: int = 64) -> dict[str, float]:
    out = {}
    for construction, data in sets.items():
        correct = 0.0
        for part in data.batches(batch):
            if no_error is None:
                logits = model.logits(part.clean_tokens, spliced=False)
            else:
                logits = model.logits(part.clean_tokens, edit=_no_error_after_bos,
                                      sites=[no_error])
            correct += accuracy(logits, part) * len(part)
        out[construction] = correct / len(data)
    return out


@torch.no_grad()
def _spread_features(model: SplicedModel, rows: Tensor, site_name: str, n: int) -> list[int]:
    """n features that fire on rows, spread from the most to the least frequent."""
    site = next(s for s in model.spliced_sites if s.name == site_name)
    _, cache = model.transformer.run_with_cache(rows, names_filter=site.hook_name,
                                                stop_at_layer=site.layer + 1)
    f = model.dictionaries[site.name].encode(site.vectors(cache[site.hook_name]))[:, 1:]
    fired = (f > 0).flatten(0, 1).sum(0)
    alive = fired.argsort(descending=True)[: int((fired > 0).sum())]
    return sorted({int(alive[i]) for i in torch.linspace(0, len(alive) - 1, n).long()})


def measure(*, rows: int = 64, limit: int = 200, features: int = 3,
            model: SplicedModel | None = None, data: Tensor | None = None) -> dict:
    """The card's numbers; ``model`` and ``data`` (held-out rows starting with BOS) default to
    the trained dictionaries on Gemma and the corpus' held-out split."""
    start = time.perf_counter()
    model = model or load("gemma-3-270m", dictionaries=TRAINED, device="cpu")
    data = heldout_rows(model, rows) if data is None else data
    sets = agreement_sets(model, limit)
    stats = dictionary_stats(model, data)
    plain = agreement(model, sets)
    chosen: dict[str, list[int]] = {}
    for entry in stats:
        entry["agreement_spliced"] = agreement(model, sets, no_error=entry["site"])
        chosen[entry["site"]] = _spread_features(model, data[:8], entry["site"], features)
    corpus = Corpus("held-out split of saes.trained.corpus",
                    tuple(model.tokenizer.decode(row[1:]) for row in data.tolist()),
                    max_tokens=data.shape[1])
    contexts = feature_contexts(model, chosen, corpus, k=3, batch_size=8)
    for entry in stats:
        entry["contexts"] = {
            str(i): [{"text": c.text, "activation": c.activation}
                     for c in contexts.features[key(entry["site"], i)].contexts]
            for i in chosen[entry["site"]]}
    record = dictionaries_dir() / TRAINING_FILE
    training = json.loads(record.read_text()) if record.exists() else None
    return {
        "training": training,
        "heldout_tokens": int(data[:, 1:].numel()),
        "agreement_plain": plain,
        "agreement_pairs": {c: len(d) for c, d in sets.items()},
        "dictionaries": stats,
        "seconds": round(time.perf_counter() - start, 1),
    }


def render(card: dict) -> str:
    t = card["training"]["config"]
    corpus = card["training"]["corpus"]
    plain = card["agreement_plain"]
    lines = [
        "### Dictionaries trained here for Gemma-3-270M",
        "",
        f"BatchTopK (k={t['k']}, saved as JumpReLU), width {t['d_sae']}, trained by sae_lens' "
        f"MultiSAETrainingRunner on {t['tokens']:,} tokens (batches of {t['batch']}) of the "
        f"corpus ({corpus['tokens']:,} tokens from {len(corpus['sources'])} Debian packages), "
        f"seed {t['seed']}. Measured on {card['heldout_tokens']:,} held-out tokens with "
        "`python -m saes.trained.card`.",
        "",
        "| site | variance explained | mean L0 | dead | loss recovered | agreement spliced ("
        + ", ".join(CONSTRUCTIONS) + ") | mean's share of E\\|x\\|² | cos(b_dec, mean) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for d in card["dictionaries"]:
        agree = ", ".join(f"{d['agreement_spliced'][c]:.2f}" for c in CONSTRUCTIONS)
        lines.append(f"| {d['site']} | {d['variance_explained']:.3f} | {d['l0']:.1f} | "
                     f"{d['dead_fraction']:.1%} | {d['loss_recovered']:.3f} | {agree} | "
                     f"{d['mean_share']:.2f} | {d['bias_mean_cosine']:.2f} |")
    lines += ["", "Plain Gemma's agreement accuracy: " + ", ".join(
        f"{c} {plain[c]:.2f} ({card['agreement_pairs'][c]} pairs)" for c in CONSTRUCTIONS) + ".",
        "", "Top-activating held-out contexts («token» activation):", ""]
    for d in card["dictionaries"]:
        for feature, contexts in d["contexts"].items():
            shown = "; ".join(f"`{c['text']}` {c['activation']:.1f}" for c in contexts)
            lines.append(f"- {d['site']} feature {feature}: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="held-out rows of 128 tokens (64)")
    parser.add_argument("--limit", type=int, default=200, help="pairs per construction (200)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    card = measure(rows=args.rows, limit=args.limit)
    if args.json:
        args.json.write_text(json.dumps(card, indent=2) + "\n")
    print(render(card))


if __name__ == "__main__":
    main()
