"""Release strings: which sae_lens dictionaries a string names, checked against sae_lens' directory.

    "gemma-scope-2-270m-pt-res:width_16k_l0_medium+gemma-scope-2-270m-pt-mlp:width_16k_l0_medium"

A string is one or more parts joined by ``+``. A part is a release of sae_lens' pretrained
directory (``get_pretrained_saes_directory()``), optionally followed by ``:`` and either

- a *variant* V: the release's sae ids ``layer_{L}_{V}``, one for each layer that has one, or
- one *sae id* of the release (``layer_12_width_16k_l0_medium``, ``blocks.2.hook_resid_post``).

A release alone names all its dictionaries: right for the Marks et al. releases (one per site),
refused for a release with several per site (Gemma Scope 2: one per width and L0), which then
needs a variant.

Nothing is downloaded here. The hook point each dictionary reads is read off the release's own
naming where it tells (Gemma Scope 2 folder names, as sae_lens' ``gemma_3`` loader reads them;
ids that are hook names), so that sites can be chosen, and unsupported kinds refused, before any
download; the loader checks it against the loaded SAE's ``cfg.metadata.hook_name``.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from saes.names import same_model
from saes.sites import attn_out, attn_point, mlp_out, resid_post

SEPARATOR = "+"
_LAYER_ID = re.compile(r"layer_(\d+)_(.+)")
_HOOK_ID = re.compile(r"blocks\.\d+\.(?:attn\.|mlp\.)?hook_[a-z_]+?(?=__|_\d+$|$)")
# Llama Scope folders end in L{layer}{R|A|M}: the residual stream after the block, the
# attention output, the MLP output (hyperparams.json's hook_point_in, e.g.
# blocks.19.hook_resid_post)
_LLAMA_SCOPE = re.compile(r"L(\d+)([RAM])(?:-\d+x)?$")
LLAMA_SCOPE_HOOKS = {"R": resid_post, "A": attn_out, "M": mlp_out}


@dataclass(frozen=True)
class DictionaryRef:
    """One dictionary of a sae_lens release, as the directory lists it."""

    release: str
    sae_id: str
    model: str  # the model the release was made for, as the directory names it
    repo_id: str  # the Hugging Face repo holding it
    path: str  # its folder inside repo_id
    conversion_func: str | None  # sae_lens' loader for the release (None: sae_lens' own format)
    hook_name: str | None  # the hook point it reads, when the release's naming tells
    neuronpedia_id: str | None
    l0: float | None  # mean L0 the directory states, None where it states none
    # how the model was processed when the dictionary was trained, where the directory says
    # (its config_overrides' model_from_pretrained_kwargs), as sorted (key, value) pairs
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def source(self) -> str:
        """``release/sae_id``: what ``SAE.from_pretrained(release, sae_id)`` loads."""
        return f"{self.release}/{self.sae_id}"

    @property
    def layer(self) -> int | None:
        """The block of its hook point (None where the hook point is not known yet)."""
        if self.hook_name is None or not self.hook_name.startswith("blocks."):
            return None
        return int(self.hook_name.split(".")[1])


def directory() -> dict[str, Any]:
    """sae_lens' pretrained directory: release name -> PretrainedSAELookup."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def model_of(lookup: Any) -> str:
    """The model a release was made for, as sae_lens' directory names it (``gpt2-small``,
    ``google/gemma-3-270m``); ``made_for`` compares it with a ``load()`` name."""
    return str(lookup.model)


def made_for(lookup: Any, model: str) -> bool:
    """Whether the release was made for ``model`` (a ``load()`` name, an alias, a hub id: all
    mapped to transformer_lens' official name, saes.names)."""
    return same_model(model_of(lookup), model)


def releases_for(model: str) -> list[str]:
    """The directory's releases made for ``model`` (a ``load()`` model name or any alias)."""
    return sorted(r for r, lookup in directory().items() if made_for(lookup, model))


def parse(spec: str) -> list[tuple[str, str | None]]:
    """``"a:v+b"`` -> [("a", "v"), ("b", None)]; an empty part is an error."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a release string names sae_lens releases, e.g. "
                         f"'gemma-scope-2-270m-pt-res:width_16k_l0_medium'; got {spec!r}")
    parts: list[tuple[str, str | None]] = []
    for part in spec.split(SEPARATOR):
        release, colon, selector = part.strip().partition(":")
        if not release or (colon and not selector):
            raise ValueError(f"release string {spec!r} has an empty part {part!r}; write "
                             f"RELEASE[:VARIANT] joined by {SEPARATOR!r}")
        parts.append((release, selector or None))
    return parts


def variants(lookup: Any) -> dict[str, list[int]]:
    """variant -> the layers that have ``layer_{L}_{variant}``, for ids of that form."""
    layers: dict[str, list[int]] = defaultdict(list)
    for sae_id in lookup.saes_map:
        match = _LAYER_ID.fullmatch(sae_id)
        if match:
            layers[match.group(2)].append(int(match.group(1)))
    return {v: sorted(ls) for v, ls in sorted(layers.items())}


def expected_hook_name(lookup: Any, sae_id: str) -> str | None:
    """The hook point a dictionary reads, from the release's naming alone (None if it does not
    tell). Gemma Scope 2: as sae_lens' gemma_3 loader maps folder names (attn_out reads the
    heads before W_O, ``attn.hook_z``; transcoders read ``hook_mlp_in``). Llama Scope: the
    folder's last letter. Ids that are hook names: that hook name (``blocks.L.hook_z`` spelt as
    transformer_lens does, ``blocks.L.attn.hook_z``; a width suffix such as ``_768`` dropped)."""
    path = lookup.saes_map[sae_id]
    if lookup.conversion_func in ("llama_scope", "llama_scope_r1_distill"):
        found = _LLAMA_SCOPE.search(path)
        return LLAMA_SCOPE_HOOKS[found.group(2)](int(found.group(1))) if found else None
    if lookup.conversion_func == "gemma_3":
        match = re.search(r"layer_(\d+)", path)
        if match is None:
            return None
        layer = int(match.group(1))
        if "transcoder" in path or "clt" in path:
            return f"blocks.{layer}.hook_mlp_in"  # not a site: no helper in saes.sites
        for kind, hook in (("resid_post", resid_post), ("attn_out", lambda n: attn_point(n, "z")),
                           ("mlp_out", mlp_out)):
            if kind in path:
                return hook(layer)
        return None
    match = _HOOK_ID.match(sae_id)
    if match is None:
        return None
    return re.sub(r"^(blocks\.\d+)\.hook_z$", r"\1.attn.hook_z", match.group(0))


def resolve(spec: str, model: str | None = None) -> list[DictionaryRef]:
    """The dictionaries ``spec`` names, in order; errors name what exists.

    model: the ``load()`` model they must be made for (None: any, each part's own)."""
    found = directory()
    refs: list[DictionaryRef] = []
    parts = parse(spec)
    for release, selector in parts:
        lookup = found.get(release)
        if lookup is None:
            raise ValueError(_unknown_release(release, model, found))
        if model is not None and not made_for(lookup, model):
            raise ValueError(
                f"release {release!r} is made for {lookup.model}, not {model}; "
                f"{_releases_line(model)}"
            )
        refs += [_ref(lookup, sae_id) for sae_id in _sae_ids(lookup, selector)]
    _check_one_per_hook(refs, bare={r for r, selector in parts if selector is None})
    return refs


def _sae_ids(lookup: Any, selector: str | None) -> list[str]:
    if selector is None:
        return list(lookup.saes_map)
    if selector in lookup.saes_map:
        return [selector]
    by_variant = variants(lookup)
    if selector in by_variant:
        return [f"layer_{layer}_{selector}" for layer in by_variant[selector]]
    raise ValueError(
        f"release {lookup.release!r} has no variant or sae id {selector!r}; {_contents(lookup)}"
    )


def _ref(lookup: Any, sae_id: str) -> DictionaryRef:
    l0 = lookup.expected_l0.get(sae_id)
    return DictionaryRef(
        release=lookup.release,
        sae_id=sae_id,
        model=lookup.model,
        repo_id=lookup.repo_id,
        path=lookup.saes_map[sae_id],
        conversion_func=lookup.conversion_func,
        hook_name=expected_hook_name(lookup, sae_id),
        neuronpedia_id=lookup.neuronpedia_id.get(sae_id),
        l0=float(l0) if l0 else None,  # the directory reads a missing l0 as 0.0
        model_kwargs=tuple(sorted(((lookup.config_overrides or {}).get(
            "model_from_pretrained_kwargs") or {}).items())),
    )


# transformer_lens processing that changes no site's activation (the norms' insides, the logits
# by a constant): the unprocessed model serves dictionaries trained with it
NO_SITE_EFFECT = ("fold_ln", "center_unembed")


def model_processing(refs: list[DictionaryRef]) -> dict[str, bool]:
    """The weight processing the model must be loaded with for these dictionaries:
    ``{"center_writing_weights": bool}``. Dictionaries trained on a processed model read the
    processed model's activations: gpt2-small-res-jb's were trained on GPT-2 with centred
    writing weights (each sublayer's and the embedding's output has mean 0 over d_model; the
    model computes the same function, its residual stream is moved). Dictionaries that ask for
    different processing, or for processing other than that, are refused."""
    asked: dict[bool, DictionaryRef] = {}
    for ref in refs:
        kwargs = dict(ref.model_kwargs)
        other = sorted(set(kwargs) - {"center_writing_weights", *NO_SITE_EFFECT})
        if other:
            raise ValueError(f"{ref.source} was trained on a model loaded with {kwargs}; "
                             f"processing {other} is not supported here")
        asked.setdefault(bool(kwargs.get("center_writing_weights", False)), ref)
    if len(asked) > 1:
        raise ValueError(f"{asked[True].source} was trained on the model with centred writing "
                         f"weights, {asked[False].source} on the unprocessed model: load them "
                         "separately")
    return {"center_writing_weights": next(iter(asked), False)}


def _check_one_per_hook(refs: list[DictionaryRef], bare: set[str]) -> None:
    """Two dictionaries at one hook point of one model would be two at one site: refused, naming
    both (and the variants, where a release in ``bare`` was named without one)."""
    seen: dict[tuple[str, str], DictionaryRef] = {}
    for ref in refs:
        if ref.hook_name is None:
            continue
        other = seen.setdefault((ref.model, ref.hook_name), ref)
        if other is not ref:
            hint = (f"; pick a variant, {ref.release}:VARIANT: "
                    f"{_contents(directory()[ref.release])}" if ref.release in bare else "")
            raise ValueError(f"{other.source} and {ref.source} both read {ref.hook_name}: one "
                             f"dictionary per site{hint}")


def _contents(lookup: Any) -> str:
    """What a release holds, for an error: its variants (with their layers), else its ids."""
    by_variant = variants(lookup)
    if by_variant:
        listed = ", ".join(f"{v} (layers {', '.join(map(str, ls))})"
                           for v, ls in by_variant.items())
        return f"its variants are {listed}; or name one sae id, e.g. {next(iter(lookup.saes_map))}"
    ids = list(lookup.saes_map)
    more = f", ... ({len(ids)} in all)" if len(ids) > 12 else ""
    return f"it has no variants; its sae ids are {', '.join(ids[:12])}{more}"


def _releases_line(model: str | None) -> str:
    if model is None:
        return "see sae_lens' pretrained directory"
    mine = releases_for(model)
    if not mine:
        return f"sae_lens has no release for {model}"
    return f"releases for {model}: {', '.join(mine)}"


def _unknown_release(release: str, model: str | None, found: dict[str, Any]) -> str:
    pool = releases_for(model) if model is not None else list(found)
    close = difflib.get_close_matches(release, pool or list(found), n=3, cutoff=0.6)
    maybe = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown sae_lens release {release!r}{maybe}; {_releases_line(model)} (dictionaries= "
            "takes a release string, True, False, None or 'neurons')")


@dataclass(frozen=True)
class ReleaseSummary:
    """What a release holds, from sae_lens' directory alone (nothing is downloaded)."""

    release: str
    model: str  # as the directory names it
    n: int  # dictionaries
    hook_kinds: tuple[str, ...]  # hook points, without "blocks.L." (None where naming tells none)
    layers: tuple[int, ...]
    variants: tuple[str, ...]
    l0: tuple[float, float] | None  # the smallest and largest stated mean L0
    loader: str  # sae_lens' conversion function ("sae_lens": its own format)


def summary(release: str) -> ReleaseSummary:
    lookup = directory()[release]
    refs = [_ref(lookup, sae_id) for sae_id in lookup.saes_map]
    kinds = sorted({re.sub(r"^blocks\.\d+\.", "", r.hook_name) if r.hook_name else "?"
                    for r in refs})
    l0s = [r.l0 for r in refs if r.l0]
    return ReleaseSummary(
        release=release, model=model_of(lookup), n=len(refs), hook_kinds=tuple(kinds),
        layers=tuple(sorted({r.layer for r in refs if r.layer is not None})),
        variants=tuple(variants(lookup)), l0=(min(l0s), max(l0s)) if l0s else None,
        loader=lookup.conversion_func or "sae_lens")


def models_with_releases() -> dict[str, list[str]]:
    """The directory's models (as it names them) -> their releases."""
    found: dict[str, list[str]] = defaultdict(list)
    for release, lookup in directory().items():
        found[model_of(lookup)].append(release)
    return {m: sorted(rs) for m, rs in sorted(found.items(), key=lambda kv: kv[0].lower())}
