"""Any Hugging Face causal LM transformer_lens can convert, from the hub or a local folder, as an
unprocessed HookedTransformer.

transformers loads the checkpoint (``AutoModelForCausalLM`` and ``AutoTokenizer``; offline, from
the local Hugging Face cache), transformer_lens converts its weights, and nothing is processed
(no LayerNorm folding, no centering, no value-bias folding): activations are the raw model's, the
ones sae_lens dictionaries were trained on.

The transformer_lens config is read from the checkpoint's own config, through transformer_lens'
conversion for its architecture (``original_architecture``: GPT2LMHeadModel, LlamaForCausalLM,
Qwen2ForCausalLM, ...), so that a checkpoint of any size of a known architecture converts,
a shrunk offline stand-in included. Sites, hook names and the edge structure follow from that
config (saes.sites: ``parallel_attn_mlp``; grouped-query attention, rotary embeddings, norms
before and after each sublayer are transformer_lens' business). Architectures transformer_lens
configures by model name only (Gemma, Gemma 2) take its config for that name, checked against
the checkpoint's shapes. GPT-NeoX checkpoints go through saes.neox, the organism's code path.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading
from transformers import GPTNeoXConfig, PreTrainedModel, PreTrainedTokenizerBase

from saes.neox import neox_to_hooked

STAND_IN_FILE = "standin.json"  # written by saes.offline_cache into every stand-in checkpoint
# words in a path that make transformer_lens configure by name instead of by architecture
_NAME_KEYED = ("llama", "gemma")


class StandInWarning(UserWarning):
    """The checkpoint loaded is an offline stand-in (random weights), not the model."""


class WeightsUnavailable(FileNotFoundError):
    """A model's or dictionary's weights are not on this machine and cannot be fetched (offline
    hub, empty cache, a missing shipped folder); the message says how to get them."""


def load_hub_model(source: str, name: str, *, device: str, dtype: torch.dtype,
                   build_hint: str, center_writing_weights: bool = False) -> HookedTransformer:
    """The HookedTransformer of hub repo or folder ``source``, named ``name``. build_hint: the
    command that builds an offline stand-in of it, for the message when it is not cached;
    center_writing_weights: see ``to_hooked``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise WeightsUnavailable(
            f"cannot load {source}: it is not in the local Hugging Face cache and the hub is "
            "unreachable or HF_HUB_OFFLINE=1 (or it is a gated repo: accept its licence on the "
            f"hub and log in with `hf auth login`). Go online once, or build the offline "
            f"stand-in with `{build_hint}` and set HF_HUB_CACHE=.hf_cache "
            f"({err.__class__.__name__})"
        ) from err
    note = stand_in_note(source)
    if note:  # a run records it (circuits.cli.notes); circuits found on it mean nothing
        warnings.warn(f"{source} is an offline stand-in: {note}", StandInWarning, stacklevel=2)
    return to_hooked(hf_model, tokenizer, name=name, device=device, dtype=dtype,
                     center_writing_weights=center_writing_weights)


def stand_in_note(source: str) -> str | None:
    """What a stand-in checkpoint says of itself (saes.offline_cache), None for a real one."""
    import json

    from huggingface_hub import try_to_load_from_cache

    folder = Path(source).expanduser()
    if (folder / "config.json").is_file():
        path: Any = folder / STAND_IN_FILE
    else:
        path = try_to_load_from_cache(source, STAND_IN_FILE)
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    return str(json.loads(Path(path).read_text()).get("note", "random weights"))


def to_hooked(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
              device: str = "cpu", dtype: torch.dtype = torch.float32,
              center_writing_weights: bool = False) -> HookedTransformer:
    """A HookedTransformer with ``hf_model``'s weights, unprocessed (``name``: its model name,
    transformer_lens' official one or a folder). center_writing_weights: the one processing
    some releases were trained with (saes.releases.model_processing); it moves the residual
    stream, not the model's function (LayerNorm removes the mean it takes out)."""
    if isinstance(hf_model.config, GPTNeoXConfig):
        return neox_to_hooked(hf_model, tokenizer, device=device, dtype=dtype,
                              center_writing_weights=center_writing_weights)
    quantized = getattr(hf_model.config, "quantization_config", None)
    if quantized:
        raise ValueError(f"{name} is quantized ({quantized}); load it dequantized: the splice "
                         "and the gradients need plain weights")
    architecture = type(hf_model).__name__
    with tempfile.TemporaryDirectory(prefix="hf-config-") as tmp:
        folder = Path(tmp) / "checkpoint"
        if any(word in str(folder).lower() for word in _NAME_KEYED):
            raise RuntimeError(f"temporary folder {folder} names a model family; set TMPDIR "
                               "elsewhere")
        hf_model.config.architectures = [architecture]
        hf_model.config.save_pretrained(folder)
        cfg = hooked_config(folder, hf_model.config, name=name, device=device, dtype=dtype)
        # transformers types .to as torch's unbound Module.to (@wraps): dtype reads as `self`
        state_dict = tl_loading.get_pretrained_state_dict(
            str(folder), cfg, hf_model.to(dtype), dtype=dtype)  # type: ignore[arg-type]
    if center_writing_weights and cfg.normalization_type not in ("LN", "LNPre"):
        raise ValueError(f"centred writing weights leave {name}'s function unchanged only with "
                         f"LayerNorm, not {cfg.normalization_type}")
    with warnings.catch_warnings():  # TL 3 deprecates HookedTransformer; we want it
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=center_writing_weights,
        center_unembed=False, fold_value_biases=False,
    )
    model.to(device, print_details=False)
    return model.eval()


def hooked_config(folder: Path, hf_config: Any, *, name: str, device: str,
                  dtype: torch.dtype) -> HookedTransformerConfig:
    """transformer_lens' config for the checkpoint whose config.json is in ``folder``: its
    conversion for the architecture, every field read from the config in hand."""
    try:
        cfg = tl_loading.convert_hf_model_config(str(folder))
    except NotImplementedError:
        cfg = _by_name(name, hf_config)
    cfg.update(
        model_name=name.rstrip("/").split("/")[-1], tokenizer_name=name, init_weights=False,
        device=device, dtype=dtype, n_devices=1, from_checkpoint=False,
    )
    cfg.setdefault("default_prepend_bos", True)  # transformer_lens' default
    return HookedTransformerConfig.from_dict(cfg)


def _by_name(name: str, hf_config: Any) -> dict[str, Any]:
    """transformer_lens' config for model ``name`` (an architecture it configures by name only),
    checked against the checkpoint's shapes."""
    architecture = hf_config.architectures[0]
    aliases = tl_loading.make_model_alias_map()  # a folder: the name it is called by
    official = aliases.get(name.lower()) or aliases.get(Path(name).name.lower())
    if official is None:
        raise ValueError(f"transformer_lens configures {architecture} models by name only, and "
                         f"{name} is none it knows; load it by its transformer_lens name (or "
                         "from a folder named after it)")
    cfg = tl_loading.convert_hf_model_config(official)
    text = getattr(hf_config, "text_config", None) or hf_config
    shapes = {"d_model": "hidden_size", "n_layers": "num_hidden_layers",
              "n_heads": "num_attention_heads", "d_mlp": "intermediate_size"}
    wrong = {k: (cfg.get(k), getattr(text, v, None)) for k, v in shapes.items()
             if getattr(text, v, None) is not None and cfg.get(k) != getattr(text, v)}
    if wrong:
        raise ValueError(f"transformer_lens keeps {official}'s config by name ({architecture}), "
                         f"and this checkpoint's shapes differ from it {wrong}: a resized "
                         f"{architecture} cannot be converted")
    return cfg
