"""Build a local Hugging Face cache that stands in for the hub: Pythia-70M-deduped with the Marks
et al. dictionaries, and Gemma Scope 2 on Gemma-3-270M.

**Pythia** (the default, or ``--release pythia-70m-deduped-*``): the real Pythia-70M-deduped
config, the real GPT-NeoX tokenizer and *random* weights of the real shapes, plus sae_lens
dictionary folders (cfg.json + sae_weights.safetensors) laid out as in the releases' hub repos
(``ctigges/pythia-70m-deduped__{res,att,mlp}-sm_processed``).

**Gemma Scope 2** (``--release gemma-scope-2-270m-pt-res:width_16k_l0_medium`` and the like):
the folders of ``google/gemma-scope-2-270m-pt`` (``resid_post/layer_5_width_16k_l0_medium/``,
``mlp_out/...``, ``attn_out/...``), each with the files sae_lens' ``gemma_3`` loader reads:
``config.json`` with the fields of the real ones (width, model_name, architecture "jump_relu",
l0, affine_connection, hf_hook_point_in/out, type) and ``params.safetensors`` (w_enc
[d_in, d_sae], w_dec [d_sae, d_in], b_enc, b_dec, threshold). Gemma itself comes from PyPI
(saes.gemma), not from this cache.

With ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=<dir>``, ``saes.load`` runs the very same hub code path
(``sae_lens.SAE.from_pretrained``) against it.

The random dictionaries are as sparse as real ones: encoder directions are random unit vectors
scaled to the site's activation norm, and the encoder bias (ReLU) or the thresholds (JumpReLU,
log-normally spread) are set so that the release's stated mean L0 (sae_lens' directory; 40 where
it states none) features fire per token, measured on the model's own activations of real text
(the prompts of tasks.sva and tasks.ioi and a few sentences). Gemma's BOS token has ~10x the
norm of any other: the JumpReLU encoders are orthogonal to its activation and to the mean, so
BOS fires no feature. ``--d-sae`` shrinks every width (ids keep their names) for tests.

    python -m saes.offline_cache --out .hf_cache --d-sae 32768
    python -m saes.offline_cache --out .hf_cache \\
        --release gemma-scope-2-270m-pt-res:width_16k_l0_medium \\
        --release gemma-scope-2-270m-pt-mlp:width_16k_l0_medium [--layers 5,9] [--d-sae 512]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from saes.neox import neox_to_hooked
from saes.releases import SEPARATOR, DictionaryRef, model_of, resolve

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

PYTHIA_RELEASES = (
    "pythia-70m-deduped-res-sm",
    "pythia-70m-deduped-att-sm",
    "pythia-70m-deduped-mlp-sm",
)
DEFAULT_L0 = 40.0  # where the directory states no mean L0 (the Marks releases)
THRESHOLD_SPREAD = 1.0  # log-normal spread of JumpReLU thresholds (random_jumprelu)
GEMMA_MODEL = "gemma-3-270m"
PYTHIA_MODEL = "pythia-70m-deduped"
# Gemma Scope 2: transformer_lens hook point kind -> the HF hook point its config.json names
GEMMA_SCOPE_2_HF_HOOKS = {
    "hook_resid_post": "model.layers.{layer}.output",
    "hook_mlp_out": "model.layers.{layer}.post_feedforward_layernorm.output",
    "attn.hook_z": "model.layers.{layer}.self_attn.o_proj.input",
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


def build(
    out: Path,
    *,
    releases: Sequence[str] | None = None,
    d_sae: int | None = None,
    layers: Sequence[int] | None = None,
    target_l0: float | None = None,
    seed: int = 0,
) -> Path:
    """Write the stand-in cache under ``out`` (a HF_HUB_CACHE folder) and return it.

    releases: release strings (``RELEASE[:VARIANT]``, saes.releases); None: Pythia-70M-deduped
    with the three Marks releases. d_sae: every dictionary's width (None: 32768 for Pythia, the
    width the Gemma Scope id names). layers: only dictionaries at these blocks. target_l0: mean
    L0 for all (None: each release's stated one)."""
    out = Path(out)
    refs = resolve(SEPARATOR.join(releases or PYTHIA_RELEASES))
    if layers is not None:
        refs = [r for r in refs if r.layer in set(layers)]
        if not refs:
            raise ValueError(f"no dictionary of {list(releases or PYTHIA_RELEASES)} is at layers "
                             f"{list(layers)}")
    by_model: dict[str, list[DictionaryRef]] = {}
    for ref in refs:
        by_model.setdefault(model_of(ref), []).append(ref)
    unknown = set(by_model) - {PYTHIA_MODEL, GEMMA_MODEL}
    if unknown:
        raise ValueError(f"no stand-in for the releases of {sorted(unknown)}; it builds those of "
                         f"{PYTHIA_MODEL} and {GEMMA_MODEL}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if PYTHIA_MODEL in by_model:
        _build_pythia(out, by_model[PYTHIA_MODEL], d_sae or 32768, target_l0, gen)
    if GEMMA_MODEL in by_model:
        _build_gemma_scope(out, by_model[GEMMA_MODEL], d_sae, target_l0, gen)
    return out


def _target(ref: DictionaryRef, target_l0: float | None, d_sae: int) -> float:
    """The mean L0 to calibrate to: asked for, else stated, else DEFAULT_L0; at most d_sae/4."""
    target = target_l0 or ref.l0 or DEFAULT_L0
    if target > d_sae / 4:
        log.warning("%s: d_sae=%d is too narrow for mean L0 %g; calibrating to %g", ref.source,
                    d_sae, target, d_sae / 4)
        target = d_sae / 4
    return target


def _build_pythia(out: Path, refs: list[DictionaryRef], d_sae: int, target_l0: float | None,
                  gen: torch.Generator) -> None:
    """The model repo (config, tokenizer, random fp16 weights) and the dictionaries of refs."""
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
    hook_names = sorted({_hook_of(ref) for ref in refs})
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in hook_names}
    with torch.no_grad():
        for t in tokens:
            _, cache = model.run_with_cache(t[None], names_filter=hook_names)
            for h in hook_names:
                acts[h].append(cache[h][0])

    for ref in refs:
        hook_name = _hook_of(ref)
        folder = repo_snapshot(out, ref.repo_id) / ref.path
        folder.mkdir(parents=True, exist_ok=True)
        weights = random_dictionary(torch.cat(acts[hook_name]), d_sae,
                                    _target(ref, target_l0, d_sae), gen)
        save_file(weights, folder / "sae_weights.safetensors")
        (folder / "cfg.json").write_text(
            json.dumps(sae_cfg(hook_name, model.cfg.d_model, d_sae), indent=2)
        )
        log.info("wrote dictionary %s", folder)


def _hook_of(ref: DictionaryRef) -> str:
    if ref.hook_name is None:
        raise ValueError(f"{ref.source}: the stand-in cannot tell which hook point it reads")
    return ref.hook_name


def calibration_texts() -> list[str]:
    """Real text for Gemma's activations: the tasks' prompts (with their answers) and sentences."""
    from tasks import ioi, sva

    texts = [p.clean + p.clean_answer for c in sva.CONSTRUCTIONS for p in sva.load(c, n=12)]
    texts += [p.clean + p.clean_answer for p in ioi.generate(24)]
    return texts + CALIBRATION_TEXT


def gemma_scope_width(ref: DictionaryRef) -> int:
    """The width a Gemma Scope 2 id names: width_16k -> 16384, width_1m -> 1048576."""
    match = re.search(r"width_(\d+)([km])", ref.sae_id)
    if match is None:
        raise ValueError(f"{ref.source} names no width; pass --d-sae")
    return int(match.group(1)) * {"k": 1024, "m": 1024 * 1024}[match.group(2)]


def gemma_scope_config(ref: DictionaryRef, d_sae: int) -> dict[str, Any]:
    """config.json of a Gemma Scope 2 SAE folder, with the fields of the real ones."""
    hook_name = _hook_of(ref)
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


def gemma_activations(
    model: Any, texts: list[str], hook_names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({hook: [tokens, d_in]} of every non-BOS token of texts, {hook: [d_in]} at BOS), from one
    right-padded batch run only as deep as the deepest hook (no unembedding)."""
    lengths = [model.to_tokens(t).shape[1] for t in texts]
    tokens = model.to_tokens(texts, padding_side="right")
    deepest = max(int(h.split(".")[1]) for h in hook_names)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_names, stop_at_layer=deepest + 1)
    acts, bos = {}, {}
    for h in hook_names:
        x = cache[h].flatten(2) if cache[h].ndim == 4 else cache[h]  # hook_z: heads concatenated
        acts[h] = torch.cat([x[i, 1:n] for i, n in enumerate(lengths)])
        bos[h] = x[0, 0]
    return acts, bos


def random_jumprelu(acts: torch.Tensor, bos: torch.Tensor, d_sae: int, target_l0: float,
                    gen: torch.Generator, *, spread: float = THRESHOLD_SPREAD
                    ) -> dict[str, torch.Tensor]:
    """Random JumpReLU weights (Gemma Scope 2 names and layout) whose mean L0 on ``acts``
    [tokens, d_in] is about target_l0, firing nothing at the BOS activation ``bos`` [d_in].

    Encoder directions are random unit vectors orthogonal to bos and to the mean (b_dec), scaled
    so pre-activations are ~N(0, 1) for a token of median norm; b_enc = 0, so pre = (x - b_dec)
    @ w_enc for every x. Thresholds are log-normal, t_i = t0 · exp(spread · N(0, 1)), t0 found by
    bisection to give target_l0 on acts. One shared threshold would set every feature at a
    Gaussian tail (2.7 sigma for 60 of 16k), where a token of 1.5x the median norm fires 10x as
    many: the mean would be a few high-norm tokens' (median L0 ~1 at layer 12). Spread
    thresholds make feature frequencies span orders of magnitude, as real SAEs' do, and each
    token's L0 near the mean (on held-out prompts within ~35% at width 16k)."""
    d_in = acts.shape[1]
    b_dec = acts.mean(0)
    basis = torch.linalg.qr(torch.stack([bos, b_dec], dim=1)).Q  # [d_in, 2]
    W = torch.randn(d_sae, d_in, generator=gen)
    W -= (W @ basis) @ basis.T
    W /= W.norm(dim=-1, keepdim=True)
    seen = acts - (acts @ basis) @ basis.T  # what the encoder reads of each token
    scale = seen.norm(dim=-1).median().clamp_min(1e-6)
    w_enc = (W.T / scale * math.sqrt(d_in)).contiguous()  # [d_in, d_sae]
    spreads = torch.exp(spread * torch.randn(d_sae, generator=gen))
    # the bisection reads at most 16k features (exchangeable: the L0 of the rest is the same)
    some = torch.randperm(d_sae, generator=gen)[:16384]
    pre = acts @ w_enc[:, some]  # [tokens, some]
    per_feature = d_sae / len(some)
    lo, hi = -12.0, 12.0  # log t0
    for _ in range(60):
        mid = (lo + hi) / 2
        l0 = (pre > math.exp(mid) * spreads[some]).sum(-1).float().mean().item() * per_feature
        lo, hi = (mid, hi) if l0 > target_l0 else (lo, mid)
    threshold = (math.exp(hi) * spreads).contiguous()
    w_dec = (W * scale / math.sqrt(target_l0)).contiguous()  # reconstructions of the right size
    return {"w_enc": w_enc, "w_dec": w_dec, "b_enc": torch.zeros(d_sae), "b_dec": b_dec,
            "threshold": threshold}


def _build_gemma_scope(out: Path, refs: list[DictionaryRef], d_sae: int | None,
                       target_l0: float | None, gen: torch.Generator) -> None:
    """Gemma Scope 2 folders for refs, calibrated on Gemma-3-270M's activations (PyPI GGUF)."""
    from saes.gemma import load_gemma

    configs = {ref: gemma_scope_config(ref, d_sae or gemma_scope_width(ref)) for ref in refs}
    model = load_gemma()
    hook_names = sorted({_hook_of(ref) for ref in refs})
    acts, bos = gemma_activations(model, calibration_texts(), hook_names)
    log.info("calibrating on %d tokens of Gemma-3-270M", len(next(iter(acts.values()))))
    for ref, config in configs.items():
        width = config["width"]
        hook_name = _hook_of(ref)
        params = random_jumprelu(acts[hook_name], bos[hook_name], width,
                                 _target(ref, target_l0, width), gen)
        folder = repo_snapshot(out, ref.repo_id) / ref.path
        folder.mkdir(parents=True, exist_ok=True)
        save_file(params, folder / "params.safetensors")
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        log.info("wrote dictionary %s", folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".hf_cache"), help="HF_HUB_CACHE folder")
    parser.add_argument("--release", action="append", metavar="RELEASE[:VARIANT]",
                        help="a sae_lens release string (repeatable, or joined by '+'); default: "
                        "Pythia-70M-deduped with " + ", ".join(PYTHIA_RELEASES))
    parser.add_argument("--d-sae", type=int, default=None, help="features per dictionary "
                        "(default: 32768 for Pythia, the width a Gemma Scope id names)")
    parser.add_argument("--layers", type=_layers, default=None, metavar="L,L,...",
                        help="only the dictionaries at these blocks")
    parser.add_argument("--target-l0", type=float, default=None, help="mean active features "
                        f"(default: the release's stated l0, {DEFAULT_L0:g} where none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(args.out, releases=args.release, d_sae=args.d_sae, layers=args.layers,
              target_l0=args.target_l0, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(f"built; use it with: HF_HUB_OFFLINE=1 HF_HUB_CACHE={args.out.resolve()}")


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        message = f"--layers takes block numbers, e.g. 5,9; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


if __name__ == "__main__":
    main()
