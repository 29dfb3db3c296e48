"""Offline stand-in checkpoints: a model's real Hugging Face config, random weights of its
shapes, a tokenizer, written as the local Hugging Face cache holds the hub repo.

The configs are the real ones, copied field by field into ``saes/configs/<repo id>.json``
(``/`` -> ``--``; where each came from: ``saes/configs/PROVENANCE.md``). ``tiny=True`` shrinks
layers and widths (3 layers, d_model 64, 4 heads, 2 key-value heads where the model groups
them) and keeps every other field, so the architecture (parallel or sequential blocks,
grouped-query attention, rotary scaling, tied embeddings, norms) is the real model's.

The tokenizer is the real one where a file of it is in this repository (GPT-NeoX's, for the
Pythia family); otherwise a stand-in: a byte-level BPE whose words are the model organism's
(the agreement grammar's 310 words, each one token; any other text falls back to bytes), BPE
because transformers rebuilds some models' tokenizers (Qwen2's) from a BPE vocabulary and merges
whatever tokenizer.json says. A tiny model's vocabulary is then the stand-in's. Every stand-in
checkpoint holds ``standin.json`` saying what it is, and saes.hub warns when it loads one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REVISION = "0" * 40  # the snapshot folder name; any commit hash works offline
NEOX_TOKENIZER = (
    Path(__file__).resolve().parents[1] / "tasks" / "data" / "tokenizers" / "gpt-neox-20b.json"
)
NEOX_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "tokenizer_class": "GPTNeoXTokenizer",
}
ORGANISM = Path(__file__).resolve().parent / "organism" / "weights"
SPECIAL = ("<|endoftext|>", "<|padding|>", "<|unk|>")  # ids 0, 1, 2, as the organism's
STAND_IN_TOKENIZER_CONFIG = {
    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|padding|>",
    "unk_token": "<|unk|>", "model_max_length": 1024, "tokenizer_class": "PreTrainedTokenizerFast",
}
TINY_LAYERS = 3
# model_type -> the fields --tiny changes (all others stay the real config's)
TINY: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": TINY_LAYERS, "n_embd": 64, "n_head": 4},
    "gpt_neox": {"num_hidden_layers": TINY_LAYERS, "hidden_size": 64, "num_attention_heads": 4,
                 "intermediate_size": 256},
    "llama": {"num_hidden_layers": TINY_LAYERS, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "head_dim": 16},
    "qwen2": {"num_hidden_layers": TINY_LAYERS, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128},
}


def config_file(repo_id: str) -> Path:
    return CONFIG_DIR / (repo_id.replace("/", "--") + ".json")


def shipped() -> list[str]:
    """The repo ids whose real config is shipped (a stand-in can be built of each)."""
    return sorted(p.stem.replace("--", "/") for p in CONFIG_DIR.glob("*.json"))


def real_config(repo_id: str) -> dict[str, Any]:
    """The model's real config.json; an error listing the shipped ones if it is not shipped."""
    path = config_file(repo_id)
    if not path.is_file():
        raise ValueError(f"no stand-in config for {repo_id}; shipped: {', '.join(shipped())} "
                         f"(add its hub config.json as {path.relative_to(CONFIG_DIR.parent)}, "
                         "copied field by field)")
    return json.loads(path.read_text())


def stand_in_config(repo_id: str, *, tiny: bool) -> dict[str, Any]:
    """The config the stand-in is written with: the real one, shrunk if ``tiny``."""
    config = real_config(repo_id)
    if not tiny:
        return config
    kind = config["model_type"]
    if kind not in TINY:
        raise ValueError(f"--tiny shrinks {', '.join(TINY)} models, not {kind} ({repo_id})")
    config = {**config, **TINY[kind]}
    if not _real_tokenizer(config):  # the stand-in's vocabulary, its special tokens' ids
        config.update(vocab_size=stand_in_tokenizer().get_vocab_size(), bos_token_id=0,
                      eos_token_id=0)
        if "pad_token_id" in config:
            config["pad_token_id"] = 1
    return config


def repo_snapshot(cache: Path, repo_id: str) -> Path:
    """Create models--{org}--{name}/refs/main and return its snapshot folder."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    snapshot = repo_dir / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def write_checkpoint(cache: Path, repo_id: str, *, tiny: bool = False) -> Path:
    """Write the stand-in of ``repo_id`` into the HF cache ``cache``; return its snapshot folder
    (random weights from torch's current seed, in the config's dtype)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = stand_in_config(repo_id, tiny=tiny)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    hf_model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[config["model_type"]](**fields))
    dtype = getattr(torch, config.get("torch_dtype") or "float32")
    state = {k: v.detach().to(dtype).contiguous() for k, v in hf_model.state_dict().items()}
    if getattr(hf_model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: the file holds the embedding once
    snapshot = repo_snapshot(cache, repo_id)
    save_file(state, snapshot / "model.safetensors", metadata={"format": "pt"})
    (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = _write_tokenizer(snapshot, config)
    note = (f"offline stand-in of {repo_id} written by saes.offline_cache: random weights of "
            f"the {'shrunk (--tiny) ' if tiny else 'real '}shapes; tokenizer: {tokenizer}")
    (snapshot / "standin.json").write_text(json.dumps({"note": note, "tiny": tiny}, indent=2))
    log.info("wrote %s (%s)", snapshot, note)
    return snapshot


def _real_tokenizer(config: dict[str, Any]) -> bool:
    return config["model_type"] == "gpt_neox"


def _write_tokenizer(snapshot: Path, config: dict[str, Any]) -> str:
    """The tokenizer files; returns what they are."""
    if _real_tokenizer(config):
        shutil.copy(NEOX_TOKENIZER, snapshot / "tokenizer.json")
        (snapshot / "tokenizer_config.json").write_text(json.dumps(NEOX_TOKENIZER_CONFIG,
                                                                   indent=2))
        (snapshot / "special_tokens_map.json").write_text(json.dumps(
            {k: NEOX_TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token")}))
        return "the real one (GPT-NeoX-20B's)"
    stand_in_tokenizer().save(str(snapshot / "tokenizer.json"))
    what = ("a STAND-IN, a byte-level BPE of the model organism's words (the agreement "
            "grammar's), not the model's own: no file of it is in this repository")
    config = {**STAND_IN_TOKENIZER_CONFIG, "stand_in": what}
    (snapshot / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return what


def stand_in_tokenizer() -> Any:
    """A byte-level BPE (``tokenizers.Tokenizer``) in which each word of the organism's
    tokenizer is one token: the 256 byte symbols, every prefix of every word, and merges
    (prefix, next symbol). Every word starts with Ġ (a space) or a capital, so no merge can
    apply inside a word before its own chain: each word encodes as itself (checked)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    words = [w for w in json.loads((ORGANISM / "tokenizer.json").read_text())["model"]["vocab"]
             if w not in SPECIAL]
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(words, key=lambda w: (len(w), w)):
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                merges.append((word[: end - 1], word[end - 1]))
                vocab[word[:end]] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
    split = [w for w in words if tokenizer.encode(w.replace("Ġ", " ")).ids != [vocab[w]]]
    if split:
        raise RuntimeError(f"the stand-in tokenizer splits {split[:5]}")
    return tokenizer
