"""Measure the shipped organism and print its model card (markdown).

    python -m saes.organism.card [--limit N] [--json card.json]

Loads the organism through `saes.load("organism")` (the code path every user takes), then
reports the architecture, agreement accuracy on held-out prompts (generated test split of each
construction, and the test split of each shared SVA file), and per dictionary: variance
explained, mean L0, dead features, loss recovered and agreement accuracy when spliced without
its error term (see saes.organism.metrics), the shipped size and the training time recorded by
`python -m saes.organism.train`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TypedDict

import torch

from saes.loader import ORGANISM_DIR, load
from saes.organism import metrics
from saes.organism.data import HELDOUT_SEED_OFFSET, token_rows


class Targets(TypedDict):
    agreement: float  # lowest accuracy
    variance_explained: float  # lowest
    l0: tuple[int, int]  # mean L0 range
    dead: float  # highest dead fraction (exclusive)
    loss_recovered: float  # lowest
    agreement_no_error: float  # lowest
    size_mb: float  # highest shipped size
    train_minutes: float  # highest training time


# targets of the organism (issue text)
TARGETS: Targets = {
    "agreement": 0.97,
    "variance_explained": 0.90,
    "l0": (5, 60),
    "dead": 0.05,
    "loss_recovered": 0.90,
    "agreement_no_error": 0.90,
    "size_mb": 15.0,
    "train_minutes": 20.0,
}


def shipped_bytes(folder: Path = ORGANISM_DIR) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def measure(*, limit: int | None = None, heldout_rows: int = 500) -> dict:
    model = load("organism", device="cpu")
    training = json.loads((ORGANISM_DIR / "training.json").read_text())
    seed = training["seed"]
    full_sets = metrics.agreement_sets(model, limit)
    accuracy = metrics.agreement(model, full_sets)
    splice_sets = metrics.agreement_sets(model, limit=min(limit or 500, 500))
    rows = token_rows(
        model.tokenizer, heldout_rows, training["language_model"]["seq"], seed + HELDOUT_SEED_OFFSET
    )
    stats = metrics.dictionary_stats(model, rows, splice_sets)
    with torch.no_grad():
        plain, spliced = model.logits(rows[:64], spliced=False), model.logits(rows[:64])
    heads = {
        c: metrics.subject_attention(model, splice_sets[(c, "generated")])
        for c in ("across_pp", "across_rc")
    }
    cfg = model.cfg
    return {
        "model": {
            "layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "heads": cfg.n_heads,
            "d_head": cfg.d_head,
            "rotary_dim": cfg.rotary_dim,
            "d_mlp": cfg.d_mlp,
            "vocab": cfg.d_vocab,
            "parameters": sum(p.numel() for p in model.transformer.parameters()),
        },
        "training": training,
        "heldout_loss": stats[0].loss_clean if stats else None,
        "heldout_tokens": rows.numel(),
        "agreement": {
            f"{c}/{s}": {"n": len(full_sets[(c, s)]), "accuracy": a}
            for (c, s), a in accuracy.items()
        },
        "splice_max_abs_diff": (spliced - plain).abs().max().item(),
        "subject_heads": heads,
        "dictionaries": [
            {
                "site": s.site,
                "d_sae": s.d_sae,
                "variance_explained": s.variance_explained,
                "l0": s.l0,
                "dead_fraction": s.dead_fraction,
                "loss_clean": s.loss_clean,
                "loss_zero": s.loss_zero,
                "loss_no_error": s.loss_no_error,
                "loss_recovered": s.loss_recovered,
                "agreement_no_error": {
                    f"{c}/{src}": a for (c, src), a in s.agreement_no_error.items()
                },
                "min_agreement_no_error": s.min_agreement_no_error,
            }
            for s in stats
        ],
        "size_bytes": shipped_bytes(),
    }


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render(card: dict) -> str:
    m, t = card["model"], card["training"]
    lm, dicts = t["language_model"], t["dictionaries"]
    lines = [
        "## The model organism",
        "",
        f"A {m['layers']}-layer GPT-NeoX (Pythia's block: parallel attention and MLP, rotary on "
        f"{m['rotary_dim']} of {m['d_head']} head dimensions, LayerNorm, GELU), d_model "
        f"{m['d_model']}, {m['heads']} heads, d_mlp {m['d_mlp']}, a word-level vocabulary of "
        f"{m['vocab']} tokens, {m['parameters'] / 1e3:.0f}k parameters, trained on sentences of "
        "the grammar in `saes/organism/grammar.py`, with a sae_lens dictionary at each of its "
        f"{len(card['dictionaries'])} sites. Retrain with `python -m saes.organism.train --seed "
        f"{t['seed']}`; measure with `python -m saes.organism.card`.",
        "",
        f"- training: {lm['steps']} steps of {lm['batch']}x{lm['seq']} tokens "
        f"({lm['train_tokens'] / 1e6:.1f}M tokens, {lm['seconds'] / 60:.1f} min), then "
        f"{dicts['steps']} steps of {dicts['batch']} activations per dictionary "
        f"({dicts['seconds'] / 60:.1f} min); total {t['total_seconds'] / 60:.1f} min on "
        f"{t['threads']} CPU thread{'s' * (t['threads'] != 1)} "
        f"{_mark(t['total_seconds'] / 60 <= TARGETS['train_minutes'])}",
        f"- next-token loss: {card['heldout_loss']:.3f} nats on an independent sample of "
        f"{card['heldout_tokens']} tokens of grammar text (not disjoint from training)",
        f"- shipped size: {card['size_bytes'] / 1e6:.2f} MB "
        f"{_mark(card['size_bytes'] / 1e6 <= TARGETS['size_mb'])}; spliced forward (all "
        f"dictionaries, with error terms) equals plain to {card['splice_max_abs_diff']:.1e}",
        "",
        "### Agreement accuracy (held-out prompts)",
        "",
        "| construction | source | pairs | accuracy |",
        "|---|---|---:|---:|",
    ]
    for key, v in card["agreement"].items():
        construction, source = key.split("/")
        ok = v["accuracy"] >= TARGETS["agreement"]
        lines.append(f"| {construction} | {source} | {v['n']} | {v['accuracy']:.3f} {_mark(ok)} |")
    lines += [
        "",
        "Heads attending most from the last position (where the verb is predicted) to the "
        "subject noun, and the accuracy left when that head alone is mean-ablated:",
        "",
    ]
    for construction, heads in card["subject_heads"].items():
        lines.append(
            f"- {construction}: "
            + "; ".join(
                f"head {h['head']} (attention {h['attention_to_subject']:.2f}, accuracy "
                f"{h['accuracy_head_ablated']:.2f} ablated)"
                for h in heads
            )
        )
    lines += [
        "",
        "### Dictionaries",
        "",
        "Loss recovered = (L_zero-ablate - L_spliced without error) / (L_zero-ablate - L_clean) on "
        "held-out grammar text; agreement without error = lowest accuracy over the seven prompt "
        "sets with that one dictionary spliced without its error term.",
        "",
        "| site | d_sae | variance explained | mean L0 | dead | loss recovered | "
        "agreement without error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lo, hi = TARGETS["l0"]
    for d in card["dictionaries"]:
        cells = [
            (
                f"{d['variance_explained']:.3f}",
                d["variance_explained"] >= TARGETS["variance_explained"],
            ),
            (f"{d['l0']:.1f}", lo <= d["l0"] <= hi),
            (f"{d['dead_fraction']:.1%}", d["dead_fraction"] < TARGETS["dead"]),
            (f"{d['loss_recovered']:.3f}", d["loss_recovered"] >= TARGETS["loss_recovered"]),
            (
                f"{d['min_agreement_no_error']:.3f}",
                d["min_agreement_no_error"] >= TARGETS["agreement_no_error"],
            ),
        ]
        row = " | ".join(f"{value} {_mark(ok)}" for value, ok in cells)
        lines.append(f"| {d['site']} | {d['d_sae']} | {row} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many pairs per agreement set (default: all)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    card = measure(limit=args.limit)
    if args.json:
        args.json.write_text(json.dumps(card, indent=2) + "\n")
    print(render(card))


if __name__ == "__main__":
    main()
