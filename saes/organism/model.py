"""The organism's architecture: Pythia's GPT-NeoX block, small.

4 layers, d_model 64, 4 heads of 16 dimensions (rotary on a quarter of them, 4, as Pythia's
rotary_pct = 0.25), d_mlp 256, LayerNorm, exact GELU, parallel attention and MLP, untied
unembedding, 128 positions (trained on 32). Why this size: the model (0.24M parameters) and a
dictionary at each of its 13 sites retrain in about 6 minutes on one CPU core, and the dictionaries
stay small (256 features a site), so every test that attributes through all sites runs in
seconds; yet 4 layers are deep enough that agreement across a phrase or relative clause is done
by attention from the verb position back to the subject (one head attends ~1.0 from the verb
position to the subject noun, and mean-ablating it alone leaves chance accuracy: head 3.1 in the
shipped seed 0, head 2.2 with seed 1), with MLP and residual features upstream of it to find.
"""

from __future__ import annotations

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

N_LAYERS, D_MODEL, N_HEADS, D_MLP, ROTARY_PCT, N_CTX = 4, 64, 4, 256, 0.25, 128


def config(vocab_size: int, *, bos_token_id: int, eos_token_id: int) -> GPTNeoXConfig:
    # rotary_pct and rotary_emb_base: transformers 4 takes them as arguments, 5 still accepts them
    # (into rope_parameters) though its dataclass signature omits them
    return GPTNeoXConfig(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=D_MLP,
        hidden_act="gelu",
        rotary_pct=ROTARY_PCT,
        rotary_emb_base=10000,
        max_position_embeddings=N_CTX,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        initializer_range=0.02,
    )


def build(vocab_size: int, *, bos_token_id: int, eos_token_id: int, seed: int):
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(
        config(vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    )
