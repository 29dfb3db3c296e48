"""The hub layouts of sae_lens releases, written by the offline stand-in: each release's folder,
file names and config fields, as the sae_lens loader of the release reads them.

- sae_lens' own layout (``conversion_func`` None; the Marks pythia-70m-deduped releases,
  gpt2-small-res-jb): ``cfg.json`` (pre-6.0 fields) and ``sae_weights.safetensors`` (W_enc
  [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec).
- ``gemma_3`` (gemma-scope-2-270m-pt-*): ``config.json`` (width, l0, hf_hook_point_in, ...) and
  ``params.safetensors`` (w_enc, w_dec, b_enc, b_dec, threshold).
- ``llama_scope`` (llama_scope_lx{r,a,m}_{8,32}x, for Llama-3.1-8B): ``hyperparams.json``
  (d_model, d_sae, hook_point_in, jump_relu_threshold, dataset_average_activation_norm) and
  ``checkpoints/final.safetensors`` (encoder.weight [d_sae, d_in], encoder.bias,
  decoder.weight [d_in, d_sae], decoder.bias).

Every writer takes the calibrated weights of saes.offline_cache: ReLU weights (``W_enc``,
``b_enc``, ``W_dec``, ``b_dec``) for sae_lens' layout, JumpReLU weights (``w_enc``, ``w_dec``,
``b_enc``, ``b_dec``, per-feature ``threshold``) for the others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from saes.releases import DictionaryRef

DEFAULT_L0 = 40.0  # where the directory states no mean L0 (the Marks releases)
# Gemma Scope 2: transformer_lens hook point kind -> the HF hook point its config.json names
GEMMA_SCOPE_2_HF_HOOKS = {
    "hook_resid_post": "model.layers.{layer}.output",
    "hook_mlp_out": "model.layers.{layer}.post_feedforward_layernorm.output",
    "attn.hook_z": "model.layers.{layer}.self_attn.o_proj.input",
}
# widths of the sae_lens-format releases, whose ids name none
SAE_LENS_WIDTHS = {"pythia-70m-deduped": 32768, "gpt2-small": 24576}
DATASETS = {"gpt2-small": "Skylion007/openwebtext"}  # cfg.json's dataset_path; else the Pile


@dataclass(frozen=True)
class Layout:
    """How one sae_lens loader's releases are laid out."""

    name: str
    encoder: Literal["relu", "jumprelu"]  # which calibration its weights come from
    write: Callable[[Path, DictionaryRef, dict[str, torch.Tensor], dict[str, Any]], None]
    width: Callable[[DictionaryRef, int], int | None]  # default d_sae from (ref, d_in)


def hook_of(ref: DictionaryRef) -> str:
    if ref.hook_name is None:
        raise ValueError(f"{ref.source}: the stand-in cannot tell which hook point it reads")
    return ref.hook_name


def sae_cfg(hook_name: str, d_in: int, d_sae: int, *, model_name: str = "pythia-70m-deduped",
            prepend_bos: bool = False) -> dict[str, Any]:
    """A cfg.json in the pre-6.0 sae_lens format of the ctigges and jbloom releases."""
    return {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": 0 if "resid_pre" in hook_name else int(hook_name.split(".")[1]),
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": prepend_bos,
        "dataset_path": DATASETS.get(model_name, "monology/pile-uncopyrighted"),
        "context_size": 128,
        "normalize_activations": "none",
        "neuronpedia_id": None,
    }


def _write_sae_lens(folder: Path, ref: DictionaryRef, weights: dict[str, torch.Tensor],
                    info: dict[str, Any]) -> None:
    d_in, d_sae = weights["W_enc"].shape
    save_file(weights, folder / "sae_weights.safetensors")
    cfg = sae_cfg(hook_of(ref), d_in, d_sae, model_name=ref.model,
                  prepend_bos=info["prepend_bos"])
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))


def gemma_scope_width(ref: DictionaryRef, d_in: int = 0) -> int:
    """The width a Gemma Scope 2 id names: width_16k -> 16384, width_1m -> 1048576."""
    match = re.search(r"width_(\d+)([km])", ref.sae_id)
    if match is None:
        raise ValueError(f"{ref.source} names no width; pass --d-sae")
    return int(match.group(1)) * {"k": 1024, "m": 1024 * 1024}[match.group(2)]


def gemma_scope_config(ref: DictionaryRef, d_sae: int) -> dict[str, Any]:
    """config.json of a Gemma Scope 2 SAE folder, with the fields of the real ones."""
    hook_name = hook_of(ref)
    kind = hook_name.split(".", 2)[2]
    if kind not in GEMMA_SCOPE_2_HF_HOOKS:
        raise ValueError(f"{ref.source} reads {hook_name}; the stand-in builds Gemma Scope 2 "
                         "SAEs on resid_post, mlp_out and attn_out (no transcoders)")
    hf_hook = GEMMA_SCOPE_2_HF_HOOKS[kind].format(layer=ref.layer)
    return {
        "width": d_sae,
        "model_name": ref.repo_id.replace("gemma-scope-2", "gemma-3"),  # google/gemma-3-270m-pt
        "architecture": "jump_relu",
        "l0": int(ref.l0 or DEFAULT_L0),
        "affine_connection": False,
        "hf_hook_point_in": hf_hook,
        "hf_hook_point_out": hf_hook,
        "type": "sae",
    }


def _write_gemma_scope(folder: Path, ref: DictionaryRef, params: dict[str, torch.Tensor],
                       info: dict[str, Any]) -> None:
    save_file(params, folder / "params.safetensors")
    config = gemma_scope_config(ref, params["w_enc"].shape[1])
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def llama_scope_width(ref: DictionaryRef, d_in: int) -> int | None:
    """Llama Scope's widths are expansion factors of d_model: ``-8x``, ``-32x``."""
    match = re.search(r"-(\d+)x$", ref.path)
    return int(match.group(1)) * d_in if match else None


def _write_llama_scope(folder: Path, ref: DictionaryRef, params: dict[str, torch.Tensor],
                       info: dict[str, Any]) -> None:
    """Llama Scope's files for JumpReLU ``params`` (per-feature thresholds, b_enc = 0, inputs
    centred by b_dec), such that sae_lens' llama_scope loader plus its folding of the
    directory's norm scaling factor s yields a dictionary encoding exactly as ``params`` do.

    Llama Scope has one scalar threshold: feature i's encoder column is scaled by c_i = t0/t_i
    (and its decoder row by 1/c_i), so pre_i·c_i > t0 exactly where pre_i > t_i. It reads x
    uncentred (apply_b_dec_to_input False): b_enc = -b_dec @ w_enc. sae_lens then multiplies
    W_enc by s and divides W_dec and b_dec by s, and sets the threshold to
    jump_relu_threshold · sqrt(d_model) / dataset_average_activation_norm.in; the files hold
    the inverse of that, with the norm written as sqrt(d_model) / s."""
    w_enc, w_dec, b_dec, threshold = (params[k] for k in ("w_enc", "w_dec", "b_dec",
                                                            "threshold"))
    d_in, d_sae = w_enc.shape
    t0 = float(threshold.median())
    c = t0 / threshold  # [d_sae]
    w_enc, w_dec = w_enc * c, w_dec / c[:, None]
    b_enc = -(b_dec @ w_enc)
    s = float(info.get("norm_scaling_factor") or 1.0)
    tensors = {"encoder.weight": (w_enc / s).T.contiguous(), "encoder.bias": b_enc.contiguous(),
               "decoder.weight": (w_dec * s).T.contiguous(), "decoder.bias": (b_dec * s)}
    (folder / "checkpoints").mkdir(exist_ok=True)
    save_file(tensors, folder / "checkpoints" / "final.safetensors")
    norm = math.sqrt(d_in) / s
    hook = hook_of(ref)
    hyperparams = {
        "d_model": d_in, "d_sae": d_sae, "expansion_factor": d_sae // d_in,
        "hook_point_in": hook, "hook_point_out": hook, "act_fn": "jumprelu",
        "jump_relu_threshold": t0 / s, "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm, "out": norm}, "top_k": 50,
        "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": False,
        "sparsity_include_decoder_norm": True,
    }
    (folder / "hyperparams.json").write_text(json.dumps(hyperparams, indent=2))


def _sae_lens_width(ref: DictionaryRef, d_in: int) -> int | None:
    return SAE_LENS_WIDTHS.get(ref.model)


LAYOUTS: dict[str | None, Layout] = {
    None: Layout("sae_lens", "relu", _write_sae_lens, _sae_lens_width),
    "gemma_3": Layout("gemma_3", "jumprelu", _write_gemma_scope, gemma_scope_width),
    "llama_scope": Layout("llama_scope", "jumprelu", _write_llama_scope, llama_scope_width),
}


def layout_of(ref: DictionaryRef) -> Layout:
    """The layout of ref's release; an error naming the ones the stand-in writes."""
    if ref.conversion_func not in LAYOUTS:
        raise ValueError(
            f"{ref.release} is laid out for sae_lens' {ref.conversion_func!r} loader; the "
            "stand-in writes sae_lens' own layout (e.g. gpt2-small-res-jb, the Marks "
            "pythia-70m-deduped releases), Gemma Scope 2's (gemma_3) and Llama Scope's "
            "(llama_scope)")
    return LAYOUTS[ref.conversion_func]
