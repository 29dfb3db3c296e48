"""Shared fixtures: tiny random models built on CPU in a second, and an offline hub cache.

The hub is never reached: HF_HUB_OFFLINE=1 and HF_HUB_CACHE points at a cache the session builds
with saes.offline_cache (set before huggingface_hub is imported anywhere).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="circuits-hf-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

from saes.dictionary import Dictionary  # noqa: E402
from saes.neox import neox_to_hooked  # noqa: E402
from saes.offline_cache import random_dictionary  # noqa: E402
from saes.splice import SplicedModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEOX_TOKENIZER = REPO / "tasks" / "data" / "tokenizers" / "gpt-neox-20b.json"


@pytest.fixture(scope="session")
def neox_tokenizer(tmp_path_factory):
    """The GPT-NeoX tokenizer as a folder, loaded the way the hub loads it (transformer_lens
    reloads a tokenizer by its name_or_path, so a bare tokenizer file is not enough)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from saes.offline_cache import TOKENIZER_CONFIG

    folder = tmp_path_factory.mktemp("gpt-neox-20b")
    shutil.copy(NEOX_TOKENIZER, folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    return AutoTokenizer.from_pretrained(folder)


def tiny_neox(
    tokenizer, *, layers: int = 2, d_model: int = 32, parallel: bool = True, seed: int = 0
):
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        hidden_size=d_model,
        num_attention_heads=4,
        intermediate_size=4 * d_model,
        num_hidden_layers=layers,
        vocab_size=50304,
        max_position_embeddings=64,
        rotary_pct=0.25,
        use_parallel_residual=parallel,
        hidden_act="gelu",
    )
    return neox_to_hooked(GPTNeoXForCausalLM(config).eval(), tokenizer)


def tiny_spliced(tokenizer, *, d_sae: int = 64, seed: int = 0, **kwargs) -> SplicedModel:
    """A tiny random NeoX with a random sparse dictionary at every site."""
    model = tiny_neox(tokenizer, seed=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 1000, (4, 12), generator=gen)
    _, cache = model.run_with_cache(tokens)
    dicts = {}
    from saes.sites import all_sites

    for site in all_sites(model.cfg):
        acts = cache[site.hook_name].reshape(-1, model.cfg.d_model)
        w = random_dictionary(acts, d_sae, target_l0=8, gen=gen)
        dicts[site.name] = Dictionary(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"])
    return SplicedModel(model, dicts, name="tiny", family="neox", prepend_bos=False)


@pytest.fixture(scope="session")
def tiny(neox_tokenizer) -> SplicedModel:
    return tiny_spliced(neox_tokenizer)


@pytest.fixture(scope="session")
def pythia_cache() -> Path:
    """The offline stand-in for the hub (real config and tokenizer, random weights, d_sae=256)."""
    from saes.offline_cache import build

    cache = Path(os.environ["HF_HUB_CACHE"])
    if not (cache / "models--EleutherAI--pythia-70m-deduped").exists():
        build(cache, d_sae=256, target_l0=20)
    return cache


# Tiny stand-ins of models of other families (saes.standins, --tiny: 3 layers, d_model 64), with
# dictionaries in their releases' real hub layouts, d_sae=128: GPT-2 small with
# gpt2-small-res-jb (layers 0-2: embed, resid_0, resid_1), Llama-3.1-8B with Llama Scope (resid
# at 0-2, attention and MLP outputs at 1), and, without releases, Qwen2.5-0.5B, Pythia-160M and
# Llama-3.2-1B.
STAND_IN_RELEASES = ["gpt2-small-res-jb", "llama_scope_lxr_8x", "llama_scope_lxa_8x:l1a_8x",
                     "llama_scope_lxm_8x:l1m_8x"]
STAND_IN_MODELS = ["Qwen/Qwen2.5-0.5B", "EleutherAI/pythia-160m", "meta-llama/Llama-3.2-1B"]
STAND_IN_D_SAE = 128
GPT2_SPEC = "+".join(f"gpt2-small-res-jb:blocks.{n}.hook_resid_pre" for n in range(3))
LLAMA_SPEC = "+".join([*(f"llama_scope_lxr_8x:l{n}r_8x" for n in range(3)),
                       "llama_scope_lxa_8x:l1a_8x", "llama_scope_lxm_8x:l1m_8x"])


@pytest.fixture(scope="session")
def stand_in_cache() -> Path:
    """HF_HUB_CACHE holding the tiny stand-ins (about a minute to build on 2 cores)."""
    from saes.offline_cache import build

    cache = Path(os.environ["HF_HUB_CACHE"])
    done = cache / "models--fnlp--Llama3_1-8B-Base-LXM-8x"
    if not done.exists():
        build(cache, releases=STAND_IN_RELEASES, models=STAND_IN_MODELS, tiny=True,
              d_sae=STAND_IN_D_SAE)
    return cache


@pytest.fixture(scope="module")
def one_thread():
    """For modules on the tiny organism: one thread is as fast, and immune to a busy second core
    (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
