"""``attribute(model, data, method)``: score every node of a spliced model on a dataset.

Checks the inputs, runs the method batch by batch (tqdm), and aggregates its per-example,
per-position scores [b, pos, n_nodes] into `Scores`: summed over positions (aggregation "sum")
or kept per position ("none", needs prompts of one token length), then averaged over examples
unless ``per_example``. The metric is the "discovery" logit difference (patch answer − clean
answer) on the clean run; a node's effect is metric(clean with the node patched to its patch-run
value) − metric(clean). Methods are in circuits/methods/, one file each (see METHODS).
Under torch.distributed (circuits/distributed.py) each rank scores its shard of the pairs and
every rank gets the all-reduced sums (per-example rows: gathered in example order).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits import distributed
from circuits.context import AttributionContext
from circuits.methods import METHODS, RuledOptions
from circuits.methods import method as method_record
from circuits.scores import Scores
from circuits.select import check_selection
from circuits.types import AGGREGATIONS, Aggregation, check_choice
from saes.splice import SplicedModel
from tasks.pairs import Dataset, PromptPair

log = logging.getLogger(__name__)

def attribute(
    model: SplicedModel,
    data: Dataset | Sequence[PromptPair],
    method: str,
    *,
    aggregation: Aggregation = "sum",
    per_example: bool = False,
    batch_size: int = 32,
    steps: int | None = None,
    rules: Sequence[str] | None = None,
    candidates: Mapping[str, Tensor] | None = None,
    exact_batch: int | None = None,
    progress: bool = True,
) -> Scores:
    """Node scores of ``method`` (one of METHODS) for ``model`` on ``data``.

    aggregation: "sum" over positions -> [n_nodes] per site, or "none" -> [pos, n_nodes].
    per_example: keep a leading [n_examples] axis instead of the mean over examples.
    Options of one method each (None: its default; giving one to another method is an error):
    steps: interpolation steps of "ig" (10). rules: LRP rule names for relp, relp*, column
    (None: the model family's set; () is plain AtP; column never applies "ah" and
    Scores.options records the rules without it). exact_batch: patched copies per forward
    pass for "exact" (256).
    candidates: site -> bool mask [n_nodes] / [pos, n_nodes] or index tensor of nodes to score
    (sites left out score 0; "exact" and "column" compute only these).
    """
    spec = method_record(method)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    z_sites = [s.name for s in model.node_sites if s.kind == "attn_z"]
    if z_sites and not spec.attn_z:
        raise ValueError(f"method {method!r} cannot score nodes inside attention (sites "
                         f"{z_sites}, hook_z) yet; use one of "
                         f"{', '.join(m for m, r in METHODS.items() if r.attn_z)}")
    for name, value in (("batch_size", batch_size), ("steps", steps), ("exact_batch", exact_batch)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(rules, str):
        raise ValueError(f"rules must be a sequence of rule names, got the string {rules!r}; "
                         f"e.g. rules=({rules!r},)")
    data = model.tokenize(data if isinstance(data, Dataset) else list(data))
    if len(data) == 0:
        raise ValueError("the dataset is empty; pass at least one prompt pair")
    if aggregation == "none" and not data.uniform_length:
        lengths = sorted(set(data.lengths.tolist()))
        raise ValueError(
            f"aggregation='none' needs prompts of one token length; got lengths "
            f"{set(lengths)}; use aggregation='sum' or a construction with fixed length"
        )
    options = spec.make_options(
        steps=steps, rules=None if rules is None else tuple(rules), exact_batch=exact_batch,
        candidates=None if candidates is None else check_selection(
            model, candidates, data.seq_len, partial=True, what="candidates"),
        progress=progress,
    )
    if spec.resolve_rules is not None:  # the rules applied, checked before the first batch
        assert isinstance(options, RuledOptions)
        options = dataclasses.replace(options, rules=spec.resolve_rules(model, options.rules))

    sites = model.node_sites
    device = model.device
    totals: dict[str, Tensor] = {}
    rows: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    start = time.perf_counter()
    # under torch.distributed each rank scores its shard; an empty one scores the first pair
    # with weight 0, so that its partial sums have the shapes and dtypes of the others'
    local = distributed.shard_dataset(data, f"attribute {method}")
    empty = len(local) == 0
    if empty:
        local = data.subset(slice(0, 1))
    n_batches = math.ceil(len(local) / batch_size)
    for batch in tqdm(local.batches(batch_size), total=n_batches, desc=f"attribute {method}",
                      disable=not progress or not distributed.is_main()):
        batch = batch.to(device)
        ctx = AttributionContext(model, batch)
        for name, site_scores in spec.score_batch(ctx, options):  # [b, pos, n_nodes]
            site_scores = site_scores.detach()
            if options.candidates is not None:
                site_scores = site_scores * options.candidates[name]
            if aggregation == "sum":
                site_scores = site_scores.sum(1)  # [b, n_nodes]
            if per_example:
                rows[name].append(site_scores)
            else:
                totals[name] = totals.get(name, 0) + site_scores.sum(0)
    if per_example:  # in example order, every rank's rows
        sizes = distributed.shard_sizes(len(data))
        result = {name: distributed.gather_rows(torch.cat(parts)[: 0 if empty else None], sizes,
                                                f"attribute {method}: per-example scores")
                  for name, parts in rows.items()}
    else:
        if empty:
            totals = {name: torch.zeros_like(total) for name, total in totals.items()}
        totals = distributed.reduce_sums(totals, f"attribute {method}: node score sums")
        result = {name: total / len(data) for name, total in totals.items()}
    log.info("%s on %d examples in %.1fs", method, len(data), time.perf_counter() - start)
    scores = Scores(
        method=method,
        model=model.name,
        aggregation=aggregation,
        per_example=per_example,
        sites=result,
        n_examples=len(data),
        components_only=model.components_only,
        signed=spec.signed,
        options=options.to_json(),
        dictionaries=dictionary_ids(model),
    )
    scores.check_finite()
    if all(not bool(v.any()) for v in scores.sites.values()):
        warnings.warn(nothing_to_attribute(scores), RuntimeWarning, stacklevel=2)
    return scores


def dictionary_ids(model: SplicedModel) -> dict[str, dict[str, str]]:
    """site -> where its dictionary came from (release/sae_id) and its Neuronpedia id, for the
    sites whose dictionary says (loaded by sae_lens release)."""
    out: dict[str, dict[str, str]] = {}
    for site, d in model.dictionaries.items():
        ids = {"source": d.source, "neuronpedia": d.neuronpedia_id}
        known = {k: v for k, v in ids.items() if v}
        if known:
            out[site] = known
    return out


def nothing_to_attribute(scores: Scores) -> str:
    """Why every score is 0, and what to do."""
    return (f"every {scores.method} score is 0 on these {scores.n_examples} pairs: the clean and "
            "patch prompts give the model the same metric (identical prompts, answers the model "
            "does not tell apart, or candidates that exclude every moved node); there is no "
            "behaviour to attribute. Check the pairs differ where the answer depends on them")
