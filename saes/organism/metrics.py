"""What the model card reports: agreement accuracy, and per dictionary its reconstruction,
sparsity, dead features, loss recovered and agreement when spliced without its error term.

- variance explained = 1 - sum |x - x_hat|^2 / sum |x - mean x|^2 over held-out tokens
- L0 = mean number of active features per token; dead = never active on the held-out tokens
- loss recovered = (L_zero - L_no_error) / (L_zero - L_clean): next-token loss on held-out
  grammar text with the site's activation zeroed, with the site replaced by its reconstruction
  (the dictionary spliced without its error term, every other site untouched), and plain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saes.splice import SplicedModel, TLHook
from tasks import Dataset, accuracy, sva

# (construction, source) pairs the card reports; files exist for three constructions
AGREEMENT_SETS = [(c, "generated") for c in sva.CONSTRUCTIONS] + [
    (c, "file") for c in sva.CONSTRUCTIONS if c in sva.FILES
]


def _no_error(site, features: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    return features, torch.zeros_like(error)


def agreement_sets(model: SplicedModel, limit: int | None = None) -> dict[tuple[str, str], Dataset]:
    """Tokenized held-out agreement pairs: generated test split of every construction, and the
    test split of each shared file; at most `limit` pairs each (None: all)."""
    out = {}
    for construction, source in AGREEMENT_SETS:
        pairs = sva.load(construction, "test", source=source, tokenizer=model.tokenizer)
        if limit is not None:
            pairs = pairs[:limit]
        out[(construction, source)] = model.tokenize(pairs)
    return out


@torch.no_grad()
def agreement(
    model: SplicedModel,
    sets: dict[tuple[str, str], Dataset],
    *,
    no_error: str | None = None,
    batch: int = 2000,
) -> dict[tuple[str, str], float]:
    """Accuracy (clean answer out-scores the patch answer) on each set; with no_error=site, that
    site's dictionary is spliced without its error term."""
    out = {}
    for key, data in sets.items():
        correct = 0.0
        for part in data.batches(batch):
            if no_error is None:
                logits = model.logits(part.clean_tokens, spliced=False)
            else:
                logits = model.logits(part.clean_tokens, edit=_no_error, sites=[no_error])
            correct += accuracy(logits, part) * len(part)
        out[key] = correct / len(data)
    return out


@torch.no_grad()
def subject_attention(
    model: SplicedModel, data: Dataset, subject_pos: int = 1, top: int = 3
) -> list[dict]:
    """Heads that attend most from the last prompt position (where the verb is predicted) to
    the subject noun (position 1 of "The N ..."), with the accuracy left when that one head's
    output is mean-ablated (its z replaced by its mean over the prompts)."""
    cfg = model.cfg
    last = data.lengths - 1  # [n]
    rows = torch.arange(len(data))
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)}
    _, cache = model.transformer.run_with_cache(
        data.clean_tokens, names_filter=lambda n: n in names
    )
    scores = []
    for layer in range(cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [n, head, query, key]
        weights = pattern[rows, :, last, subject_pos].mean(0)  # [head]
        scores += [(weights[h].item(), layer, h) for h in range(cfg.n_heads)]
    out = []
    for weight, layer, head in sorted(scores, reverse=True)[:top]:

        def ablate(z: Tensor, hook, head=head) -> Tensor:  # z: [n, pos, head, d_head]
            z = z.clone()
            z[:, :, head] = z[:, :, head].mean(0, keepdim=True)
            return z

        logits = model.transformer.run_with_hooks(
            data.clean_tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)]
        )
        out.append(
            {
                "head": f"{layer}.{head}",
                "attention_to_subject": weight,
                "accuracy_head_ablated": accuracy(logits, data),
            }
        )
    return out


def _loss(logits: Tensor, rows: Tensor) -> float:
    """Mean next-token cross-entropy of [n, seq, vocab] logits on rows [n, seq]."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), rows[:, 1:].flatten()).item()


@dataclass
class DictionaryStats:
    site: str
    d_sae: int
    variance_explained: float
    l0: float
    dead_fraction: float
    loss_clean: float
    loss_zero: float
    loss_no_error: float
    agreement_no_error: dict[tuple[str, str], float]

    @property
    def loss_recovered(self) -> float:
        return (self.loss_zero - self.loss_no_error) / (self.loss_zero - self.loss_clean)

    @property
    def min_agreement_no_error(self) -> float:
        return min(self.agreement_no_error.values())


@torch.no_grad()
def dictionary_stats(
    model: SplicedModel, rows: Tensor, sets: dict[tuple[str, str], Dataset], batch: int = 500
) -> list[DictionaryStats]:
    """Per spliced site, on held-out grammar rows [n, seq] and agreement sets."""
    hooks = {s.hook_name: s.name for s in model.spliced_sites}
    clean_parts: list[float] = []
    acts: dict[str, list[Tensor]] = {name: [] for name in hooks.values()}  # [tokens, d_model]
    for part in rows.split(batch):
        logits, cache = model.transformer.run_with_cache(part, names_filter=lambda n: n in hooks)
        # transformer_lens' overload says Output; with the default return_type it is the logits
        clean_parts.append(_loss(logits, part) * len(part))  # type: ignore[arg-type]
        for hook_name, name in hooks.items():
            acts[name].append(cache[hook_name].flatten(0, 1))
    loss_clean = sum(clean_parts) / len(rows)
    out = []
    for site in model.spliced_sites:
        dictionary = model.dictionaries[site.name]
        x = torch.cat(acts.pop(site.name))  # [tokens, d_model]
        f = dictionary.encode(x)  # [tokens, d_sae]
        x_hat = dictionary.decode(f)
        variance = (x - x.mean(0)).pow(2).sum()
        zero_hook: list[TLHook] = [(site.hook_name, lambda act, hook: torch.zeros_like(act))]
        zero, no_error = 0.0, 0.0
        for part in rows.split(batch):
            zeroed = model.transformer.run_with_hooks(part, fwd_hooks=zero_hook)
            zero += _loss(zeroed, part) * len(part)
            no_error += _loss(model.logits(part, edit=_no_error, sites=[site.name]), part) * len(
                part
            )
        out.append(
            DictionaryStats(
                site=site.name,
                d_sae=dictionary.d_sae,
                variance_explained=1 - ((x - x_hat).pow(2).sum() / variance).item(),
                l0=(f > 0).float().sum(-1).mean().item(),
                dead_fraction=((f > 0).sum(0) == 0).float().mean().item(),
                loss_clean=loss_clean,
                loss_zero=zero / len(rows),
                loss_no_error=no_error / len(rows),
                agreement_no_error=agreement(model, sets, no_error=site.name),
            )
        )
    return out
