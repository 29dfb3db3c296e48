"""``load(name)``: a model with its dictionaries spliced in, or bare.

Models: ``organism`` (shipped in this repo, the offline default), ``pythia-70m-deduped`` (hub:
EleutherAI/pythia-70m-deduped + the Marks et al. dictionaries of sae_lens), ``gemma-3-270m``
(PyPI GGUF, no dictionaries yet). ``dictionaries="neurons"`` splices identity dictionaries instead
(the neuron baseline): the nodes of a site are its raw activations, d_sae = d_model, and the error
node is identically 0.
"""

from __future__ import annotations

import logging
import time
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
from saes.neox import neox_to_hooked
from saes.sites import site_by_hook_name, site_by_name
from saes.splice import SplicedModel

log = logging.getLogger(__name__)

ORGANISM_DIR = Path(__file__).resolve().parent / "organism" / "weights"
PYTHIA_RELEASES = (
    "pythia-70m-deduped-res-sm",
    "pythia-70m-deduped-att-sm",
    "pythia-70m-deduped-mlp-sm",
)
MODELS = ("organism", "pythia-70m-deduped", "gemma-3-270m")
NEURONS = "neurons"


class WeightsUnavailable(FileNotFoundError):
    """A model's or dictionary's weights are not on this machine and cannot be fetched (offline
    hub, empty cache, a missing shipped folder); the message says how to get them."""


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

    dictionaries: None loads those the model has (none for gemma-3-270m); False gives the bare
    model (component-level work); True insists on dictionaries; "neurons" splices an identity
    dictionary at every site (nodes = the d_model raw activations + an error node that is always
    0), the neuron baseline, usable wherever SAE dictionaries are. sites: only these sites.
    """
    if sites is not None:
        sites = _checked_site_names(sites, dictionaries)
    if isinstance(dictionaries, str):
        if dictionaries != NEURONS:
            raise ValueError(
                f"dictionaries={dictionaries!r} is not an option; pass True, False, None or "
                f"{NEURONS!r} (identity dictionaries: neurons as nodes)"
            )
        return _with_neurons(load(name, dictionaries=False, device=device, dtype=dtype), sites)
    device = device or default_device()
    start = time.perf_counter()
    if name == "organism":
        model = _check_all_spliced(
            _load_organism(dictionaries is not False, sites, device, dtype), sites)
    elif name == "pythia-70m-deduped":
        model = _check_all_spliced(
            _load_pythia(dictionaries is not False, sites, device, dtype), sites)
    elif name == "gemma-3-270m":
        if dictionaries or sites is not None:
            raise ValueError(
                "gemma-3-270m has no dictionaries yet; load it with dictionaries=False "
                "(component-level attribution)"
            )
        from saes.gemma import load_gemma

        model = SplicedModel(
            load_gemma(device=device, dtype=dtype),
            {},
            name=name,
            family="gemma",
            prepend_bos=True,
        )
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    log.info("loaded %r in %.1fs", model, time.perf_counter() - start)
    return model


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
def _no_progress_bar() -> Iterator[None]:
    """transformers' weight-loading progress bar off inside (restored after)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _hub_model(repo: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(repo)
        hf_model = AutoModelForCausalLM.from_pretrained(repo, dtype=dtype)
    except (OSError, LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise WeightsUnavailable(
            f"cannot load {repo}: it is not in the local Hugging Face cache and the hub is "
            "unreachable or HF_HUB_OFFLINE=1. Go online once, or build the offline stand-in "
            "with `python -m saes.offline_cache --out .hf_cache` and set HF_HUB_CACHE=.hf_cache"
        ) from err
    return neox_to_hooked(hf_model, tokenizer, device=device, dtype=dtype)


def _load_pythia(with_dicts: bool, sites: list[str] | None, device: str, dtype: torch.dtype):
    model = _hub_model("EleutherAI/pythia-70m-deduped", device, dtype)
    _check_sites_known(model.cfg, sites)
    dicts: dict[str, Dictionary] = {}
    if with_dicts:
        from sae_lens import SAE
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        directory = get_pretrained_saes_directory()
        wanted = [
            (release, sae_id)
            for release in PYTHIA_RELEASES
            for sae_id in directory[release].saes_map
            if sites is None or site_by_hook_name(model.cfg, sae_id).name in sites
        ]
        for release, sae_id in tqdm(wanted, desc="dictionaries", leave=False):
            try:
                sae = _checked_sae(partial(SAE.from_pretrained, release, sae_id, device="cpu"),
                                   f"{release}/{sae_id}")
            except (OSError, LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
                raise WeightsUnavailable(
                    f"cannot load dictionary {release}/{sae_id}: not in the local Hugging Face "
                    "cache and the hub is unreachable. Build the offline stand-in with "
                    "`python -m saes.offline_cache` or go online once"
                ) from err
            site = site_by_hook_name(model.cfg, sae.cfg.metadata.hook_name)
            dicts[site.name] = Dictionary.from_sae_lens(sae)
    return SplicedModel(model, dicts, name="pythia-70m-deduped", family="neox", prepend_bos=False)


def _load_organism(with_dicts: bool, sites: list[str] | None, device: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    if not (ORGANISM_DIR / "config.json").exists():
        raise WeightsUnavailable(
            f"the model organism is missing from {ORGANISM_DIR}; rebuild it with "
            "`python -m saes.organism.train`"
        )
    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    with _no_progress_bar():  # 52 local tensors in a blink: a bar is only stderr noise
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
