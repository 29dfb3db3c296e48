"""Mean ablation of the nodes outside a selection, as Sparse Feature Circuits does it.

A node outside the kept selection is replaced by its mean over the *patch* prompts of the
evaluation set, per token position:

    f'   = where(keep_f,   f,   mean_f[pos])        features   [b, pos, d_sae]
    err' = where(keep_err, err, mean_err[pos])      error node [b, pos, d_in]

through ``SplicedModel.spliced(edit=...)``: features and error nodes alike. On a bare model
(no dictionaries) a site's one node is the whole component, ablated the same way. A selection is
``dict[site, bool]`` shaped like that site's scores: [n_nodes] keeps a node at every position,
[pos, n_nodes] per position (see circuits/select.py); every node site must be named. Ablating
every node of every site gives m(∅); the plain (unspliced) model gives m(M).

``intact_layers=k`` leaves every site of layers 0..k-1 unablated; ``embed`` counts as layer 0
here, so it stays intact whenever k >= 1 (k = 0, the default, ablates everything outside).

Many selections run in one forward pass: S selections × b prompts are stacked along the batch
axis ([S·b, seq]) and each selection's masks broadcast over its b rows, never copied per row.
The metric is discovery's (circuits.forward.metric) with the evaluation sign, logit[clean
answer] − logit[patch answer] on the clean prompts, averaged over the evaluation set. Masks are
checked by circuits.select.check_selection, the validator attribution and edges use too.

Under torch.distributed (circuits/distributed.py) each rank runs its shard of the prompts; the
sums of node values, the counts per position and the sums of metrics are all-reduced before
they are divided, so every rank gets the means of the whole set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits import distributed
from circuits.forward import Targets, forward
from circuits.select import Selection, check_selection
from saes.sites import Site
from saes.splice import SplicedModel
from tasks.pairs import Dataset, PromptPair


@dataclass
class NodeMeans:
    """Per-position means of every node over a dataset's patch prompts."""

    features: dict[str, Tensor]  # site -> [pos, d_sae]  ([pos, 0] on a bare model)
    error: dict[str, Tensor]  # site -> [pos, d_in]    (bare: the component's activation)
    seq_len: int
    tokenizer_id: str
    n_examples: int


def prepare(model: SplicedModel, data: Dataset | Sequence[PromptPair]) -> Dataset:
    """Tokenize pairs for the model, or check a Dataset was tokenized for it."""
    data = model.tokenize(data if isinstance(data, Dataset) else list(data))
    if len(data) == 0:
        raise ValueError("the evaluation set is empty; pass at least one prompt pair")
    return data


def _record_hooks(model: SplicedModel, store: dict[str, tuple[Tensor, Tensor]]) -> list:
    """Bare model: hooks that store (features [b, pos, 0], component [b, pos, d]) per site."""

    def hook(x: Tensor, hook) -> Tensor:
        store[hook.name] = (x.new_zeros(*x.shape[:-1], 0), x)
        return x

    return [(s.hook_name, hook) for s in model.sites]


@torch.no_grad()
def node_means(
    model: SplicedModel, data: Dataset | Sequence[PromptPair], *, batch_size: int = 64
) -> NodeMeans:
    """Mean of each node over the patch prompts, per position (padded positions left out)."""
    data = prepare(model, data)
    sites = model.node_sites
    seq = data.seq_len
    sums_f: dict[str, Tensor] = {}
    sums_e: dict[str, Tensor] = {}
    counts = torch.zeros(seq, device=model.device)  # [pos] real rows at each position
    # under torch.distributed each rank sums its shard; an empty one runs the first prompt with
    # weight 0, so that its sums have the shapes of the others'
    local = distributed.shard_dataset(data, "node_means")
    weight = float(len(local) > 0)
    for batch in (local if weight else data.subset(slice(0, 1))).batches(batch_size):
        batch = batch.to(model.device)
        valid = weight * (torch.arange(seq, device=model.device)[None]
                          < batch.lengths[:, None]).float()
        nodes = _run_nodes(model, batch.patch_tokens)
        for site in sites:
            f, err = nodes[site.name]  # [b, pos, d_sae], [b, pos, d_in]
            sums_f[site.name] = sums_f.get(site.name, 0) + torch.einsum("bp,bpf->pf", valid, f)
            sums_e[site.name] = sums_e.get(site.name, 0) + torch.einsum("bp,bpd->pd", valid, err)
        counts += valid.sum(0)
    sums_f = distributed.reduce_sums(sums_f, "node_means: feature sums")
    sums_e = distributed.reduce_sums(sums_e, "node_means: error node sums")
    counts = distributed.reduce_sum(counts, "node_means: counts")
    denom = counts.clamp(min=1)[:, None]  # [pos, 1]; a position no prompt reaches: mean 0
    return NodeMeans(
        features={k: v / denom for k, v in sums_f.items()},
        error={k: v / denom for k, v in sums_e.items()},
        seq_len=seq,
        tokenizer_id=data.tokenizer_id,
        n_examples=len(data),
    )


def _run_nodes(model: SplicedModel, tokens: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """(features, error) of every node site on tokens [b, seq]; bare: (empty, component)."""
    if model.dictionaries:
        record: dict = {}
        with model.spliced(record=record):
            model.transformer(tokens, return_type=None)
        return {name: (n.features, n.error) for name, n in record.items()}
    store: dict[str, tuple[Tensor, Tensor]] = {}
    with model.transformer.hooks(fwd_hooks=_record_hooks(model, store)):
        model.transformer(tokens, return_type=None)
    return {s.name: store[s.hook_name] for s in model.sites}


def _per_position(masks: Selection, seq: int) -> Selection:
    """Every mask as [pos, n_nodes] (a [n_nodes] mask keeps its nodes at every position)."""
    return {k: m if m.ndim == 2 else m.expand(seq, -1) for k, m in masks.items()}


def _check_means(means: NodeMeans, data: Dataset) -> None:
    if means.tokenizer_id != data.tokenizer_id or means.seq_len != data.seq_len:
        raise ValueError(
            f"means were computed on data of tokenizer {means.tokenizer_id!r} and length "
            f"{means.seq_len}, not on this evaluation set ({data.tokenizer_id!r}, length "
            f"{data.seq_len}); compute them with node_means(model, data) on the same set"
        )


@torch.no_grad()
def ablated_metrics(
    model: SplicedModel,
    data: Dataset | Sequence[PromptPair],
    selections: Sequence[Selection | None],
    *,
    means: NodeMeans | None = None,
    intact_layers: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> Tensor:
    """Mean evaluation metric with everything outside each selection mean-ablated: [S].

    A selection of None is the plain model, m(M). batch_size: rows (selections × prompts) per
    forward pass.
    """
    data = prepare(model, data)
    if not isinstance(intact_layers, int) or intact_layers < 0:
        raise ValueError(f"intact_layers must be an integer >= 0, got {intact_layers!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    means = node_means(model, data) if means is None else means
    _check_means(means, data)
    seq = data.seq_len
    sites = model.node_sites
    intact = {s.name for s in sites if max(s.layer, 0) < intact_layers}
    masks = {i: _per_position(check_selection(model, sel, seq), seq)
             for i, sel in enumerate(selections) if sel is not None}
    plain = [i for i, sel in enumerate(selections) if sel is None]
    ablate = list(masks)
    totals = torch.zeros(len(selections), dtype=torch.float64)

    local = distributed.shard_dataset(data, "ablated_metrics")  # this rank's prompts
    rows = max(1, min(len(local), batch_size))  # prompts per forward
    per_forward = max(1, batch_size // rows)  # selections per forward
    groups = [ablate[i : i + per_forward] for i in range(0, len(ablate), per_forward)]
    n_steps = math.ceil(len(local) / rows) * (len(groups) + bool(plain))
    bar = tqdm(total=n_steps, desc="ablate", disable=not progress or not distributed.is_main(),
               leave=False)
    for batch in local.batches(rows):
        batch = batch.to(model.device)
        if plain:
            value = _metric(model, batch, batch.clean_tokens, spliced=False).sum()
            totals[plain] += float(value)
            bar.update()
        for group in groups:
            keep = {  # site -> [S, 1, pos, n_nodes]
                name: torch.stack([masks[i][name] for i in group])[:, None]
                for name in masks[group[0]]
            }
            for name in intact:
                keep[name] = torch.ones_like(keep[name][:1])
            edit = _mean_edit(model, keep, means, len(group))
            tokens = batch.clean_tokens.repeat(len(group), 1)  # [S·b, seq]
            value = _metric(model, batch, tokens, edit=edit)  # [S·b]
            totals[group] += value.view(len(group), -1).sum(1).double().cpu()
            bar.update()
    bar.close()
    totals = distributed.reduce_sum(totals, "ablated_metrics: metric sums")
    return (totals / len(data)).float()


def _mean_edit(model: SplicedModel, keep: dict[str, Tensor], means: NodeMeans, n_sel: int):
    """edit(site, f, err) replacing the nodes outside ``keep`` by their means."""

    def edit(site: Site, f: Tensor, err: Tensor) -> tuple[Tensor, Tensor]:
        mask = keep[site.name]  # [S or 1, 1, pos, n_nodes]
        sb, pos = f.shape[:2]
        shape = (n_sel, sb // n_sel, pos)
        d_f, d_e = f.shape[-1], err.shape[-1]
        f = torch.where(
            mask[..., :-1], f.view(*shape, d_f), means.features[site.name][:pos]
        ).view(sb, pos, d_f)
        err = torch.where(
            mask[..., -1:], err.view(*shape, d_e), means.error[site.name][:pos]
        ).view(sb, pos, d_e)
        return f, err

    return edit


def _bare_hooks(model: SplicedModel, edit) -> list:
    """Bare model: apply ``edit`` to each component as the error node of a featureless site."""

    def make(site: Site):
        def hook(x: Tensor, hook) -> Tensor:
            _, x = edit(site, x.new_zeros(*x.shape[:-1], 0), x)
            return x

        return hook

    return [(s.hook_name, make(s)) for s in model.sites]


def _metric(
    model: SplicedModel, batch: Dataset, tokens: Tensor, *, edit=None, spliced: bool = True
) -> Tensor:
    """Evaluation logit difference [rows] of tokens [rows, seq] (rows = S copies of batch),
    through circuits.forward.metric: the same metric discovery uses, with the evaluation sign."""
    targets = Targets.of(batch).repeat(tokens.shape[0] // len(batch))
    if spliced and model.dictionaries:
        with model.spliced(edit=edit):
            value, _ = forward(model, tokens, targets)
    else:
        hooks = _bare_hooks(model, edit) if edit is not None else []
        value, _ = forward(model, tokens, targets, hooks=hooks)
    return -value  # evaluation: logit[clean answer] − logit[patch answer]
