"""Model names: which loader a name takes, and whether a sae_lens release was made for it.

A model is a name, not a code path. ``load(name)`` takes

- one of the three **named** models (``organism``, ``pythia-70m-deduped``, ``gemma-3-270m``),
  each with its own loader and default dictionaries; their hub ids
  (``EleutherAI/pythia-70m-deduped``, ``google/gemma-3-270m``) name them too;
- any model **transformer_lens knows**, by its official name or an alias, any case
  (``gpt2``, ``gpt2-small``, ``EleutherAI/pythia-160m``, ``Qwen/Qwen2.5-0.5B``,
  ``meta-llama/Llama-3.2-1B``, ``gemma-2-2b``): transformers loads it from the hub (or the local
  Hugging Face cache), transformer_lens converts it (saes.hub);
- a **local checkpoint folder** (one holding a Hugging Face ``config.json``).

A release fits a model when both names mean the same model: each is mapped to transformer_lens'
official name (sae_lens' directory says ``gpt2-small``, ``pythia-70m-deduped``, ``gemma-2-2b``,
``google/gemma-3-270m``: all aliases or official names there), and compared without case. A
local folder is the model its folder is named after (``~/ckpt/gpt2``), or none.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

MODELS = ("organism", "pythia-70m-deduped", "gemma-3-270m")  # the named models
HUB_IDS = {"pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
           "gemma-3-270m": "google/gemma-3-270m"}  # the named models' hub repos
DESCRIPTIONS = {
    "organism": "4-layer Pythia-architecture model trained here on an agreement grammar, SAEs "
                "at all 13 sites; shipped in this repo, offline (the default)",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped from the hub, with the Marks et al. "
                          "dictionaries by default (pythia-70m-deduped-{res,att,mlp}-sm)",
    "gemma-3-270m": "google/gemma-3-270m from PyPI (a quantized GGUF, dequantized); "
                    "dictionaries: Gemma Scope 2 releases, or those trained here ('trained')",
}
EXAMPLES = ("gpt2", "EleutherAI/pythia-160m", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B")

Kind = Literal["named", "hub", "local"]


@dataclass(frozen=True)
class ModelName:
    """What ``load(name)`` loads: ``name`` (as a SplicedModel is named), its ``kind`` and where
    transformers finds it (``source``: a hub repo id or a folder; None for the organism and
    Gemma-3-270M, which come from this repo and PyPI)."""

    name: str
    kind: Kind
    source: str | None


@cache
def _aliases() -> dict[str, str]:
    """lower-case name or alias -> transformer_lens' official name."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    return make_model_alias_map()


def transformer_lens_models() -> list[str]:
    """Every official model name transformer_lens knows (each loads by name here)."""
    return sorted(set(_aliases().values()), key=str.lower)


def official(name: str) -> str | None:
    """transformer_lens' official name for ``name`` (a name or an alias, any case), else None."""
    return _aliases().get(name.lower())


def resolve_model(name: str) -> ModelName:
    """The model ``name`` names; an error listing what names are, with close matches."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a model name is a string such as 'organism' or 'gpt2'; got {name!r}")
    by_hub_id = {v.lower(): k for k, v in HUB_IDS.items()}
    named = name if name in MODELS else by_hub_id.get(name.lower())
    if named is not None:
        return ModelName(named, "named", HUB_IDS.get(named))
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return ModelName(str(folder.resolve()), "local", str(folder.resolve()))
    known = official(name)
    if known is not None:
        named = by_hub_id.get(known.lower())
        if named is not None:  # e.g. "pythia-70m-deduped" spelt another way
            return ModelName(named, "named", HUB_IDS[named])
        return ModelName(known, "hub", known)
    raise ValueError(unknown_model(name))


def unknown_model(name: str) -> str:
    """The message for a name that names no model."""
    pool = list(MODELS) + sorted(set(_aliases().values()))
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    maybe = f" (did you mean {', '.join(close)}?)" if close else ""
    folder = (f"; {name} is a folder without a config.json" if Path(name).expanduser().is_dir()
              else "")
    return (f"unknown model {name!r}; choose one of {', '.join(MODELS)}, any model "
            f"transformer_lens knows (e.g. {', '.join(EXAMPLES)}; `circuits models --all` lists "
            f"them), or a local Hugging Face checkpoint folder{folder}{maybe}")


def identity(name: str) -> str:
    """What two names are compared by: transformer_lens' official name in lower case (a named
    model's hub id's; a local folder's folder name's), else the name without its hub
    organisation in lower case (``Qwen/Qwen3-1.7B-Base`` -> ``qwen3-1.7b-base``, which a local
    folder ``.../Qwen3-1.7B-Base`` matches)."""
    if name in HUB_IDS:
        name = HUB_IDS[name]
    elif Path(name).is_absolute() or (Path(name).expanduser() / "config.json").is_file():
        name = Path(name).name
    return (official(name) or name.rstrip("/").split("/")[-1]).lower()


def same_model(a: str, b: str) -> bool:
    """Whether names ``a`` and ``b`` (a release's model, a load() name) mean one model."""
    return identity(a) == identity(b)
