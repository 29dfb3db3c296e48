"""Sites: the places in a model where a dictionary is spliced, and how they connect.

Names follow Sparse Feature Circuits: ``embed``, ``attn_L``, ``mlp_L``, ``resid_L``. Each maps to
one transformer_lens hook point. The graph between sites is read from the model config
(``parallel_attn_mlp``), never from a hard-coded list.

One more kind is not among SFC's four: ``attn_z_L``, the heads' outputs concatenated before W_O
(``blocks.L.attn.hook_z``, [b, pos, heads, d_head], seen as [b, pos, heads·d_head]), where
attention dictionaries such as Gemma Scope 2's read. It sits between resid_{L-1} and attn_L, and
is a site of the model only where a dictionary is spliced (``all_sites`` lists SFC's four kinds).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from transformer_lens import HookedTransformerConfig

KINDS = ("embed", "attn_z", "attn", "mlp", "resid")


@dataclass(frozen=True, order=True)
class Site:
    """One splice point. ``order`` sorts sites in the order the forward pass computes them."""

    order: int
    name: str
    kind: str
    layer: int  # -1 for embed

    @property
    def hook_name(self) -> str:
        """The transformer_lens hook point whose activation this site's dictionary reads."""
        if self.kind == "embed":
            return resid_pre(0)
        if self.kind == "attn_z":
            return attn_point(self.layer, "z")
        return {"attn": attn_out, "mlp": mlp_out, "resid": resid_post}[self.kind](self.layer)

    def width(self, cfg: HookedTransformerConfig) -> int:
        """Width of the site's activation as its dictionary sees it (d_in)."""
        return cfg.n_heads * cfg.d_head if self.kind == "attn_z" else cfg.d_model

    def vectors(self, x: Tensor) -> Tensor:
        """The site's activation as [..., pos, width]: hook_z's [..., pos, heads, d_head]
        flattened (a view); other sites' activations unchanged."""
        return x.flatten(-2) if self.kind == "attn_z" else x


# ---- transformer_lens hook point names (spelled here only) ------------------------------------
def resid_pre(layer: int) -> str:
    """The residual stream entering block ``layer`` [b, pos, d_model]."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """The residual stream between attention and MLP of a sequential block."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    """The residual stream leaving block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def final_resid(cfg: HookedTransformerConfig) -> str:
    """The residual stream the final norm and unembedding read."""
    return resid_post(cfg.n_layers - 1)


def attn_out(layer: int) -> str:
    """The attention sublayer's output (after W_O) [b, pos, d_model]."""
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    """The MLP sublayer's output [b, pos, d_model]."""
    return f"blocks.{layer}.hook_mlp_out"


def attn_point(layer: int, point: str) -> str:
    """A hook point inside attention: "q", "k", "v", "z" [b, pos, heads, d_head], "attn_scores"
    (pre-softmax, masked) or "pattern" [b, heads, pos, pos]."""
    return f"blocks.{layer}.attn.hook_{point}"


def mlp_point(layer: int, point: str) -> str:
    """A hook point inside the MLP: "pre" (the gate in a gated MLP), "pre_linear", "post"."""
    return f"blocks.{layer}.mlp.hook_{point}"


def all_sites(cfg: HookedTransformerConfig, *, with_z: bool = False) -> list[Site]:
    """Every site of the model in forward order: embed, then attn_L, mlp_L, resid_L per layer
    (with_z: attn_z_L before each attn_L too)."""
    kinds = ("attn_z", "attn", "mlp", "resid")
    sites = [Site(0, "embed", "embed", -1)]
    for layer in range(cfg.n_layers):
        for i, kind in enumerate(kinds):
            sites.append(Site(1 + len(kinds) * layer + i, f"{kind}_{layer}", kind, layer))
    return sites if with_z else [s for s in sites if s.kind != "attn_z"]


def site_by_name(cfg: HookedTransformerConfig, name: str) -> Site:
    sites = {s.name: s for s in all_sites(cfg, with_z=True)}
    if name not in sites:
        raise ValueError(
            f"unknown site {name!r}; this model's sites are embed, attn_L, mlp_L, resid_L "
            f"and attn_z_L (hook_z) for L in 0..{cfg.n_layers - 1}"
        )
    return sites[name]


def site_by_hook_name(cfg: HookedTransformerConfig, hook_name: str) -> Site:
    """The site whose activation hook point ``hook_name`` carries. The residual stream entering
    block L >= 1 (``blocks.L.hook_resid_pre``, where GPT-2's res-jb dictionaries read) is the
    one leaving block L-1: site resid_{L-1}, spliced at ``blocks.{L-1}.hook_resid_post``, the
    same activation."""
    for site in all_sites(cfg, with_z=True):
        if site.hook_name == hook_name:
            return site
    for layer in range(1, cfg.n_layers):
        if hook_name == resid_pre(layer):
            return site_by_name(cfg, f"resid_{layer - 1}")
    raise ValueError(
        f"hook point {hook_name!r} is not a site of this {cfg.n_layers}-layer model; sites are "
        "blocks.L.hook_resid_pre (embed for L = 0, else resid_{L-1}) and blocks.L.hook_attn_out "
        "/ hook_mlp_out / hook_resid_post / attn.hook_z"
    )


def upstream(cfg: HookedTransformerConfig, site: Site) -> list[Site]:
    """Sites whose output feeds ``site`` directly (paths through other sites cut).

    Parallel blocks (Pythia, GPT-J): attn_L and mlp_L both read resid_{L-1}; resid_L sums
    resid_{L-1}, attn_L and mlp_L. Sequential blocks (GPT-2, Llama, Gemma): mlp_L reads
    resid_{L-1} + attn_L, so attn_L feeds mlp_L too.
    """
    if site.kind == "embed":
        return []
    by_name = {s.name: s for s in all_sites(cfg, with_z=True)}
    prev = by_name["embed"] if site.layer == 0 else by_name[f"resid_{site.layer - 1}"]
    attn, mlp = by_name[f"attn_{site.layer}"], by_name[f"mlp_{site.layer}"]
    if site.kind == "attn_z":
        return [prev]
    if site.kind == "attn":  # through attn_z_L, a site only where spliced (else passed through)
        return [by_name[f"attn_z_{site.layer}"]]
    if site.kind == "mlp":
        return [prev] if cfg.parallel_attn_mlp else [prev, attn]
    return [prev, attn, mlp]


def spliced_upstream(cfg: HookedTransformerConfig, site: Site, spliced: set[str]) -> list[Site]:
    """The spliced sites that feed ``site`` along a path of unspliced sites only (forward order).

    With every site spliced this is ``upstream``; with a subset (e.g. resid_5 and resid_9 only),
    an unspliced site in between passes its inputs on: resid_5 feeds resid_9 through blocks
    6..9. A path through another spliced site is cut there, as Sparse Feature Circuits cuts it.
    """
    found: dict[str, Site] = {}
    stack = list(upstream(cfg, site))
    seen: set[str] = set()
    while stack:
        u = stack.pop()
        if u.name in seen:
            continue
        seen.add(u.name)
        if u.name in spliced:
            found[u.name] = u
        else:
            stack.extend(upstream(cfg, u))
    return sorted(found.values())


def metric_readers(cfg: HookedTransformerConfig, spliced: set[str]) -> list[Site]:
    """The spliced sites the metric reads along a path of unspliced sites only: the last
    residual stream if spliced, else the spliced sites that reach it (forward order)."""
    last = site_by_name(cfg, f"resid_{cfg.n_layers - 1}")
    return [last] if last.name in spliced else spliced_upstream(cfg, last, spliced)
