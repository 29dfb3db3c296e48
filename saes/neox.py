"""One code path from a Hugging Face GPT-NeoX checkpoint (hub or local folder) to transformer_lens.

Pythia-70M-deduped and the shipped model organism both load here, so the organism exercises the
same code as the real target. No weight processing: dictionaries are trained on raw activations.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights
from transformers import GPTNeoXConfig, PreTrainedModel, PreTrainedTokenizerBase


def hooked_config(hf_config: GPTNeoXConfig, *, device: str, dtype: torch.dtype):
    """transformer_lens config for a GPT-NeoX config (mirrors transformer_lens' own mapping)."""
    rotary_pct = getattr(hf_config, "rotary_pct", None)
    if rotary_pct is None:  # newer transformers keep it in rope_parameters
        rotary_pct = (getattr(hf_config, "rope_parameters", None) or {}).get(
            "partial_rotary_factor", 1.0
        )
    rope = getattr(hf_config, "rope_parameters", None) or {}
    d_head = hf_config.hidden_size // hf_config.num_attention_heads
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=hf_config.max_position_embeddings,
        eps=hf_config.layer_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        use_attn_scale=True,
        use_local_attn=False,
        parallel_attn_mlp=getattr(hf_config, "use_parallel_residual", True),
        positional_embedding_type="rotary",
        rotary_dim=round(rotary_pct * d_head),
        rotary_base=int(rope.get("rope_theta", getattr(hf_config, "rotary_emb_base", 10000))),
        rotary_adjacent_pairs=False,
        normalization_type="LN",
        default_prepend_bos=False,
        original_architecture="GPTNeoXForCausalLM",
        tokenizer_prepends_bos=False,
        device=device,
        dtype=dtype,
    )


def neox_to_hooked(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    center_writing_weights: bool = False,
) -> HookedTransformer:
    """A HookedTransformer with the checkpoint's weights, unprocessed (but for centred writing
    weights where a release's dictionaries ask for them, saes.releases.model_processing)."""
    if not isinstance(hf_model.config, GPTNeoXConfig):
        raise TypeError(
            f"{type(hf_model).__name__} has a {type(hf_model.config).__name__}; neox_to_hooked "
            "converts GPT-NeoX checkpoints (GPTNeoXConfig) only"
        )
    cfg = hooked_config(hf_model.config, device=device, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    # transformers types .to as torch's unbound Module.to (@wraps), so the dtype reads as `self`
    state_dict = convert_neox_weights(hf_model.to(dtype), cfg)  # type: ignore[arg-type]
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=center_writing_weights,
        center_unembed=False,
        fold_value_biases=False,
    )
    model.to(device)
    model.eval()
    return model
