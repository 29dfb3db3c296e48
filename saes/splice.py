"""A transformer_lens model with dictionaries spliced in at its sites, one error node per site.

At a spliced site the activation x is rewritten as

    f   = encode(x)                 features      [batch, pos, d_sae]
    err = x - decode(f)             error node    [batch, pos, d_in]
    out = decode(f') + err'         (f', err') = (f, err) unless an edit replaces them

so with no edit ``out == x`` up to float rounding and the spliced model computes what the plain
model computes.

Gradient convention (as Sparse Feature Circuits): the dictionary is a change of basis, not a new
model. f' and err' are separate graph nodes (copies of f and err), so the gradient at f' is
W_dec · g and at err' is g, where g is the gradient at the site's output. Upstream of the site
the gradient is exactly g: the paths through decode(f') and through err = x - decode(f) carry
+W_dec·g and -W_dec·g into f, which cancel to exactly zero before the encoder, leaving the
identity path x -> err -> out. This is *not* sae_lens' ``use_error_term=True``, whose gradient
runs through the encoder. ``tests/saes/test_splice.py`` checks both identities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from saes.dictionary import Dictionary
from saes.sites import Site, all_sites, site_by_name
from tasks.pairs import Dataset, PromptPair, tokenize, tokenizer_id


@dataclass
class SiteNodes:
    """The nodes of one site on one batch: feature activations and the error term."""

    features: Tensor  # [batch, pos, d_sae]
    error: Tensor  # [batch, pos, d_in]


# edit(site, features, error) -> (features, error); called inside the forward pass
Edit = Callable[[Site, Tensor, Tensor], tuple[Tensor, Tensor]]
# a forward hook as transformer_lens' hooks() and run_with_hooks() take them, in a list:
# (hook point name or a filter on names, hook(activation, hook) -> activation or None)
TLHook = tuple[str | Callable[[str], bool], Callable[..., Tensor | None]]


class SplicedModel:
    """A HookedTransformer plus a dictionary per site (none: the bare model).

    ``sites`` lists every site of the model in forward order; ``dictionaries`` maps site names to
    the dictionaries spliced there (possibly a subset, possibly empty).
    """

    def __init__(
        self,
        model: HookedTransformer,
        dictionaries: dict[str, Dictionary],
        *,
        name: str,
        family: str | None,
        prepend_bos: bool,
    ):
        self.transformer = model
        self.name = name
        # architecture family (neox, gpt2, llama, qwen, gemma), chooses e.g. the LRP rule set;
        # None: circuits.lrp_rules reads it off cfg.original_architecture
        self.family = family
        self.prepend_bos = prepend_bos
        self.sites = all_sites(model.cfg)
        self.dictionaries: dict[str, Dictionary] = {}
        for site_name, dictionary in dictionaries.items():
            site = site_by_name(model.cfg, site_name)
            if dictionary.d_in != site.width(model.cfg):
                raise ValueError(
                    f"dictionary for site {site.name} has d_in={dictionary.d_in} but the site "
                    f"has width {site.width(model.cfg)}; load dictionaries trained for {name}"
                )
            # a JumpReLU threshold may be ±inf (never / always on); nothing may be NaN
            bad = [n for n, t in dictionary.named_parameters()
                   if (t.isnan() if n == "threshold" else ~torch.isfinite(t)).any()]
            if bad:
                raise ValueError(
                    f"dictionary for site {site.name} has NaN or inf in {', '.join(bad)}; the "
                    "weights file is corrupt or the training diverged: reload or retrain it"
                )
            self.dictionaries[site.name] = dictionary.to(self.device)
        bad = [n for n, t in model.named_parameters() if not torch.isfinite(t).all()]
        if bad:
            raise ValueError(f"model {name} has NaN or inf in {', '.join(bad[:5])}"
                             f"{' ...' if len(bad) > 5 else ''}; reload its weights")

    # ---- basics ------------------------------------------------------------------------------
    @property
    def cfg(self):
        return self.transformer.cfg

    @property
    def device(self) -> torch.device:
        return (
            self.transformer.cfg.device
            if isinstance(self.transformer.cfg.device, torch.device)
            else (torch.device(self.transformer.cfg.device or "cpu"))
        )

    @property
    def tokenizer(self):
        return self.transformer.tokenizer

    @property
    def spliced_sites(self) -> list[Site]:
        """The sites with a dictionary, in forward order (attn_z sites among them)."""
        return [s for s in all_sites(self.cfg, with_z=True) if s.name in self.dictionaries]

    @property
    def components_only(self) -> bool:
        """True for the bare model: no dictionaries, each site's one node is the component."""
        return not self.dictionaries

    @property
    def node_sites(self) -> list[Site]:
        """Sites whose nodes are scored: the spliced ones, or every site of a bare model."""
        return list(self.sites) if self.components_only else self.spliced_sites

    def n_nodes(self, site: Site | str) -> int:
        """Nodes of a site: d_sae features then the error node, or 1 (the component) when bare."""
        name = site if isinstance(site, str) else site.name
        return 1 if self.components_only else self.dictionaries[name].d_sae + 1

    def block(self, layer: int) -> Any:
        """Block ``layer`` of the transformer. Typed Any: its attention's attributes depend on the
        architecture (grouped-query attention keeps _W_K, QK-norm adds q_norm, ...)."""
        return self.transformer.blocks[layer]

    def site(self, name: str) -> Site:
        return site_by_name(self.cfg, name)

    def tokenize(self, pairs: list[PromptPair] | Dataset, **kwargs) -> Dataset:
        """Tokenize prompt pairs for this model; a Dataset is checked against the tokenizer."""
        if isinstance(pairs, Dataset):
            expected = tokenizer_id(self.tokenizer)
            if pairs.tokenizer_id != expected:
                raise ValueError(
                    f"dataset was tokenized for {pairs.tokenizer_id!r}, not for this model "
                    f"({expected!r}); pass the prompt pairs and let the model tokenize them"
                )
            return pairs
        kwargs.setdefault("max_len", self.cfg.n_ctx)  # a longer prompt: an error naming n_ctx
        return tokenize(pairs, self.tokenizer, prepend_bos=self.prepend_bos, **kwargs)

    # ---- the splice --------------------------------------------------------------------------
    def _splice_hook(self, site: Site, edit: Edit | None, record: dict[str, SiteNodes] | None):
        dictionary = self.dictionaries[site.name]

        def hook(activation: Tensor, hook) -> Tensor:
            x = site.vectors(activation)  # hook_z: heads concatenated, [b, pos, h·d_head]
            f = dictionary.encode(x)
            err = x - dictionary.decode(f)
            # copies: f', err' are their own graph nodes (see the module docstring)
            f_node, err_node = f.clone(), err.clone()
            if edit is not None:
                f_node, err_node = edit(site, f_node, err_node)
            if record is not None:
                record[site.name] = SiteNodes(f_node, err_node)
            return (dictionary.decode(f_node) + err_node).reshape(activation.shape)

        return hook

    @contextmanager
    def spliced(
        self,
        *,
        edit: Edit | None = None,
        record: dict[str, SiteNodes] | None = None,
        sites: list[str] | None = None,
    ) -> Iterator[None]:
        """Within the block, the model runs with dictionaries spliced in.

        ``edit`` may replace features/error at any site; ``record`` (a dict) receives the
        SiteNodes of every spliced site, still attached to the graph (call ``.retain_grad()`` on
        them to read gradients). ``sites`` restricts the splice to some sites.
        """
        names = list(self.dictionaries) if sites is None else sites
        for name in names:
            if name not in self.dictionaries:
                raise ValueError(
                    f"no dictionary at site {name!r}; spliced sites are {list(self.dictionaries)}"
                )
        hooks: list[TLHook] = [
            (self.site(n).hook_name, self._splice_hook(self.site(n), edit, record)) for n in names
        ]
        with self.transformer.hooks(fwd_hooks=hooks):
            yield

    def logits(self, tokens: Tensor, *, spliced: bool = True, **splice_kwargs) -> Tensor:
        """[batch, pos] tokens -> [batch, pos, vocab] logits, spliced or plain."""
        if not spliced or not self.dictionaries:
            return self.transformer(tokens)
        with self.spliced(**splice_kwargs):
            return self.transformer(tokens)

    def __repr__(self) -> str:
        widths = sorted({d.d_sae for d in self.dictionaries.values()})
        return (
            f"SplicedModel({self.name!r}, {self.cfg.n_layers} layers, d_model={self.cfg.d_model}, "
            f"{len(self.dictionaries)}/{len(self.sites)} sites spliced, d_sae={widths})"
        )
