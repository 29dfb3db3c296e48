"""Build a local Hugging Face cache that stands in for the hub: Pythia-70M-deduped + Marks et al.

It holds the real Pythia-70M-deduped config, the real GPT-NeoX tokenizer and *random* weights of
the real shapes, plus sae_lens dictionary folders (cfg.json + sae_weights.safetensors) laid out as
in the releases' hub repos (``ctigges/pythia-70m-deduped__{res,att,mlp}-sm_processed``). With
``HF_HUB_OFFLINE=1 HF_HUB_CACHE=<dir>``, ``saes.load("pythia-70m-deduped")`` runs the very same
hub code path against it.

The random dictionaries are as sparse as real ones: encoder directions are random unit vectors
scaled to the site's activation norm, and the encoder bias is set so that about ``target_l0``
features fire per token (measured on the model's own activations of real prompts).

    python -m saes.offline_cache --out .hf_cache --d-sae 32768
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from saes.neox import neox_to_hooked
from saes.sites import all_sites

log = logging.getLogger(__name__)

MODEL_REPO = "EleutherAI/pythia-70m-deduped"
TOKENIZER_FILE = (
    Path(__file__).resolve().parents[1] / "tasks" / "data" / "tokenizers" / "gpt-neox-20b.json"
)
REVISION = "0" * 40  # the snapshot folder name; any commit hash works offline

# config.json of EleutherAI/pythia-70m-deduped on the hub
PYTHIA_70M_CONFIG: dict[str, Any] = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 512,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 8,
    "num_hidden_layers": 6,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.24.0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 50304,
}
TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "tokenizer_class": "GPTNeoXTokenizer",
}

# sae_lens release -> (hub repo, site kind, folder name pattern); hook names as sae_lens lists them
RELEASES = {
    "pythia-70m-deduped-res-sm": ("ctigges/pythia-70m-deduped__res-sm_processed", "res"),
    "pythia-70m-deduped-att-sm": ("ctigges/pythia-70m-deduped__att-sm_processed", "att"),
    "pythia-70m-deduped-mlp-sm": ("ctigges/pythia-70m-deduped__mlp-sm_processed", "mlp"),
}
CALIBRATION_TEXT = [
    "The athlete that the managers like is happy.",
    "The kids near the bikes are playing in the park today.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The parents of the author have written many books about the war.",
]


def repo_snapshot(cache: Path, repo_id: str) -> Path:
    """Create models--{org}--{name}/refs/main and return its snapshot folder."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    snapshot = repo_dir / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def folder_for(hook_name: str, kind: str) -> str:
    """Folder name inside the release repo, as in the real repos (e-res-sm, 0-att-sm, ...)."""
    if hook_name == "blocks.0.hook_resid_pre":
        return f"e-{kind}-sm"
    return f"{hook_name.split('.')[1]}-{kind}-sm"


def random_dictionary(acts: torch.Tensor, d_sae: int, target_l0: float, gen: torch.Generator):
    """Random ReLU SAE weights whose mean L0 on ``acts`` [tokens, d_in] is about target_l0."""
    d_in = acts.shape[1]
    b_dec = acts.mean(0)
    centred = acts - b_dec
    scale = centred.norm(dim=-1).median().clamp_min(1e-6)
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_enc = (W_dec.T / scale * math.sqrt(d_in)).contiguous()  # pre-activations ~ N(0, 1) each
    pre = centred @ W_enc
    # a per-dictionary bias at the quantile that leaves target_l0 features above zero
    q = 1.0 - min(target_l0 / d_sae, 0.5)
    sample = pre.flatten()[torch.randperm(pre.numel(), generator=gen)[:1_000_000]]
    b_enc = torch.full((d_sae,), -float(torch.quantile(sample, q)))
    W_dec *= scale / math.sqrt(target_l0)  # reconstructions of the right order of magnitude
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}


def sae_cfg(hook_name: str, d_in: int, d_sae: int) -> dict:
    """A cfg.json in the pre-6.0 sae_lens format of the ctigges releases."""
    return {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "pythia-70m-deduped",
        "hook_name": hook_name,
        "hook_layer": 0 if "resid_pre" in hook_name else int(hook_name.split(".")[1]),
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": False,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": 128,
        "normalize_activations": "none",
        "neuronpedia_id": None,
    }


def build(out: Path, *, d_sae: int = 32768, target_l0: float = 40.0, seed: int = 0) -> Path:
    """Write the stand-in cache under ``out`` (a HF_HUB_CACHE folder) and return it."""
    out = Path(out)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    snapshot = repo_snapshot(out, MODEL_REPO)
    config = GPTNeoXConfig(**PYTHIA_70M_CONFIG)
    hf_model = GPTNeoXForCausalLM(config).eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in hf_model.state_dict().items()}
    save_file(state, snapshot / "model.safetensors", metadata={"format": "pt"})
    (snapshot / "config.json").write_text(json.dumps(PYTHIA_70M_CONFIG, indent=2))
    shutil.copy(TOKENIZER_FILE, snapshot / "tokenizer.json")
    (snapshot / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    (snapshot / "special_tokens_map.json").write_text(
        json.dumps({k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token")})
    )
    log.info("wrote %s", snapshot)

    # the site activations that calibrate the dictionaries' sparsity, from the fp16-rounded model
    hf_model.load_state_dict({k: v.float() for k, v in state.items()})
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_FILE))
    model = neox_to_hooked(hf_model, tokenizer)
    tokens = [torch.tensor(tokenizer.encode(t)) for t in CALIBRATION_TEXT]
    hook_names = [s.hook_name for s in all_sites(model.cfg)]
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in hook_names}
    with torch.no_grad():
        for t in tokens:
            _, cache = model.run_with_cache(t[None], names_filter=hook_names)
            for h in hook_names:
                acts[h].append(cache[h][0])

    for repo_id, kind in RELEASES.values():
        release_snapshot = repo_snapshot(out, repo_id)
        for site in all_sites(model.cfg):
            if {"embed": "res", "resid": "res", "attn": "att", "mlp": "mlp"}[site.kind] != kind:
                continue
            folder = release_snapshot / folder_for(site.hook_name, kind)
            folder.mkdir(parents=True, exist_ok=True)
            weights = random_dictionary(torch.cat(acts[site.hook_name]), d_sae, target_l0, gen)
            save_file(weights, folder / "sae_weights.safetensors")
            (folder / "cfg.json").write_text(
                json.dumps(sae_cfg(site.hook_name, model.cfg.d_model, d_sae), indent=2)
            )
            log.info("wrote dictionary %s", folder)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".hf_cache"), help="HF_HUB_CACHE folder")
    parser.add_argument("--d-sae", type=int, default=32768, help="features per dictionary")
    parser.add_argument("--target-l0", type=float, default=40.0, help="mean active features")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out, d_sae=args.d_sae, target_l0=args.target_l0, seed=args.seed)
    print(f"built; use it with: HF_HUB_OFFLINE=1 HF_HUB_CACHE={args.out.resolve()}")


if __name__ == "__main__":
    main()
