"""`AttributionContext`: one batch of clean/patch pairs, prepared once for every method.

Every attribution method (circuits/methods/) and the edge computation (circuits/edges.py) need
the same things of a batch: the node sites, what the metric reads (targets), the real positions,
the clean run's activations (and, for gradient methods, the metric's graph), the patch run's site
activations, and each site's node deltas Δ = patch − clean. The context holds them:

    ctx = AttributionContext(model, batch)
    ctx.run_clean(record=extra_hook_points, hooks=rule_hooks, grad=True)   # once per batch
    grads = ctx.gradients(ctx.site_hooks)       # ∂(Σ metric)/∂activation at the sites
    ctx.delta(site)                             # SiteDelta, encoded once and cached

The clean run is the one thing methods run differently (LRP rule hooks, GradDrop gates, extra
hook points), so a method asks for it once with what it needs; the patch run and the deltas are
the same for all of them and are computed on first use. Activations of the clean run stay
attached to its graph when ``grad=True`` (read gradients with ``gradients``); ``clean`` gives
them detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import Tensor

from circuits.forward import Entry, Targets, entry, forward, valid_positions
from circuits.nodes import SiteDelta, site_delta
from saes.sites import Site
from saes.splice import SplicedModel, TLHook
from tasks.pairs import Dataset


class AttributionContext:
    """One batch (already on the model's device) and what every method reads of it."""

    def __init__(self, model: SplicedModel, batch: Dataset):
        self.model = model
        self.batch = batch
        self.sites: list[Site] = model.node_sites
        self.site_hooks: list[str] = [s.hook_name for s in self.sites]
        self.targets = Targets.of(batch)
        self.seq: int = batch.clean_tokens.shape[1]
        self.valid: Tensor = valid_positions(batch, self.seq)  # [b, seq] bool
        self.entries: dict[str, Entry] = {s.name: entry(model, s) for s in self.sites}
        self._clean: dict[str, Tensor] | None = None
        self._clean_metric: Tensor | None = None
        self._deltas: dict[str, SiteDelta] = {}

    def __len__(self) -> int:
        return len(self.batch)

    # ---- the clean run -----------------------------------------------------------------------
    def run_clean(
        self, *, record: Sequence[str] = (), hooks: Sequence[TLHook] = (), grad: bool = False
    ) -> Tensor:
        """Run the clean prompts once, recording the sites' hook points and ``record``, with
        ``hooks`` active (e.g. LRP rules, which change only the backward); returns the metric
        [b] (attached to the graph when ``grad``)."""
        if self._clean is not None:
            raise RuntimeError("the clean run of this batch has already been made")
        value, acts = forward(self.model, self.batch.clean_tokens, self.targets,
                              record=[*self.site_hooks, *record], hooks=hooks, grad=grad)
        self._check_finite(acts, value, "clean")
        self._clean, self._clean_metric = acts, value
        return value

    @property
    def clean_metric(self) -> Tensor:
        """The clean run's metric [b], detached."""
        return self._require_clean()[1].detach()

    def activation(self, name: str) -> Tensor:
        """A recorded clean activation, detached."""
        return self._require_clean()[0][name].detach()

    @cached_property
    def clean(self) -> dict[str, Tensor]:
        """Every recorded clean activation, detached (hook name -> tensor)."""
        return {n: t.detach() for n, t in self._require_clean()[0].items()}

    def gradients(
        self, names: Sequence[str], inputs: Sequence[Tensor] = (), *, retain_graph: bool = False
    ) -> list[Tensor | None]:
        """∂(Σ clean metric)/∂ the recorded activations ``names`` (then ∂/∂ ``inputs``, other
        leaves of the clean graph); None where the metric does not depend on one."""
        acts, value = self._require_clean()
        return list(torch.autograd.grad(
            value.sum(), [acts[n] for n in names] + list(inputs), retain_graph=retain_graph,
            allow_unused=True,
        ))

    def _require_clean(self) -> tuple[dict[str, Tensor], Tensor]:
        if self._clean is None or self._clean_metric is None:
            self.run_clean()  # a method that needs nothing special of the clean run
        assert self._clean is not None and self._clean_metric is not None
        return self._clean, self._clean_metric

    # ---- the patch run and the node deltas ---------------------------------------------------
    @cached_property
    def patch(self) -> dict[str, Tensor]:
        """The sites' activations on the patch prompts (hook name -> [b, seq, d])."""
        value, acts = forward(self.model, self.batch.patch_tokens, self.targets,
                              record=self.site_hooks)
        self._check_finite(acts, value, "patch")
        return acts

    def _check_finite(self, acts: dict[str, Tensor], value: Tensor, run: str) -> None:
        """Fail, naming the site, where a run's site activation or metric is NaN or inf (a NaN
        would otherwise flow into every method's scores and silently out of the circuit)."""
        for site in self.sites:
            x = acts[site.hook_name].detach()
            if not torch.isfinite(x).all():
                rows = (~torch.isfinite(x)).flatten(1).any(1).nonzero()[:, 0].tolist()
                raise ValueError(
                    f"the {run} run has NaN or inf activations at site {site.name} (batch rows "
                    f"{rows[:5]}{' ...' if len(rows) > 5 else ''}); the model's arithmetic "
                    "overflowed (e.g. float16) or its inputs are corrupt: load it in float32"
                )
        if not torch.isfinite(value.detach()).all():
            raise ValueError(f"the {run} run's metric is NaN or inf; the model's logits are not "
                             "finite: load it in float32")

    def delta(self, site: Site, *, with_active: bool = False) -> SiteDelta:
        """How the site's nodes move from clean to patch (encoded once per batch and cached);
        with_active also lists the features active on the clean run (edges read it)."""
        cached = self._deltas.get(site.name)
        if cached is None or (with_active and cached.active is None):
            name = site.hook_name
            cached = site_delta(self.model, site, site.vectors(self.activation(name)),
                                site.vectors(self.patch[name]), self.valid,
                                with_active=with_active)
            self._deltas[site.name] = cached
        return cached
