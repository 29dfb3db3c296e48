"""Forward passes: record activations at hook points, compute the metric. The one forward metric
of the toolkit: discovery (node and edge attribution) and evaluation (ablation) both use it.

Every method runs the *plain* transformer_lens model: the splice is the identity in the forward
pass and in the gradient (see saes/splice.py), so activations and gradients at a site are the
same with or without dictionaries, and node deltas come from encoding the site activation
(circuits/nodes.py). Patching methods may start the forward pass at a site's layer from the
cached clean residual stream (``start_at_layer``), skipping the unchanged prefix.

The metric is tasks.metrics.logit_diff's "discovery" sign: logit[patch answer] − logit[clean
answer] at the last real position (evaluation/ablation.py negates it for its correct − incorrect
sign). It is computed from the final residual stream at that
position and the two answer columns of the unembedding only (the final norm is applied inside
the hooks context, so LRP rule hooks on it still apply): the same value without the
[batch, pos, vocab] logits, which dominate a small model's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap

from saes.sites import Site, final_resid, resid_post, resid_pre
from saes.splice import SplicedModel, TLHook
from tasks.pairs import Dataset


@dataclass
class Targets:
    """What the metric reads of each row: its real length and the two answer token ids."""

    lengths: Tensor  # [b] long
    clean: Tensor  # [b] long, clean answer
    patch: Tensor  # [b] long, patch answer

    @classmethod
    def of(cls, batch: Dataset) -> Targets:
        return cls(batch.lengths, batch.clean_answer, batch.patch_answer)

    def __getitem__(self, rows: Tensor) -> Targets:
        return Targets(self.lengths[rows], self.clean[rows], self.patch[rows])

    def repeat(self, n: int) -> Targets:
        return Targets(self.lengths.repeat(n), self.clean.repeat(n), self.patch.repeat(n))


def metric(model: SplicedModel, resid: Tensor, targets: Targets) -> Tensor:
    """logit[patch] - logit[clean] at the last real position from the final residual stream
    [b, seq, d] (before the final norm), [b]."""
    tl = model.transformer
    rows = torch.arange(resid.shape[0], device=resid.device)
    last = resid[rows, targets.lengths.to(resid.device) - 1][:, None]  # [b, 1, d]
    if tl.cfg.normalization_type is not None:
        last = tl.ln_final(last)
    last = last[:, 0]  # [b, d]
    answers = torch.stack([targets.clean, targets.patch], dim=1).to(resid.device)  # [b, 2]
    W = tl.unembed.W_U.T[answers]  # [b, 2, d]
    logits = torch.einsum("bd,bkd->bk", last, W) + tl.unembed.b_U[answers]  # [b, 2]
    logits = apply_softcap(logits, tl.cfg.output_logits_soft_cap)
    return logits[:, 1] - logits[:, 0]


def valid_positions(batch: Dataset, seq: int) -> Tensor:
    """[b, seq] bool: True at each row's real (unpadded) positions."""
    lengths = batch.lengths.to(batch.clean_tokens.device)
    return torch.arange(seq, device=lengths.device)[None, :] < lengths[:, None]


@dataclass(frozen=True)
class Entry:
    """Where a change of a site's activation enters the forward pass.

    A change Δ of the embed site, of resid_L, of mlp_L, or of attn_L in a parallel block is the
    same change of the residual stream entering block ``start`` (nothing else in block L reads
    them), so a patched forward runs from ``start`` on ``residual + Δ``. Only attn_L of a
    sequential block (read by mlp_L) and attn_z_L (inside attention, before W_O) must run block
    L with a hook at the site (``hook``).
    """

    start: int  # first block to run (n_layers: only the final norm and unembedding)
    resid: str  # hook point holding the residual stream that enters block `start`
    hook: str | None  # site hook point to patch inside block `start`, or None: patch `resid`


def entry(model: SplicedModel, site: Site) -> Entry:
    cfg = model.cfg
    if site.kind == "embed":
        return Entry(0, site.hook_name, None)
    if site.kind == "attn_z" or (site.kind == "attn" and not cfg.parallel_attn_mlp):
        return Entry(site.layer, resid_pre(site.layer), site.hook_name)
    return Entry(site.layer + 1, resid_post(site.layer), None)


def recorder(names: Sequence[str], store: dict[str, Tensor]) -> list[TLHook]:
    """Hooks that store the activation at each hook point (the very tensor the model uses).

    With gradients enabled, an activation that does not require grad (parameters frozen, or a
    forward started from a cached residual) becomes a leaf that does, so that gradients at every
    recorded point can be read with one ``torch.autograd.grad``.
    """

    def hook(x: Tensor, hook) -> Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        store[hook.name] = x
        return x

    return [(name, hook) for name in dict.fromkeys(names)]


def forward(
    model: SplicedModel,
    inputs: Tensor,
    targets: Targets,
    *,
    record: Sequence[str] = (),
    hooks: Sequence[TLHook] = (),
    start_at_layer: int | None = None,
    grad: bool = False,
    past_kv_cache: TransformerLensKeyValueCache | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run the plain model on tokens [b, seq] (or a residual [b, seq, d] with start_at_layer),
    recording hooks first and then ``hooks``; returns (metric [b], records). past_kv_cache: a
    transformer_lens key-value cache of the positions before ``inputs`` (``targets`` then
    count positions from the first one of ``inputs``)."""
    tl = model.transformer
    store: dict[str, Tensor] = {}
    final = final_resid(tl.cfg)
    out: dict[str, Tensor] = {}

    def keep_final(x: Tensor, hook) -> Tensor:
        out["resid"] = x
        return x

    fwd_hooks = recorder(record, store) + list(hooks) + [(final, keep_final)]
    with torch.set_grad_enabled(grad), tl.hooks(fwd_hooks=fwd_hooks):
        tl(inputs, return_type=None, start_at_layer=start_at_layer,
           past_kv_cache=past_kv_cache)
        # started after the last block: the input is the final residual stream
        value = metric(model, out.get("resid", inputs), targets)
    return value, store
