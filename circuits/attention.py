"""Attention as transformer_lens computes it, recomputed for changed inputs: the maths that
AtP*'s QK fix, RelP* and column patching share.

- ``queries_keys`` / ``values``: a layer's queries, keys and values from residual inputs at
  given positions, with everything the layer applies: ln1, the projections, per-head QK-norm
  (Gemma-3, Qwen3), clipped QKV, the layer's own rotary base (Gemma's local and global layers
  differ) and grouped-query attention (k/v heads repeated).
- ``scaled_scores``: query·key products scaled and soft-capped (Gemma-2) as the scores are
  before masks; recorded ``hook_attn_scores`` carry the causal and sliding-window masks and
  ALiBi, so a change added to them keeps those.
- ``node_qk_terms``: the exact effect of one node on a layer's attention pattern through its
  query (row p) and its key (column p), weighted by ∂L/∂pattern (the QK fix of Kramár et al.).
- ``qk_supported``: whether this recomputation matches the model's attention at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens.utilities.activation_functions import apply_softcap

from saes.sites import attn_point, resid_pre
from saes.splice import SplicedModel


@dataclass(frozen=True)
class AttentionHooks:
    """Hook points of one attention layer that the recomputations read."""

    input: str  # the layer's input r_a: the residual stream entering the block [b, seq, d]
    scores: str  # [b, h, seq, seq] masked, capped, pre-softmax
    pattern: str  # [b, h, seq, seq]
    v: str  # values [b, seq, h_kv, d_head]
    z: str  # heads' outputs before W_O [b, seq, h, d_head]

    @classmethod
    def of(cls, layer: int) -> AttentionHooks:
        return cls(resid_pre(layer), attn_point(layer, "attn_scores"),
                   attn_point(layer, "pattern"), attn_point(layer, "v"), attn_point(layer, "z"))


def qk_supported(model: SplicedModel, method: str = "atp*", fallback: str = "GradDrop only"
                 ) -> bool:
    """Whether the QK fix's recomputation matches this model's attention; warns if not."""
    cfg = model.transformer.cfg
    problems = [
        what for what, bad in (
            ("full-vector QK-norm", cfg.original_architecture in (
                "OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")),
            ("attention sinks", cfg.use_attention_sinks),
            ("log-n attention scaling", cfg.use_logn_attn),
            ("shortformer positions", cfg.positional_embedding_type == "shortformer"),
            ("relative position bias", cfg.positional_embedding_type
             == "relative_positional_bias"),
            ("split attention inputs", cfg.use_attn_in or cfg.use_split_qkv_input),
            ("dynamic NTK rotary", cfg.use_dynamic_ntk_rope),
            ("4-bit weights", cfg.load_in_4bit),
        ) if bad
    ]
    if problems:
        warnings.warn(
            f"{method}: QK fix not supported with {', '.join(problems)}; using {fallback}",
            stacklevel=3,
        )
    return not problems




def queries_keys(model: SplicedModel, layer: int, r: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Queries and keys of a layer, as its attention scores use them, from residual inputs
    r [..., d] at positions pos [...]: (q, k), each [..., h, d_head] (GQA: k heads repeated).

    ln1, the projections, per-head QK-norm, clipping and the layer's rotary embedding (its own
    base: Gemma's local and global layers differ), as transformer_lens's attention computes them.
    """
    cfg = model.transformer.cfg
    block = model.block(layer)
    attn = block.attn
    x = block.ln1(r)
    q = torch.einsum("...d,hde->...he", x, attn.W_Q) + attn.b_Q  # [..., h, dh]
    grouped = hasattr(attn, "repeat_kv_heads") and not cfg.ungroup_grouped_query_attention
    W_K, b_K = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
    k = torch.einsum("...d,hde->...he", x, W_K) + b_K  # [..., h_kv, dh]
    if cfg.use_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)  # RMSNorm over d_head, per head
    if cfg.clip_qkv is not None:
        q, k = q.clamp(-cfg.clip_qkv, cfg.clip_qkv), k.clamp(-cfg.clip_qkv, cfg.clip_qkv)
    if cfg.positional_embedding_type == "rotary":
        q, k = _rotate(model, layer, q, pos), _rotate(model, layer, k, pos)
    if grouped:
        k = k.repeat_interleave(attn.repeat_kv_heads, dim=-2)
    return q, k


def _rotate(model: SplicedModel, layer: int, x: Tensor, pos: Tensor) -> Tensor:
    """Rotary embedding of x [..., h, d_head] at positions pos [...]."""
    attn = model.block(layer).attn
    rd = model.transformer.cfg.rotary_dim
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    cos = attn.rotary_cos[pos].unsqueeze(-2).to(x.dtype)  # [..., 1, rd]
    sin = attn.rotary_sin[pos].unsqueeze(-2).to(x.dtype)
    return torch.cat([x_rot * cos + attn.rotate_every_two(x_rot) * sin, x_pass], dim=-1)


def scaled_scores(model: SplicedModel, layer: int, raw: Tensor) -> Tensor:
    """Scaled and soft-capped query·key dot products (before masks and position biases)."""
    attn = model.block(layer).attn
    return apply_softcap(raw / attn.attn_scale, model.transformer.cfg.attn_scores_soft_cap)


def clean_qk(model: SplicedModel, layer: int, r: Tensor) -> tuple[Tensor, Tensor]:
    """Clean queries and keys [b, seq, h, d_head] of a layer from its input r [b, seq, d]."""
    with torch.no_grad():
        pos = torch.arange(r.shape[1], device=r.device).expand(r.shape[:2])
        return queries_keys(model, layer, r, pos)


@torch.no_grad()
def node_qk_terms(
    model: SplicedModel,
    layer: int,
    b: Tensor,  # [c] example of each node
    p: Tensor,  # [c] its position
    vec: Tensor,  # [c, d] the change it makes to the layer's input at (b, p)
    r: Tensor,  # [b, seq, d] clean input of the layer
    q: Tensor,  # [b, seq, h, dh] clean queries (clean_qk)
    k: Tensor,  # [b, seq, h, dh] clean keys
    scores: Tensor,  # [b, h, seq, seq] recorded hook_attn_scores
    pattern: Tensor,  # [b, h, seq, seq] recorded hook_pattern
    pattern_grads: Sequence[Tensor | None],  # per variant: ∂L/∂A [b, h, seq, seq]
) -> list[Tensor]:
    """Per variant: query + key term of each of c nodes for one attention layer, [c]. Nodes of
    one example share its clean queries, keys and scores (no per-node copies of them)."""
    q_new, k_new = queries_keys(model, layer, r[b, p] + vec, p)  # [c, h, dh]
    out = [vec.new_zeros(len(b)) for _ in pattern_grads]
    if all(g is None for g in pattern_grads):
        return out
    for e in b.unique().tolist():
        m = (b == e).nonzero()[:, 0]
        pm, cm = p[m], torch.arange(len(m), device=b.device)
        q_e, k_e, s_e, A_e = q[e], k[e], scores[e], pattern[e]  # [seq, h, dh] / [h, seq, seq]
        # query: row p, [m, h, seq]
        ds = (scaled_scores(model, layer, torch.einsum("che,jhe->chj", q_new[m], k_e))
              - scaled_scores(model, layer, torch.einsum("che,jhe->chj", q_e[pm], k_e)))
        dA_q = torch.nan_to_num(torch.softmax(s_e[:, pm].transpose(0, 1) + ds, dim=-1)
                                - A_e[:, pm].transpose(0, 1))
        # key: column p of every row (masked entries stay -inf), [m, h, seq, seq]
        ds_col = (scaled_scores(model, layer, torch.einsum("the,che->cht", q_e, k_new[m]))
                  - scaled_scores(model, layer, torch.einsum("the,che->cht", q_e, k_e[pm])))
        s_new = s_e.expand(len(m), -1, -1, -1).clone()
        s_new[cm, :, :, pm] += ds_col
        dA_k = torch.nan_to_num(torch.softmax(s_new, dim=-1) - A_e)
        for o, grad in zip(out, pattern_grads, strict=True):
            if grad is not None:
                G = grad[e]  # [h, seq, seq]
                o[m] = ((dA_q * G[:, pm].transpose(0, 1)).sum((-1, -2))
                        + (dA_k * G).sum((-1, -2, -3)))
    return out


def values(model: SplicedModel, a: int, x: Tensor) -> Tensor:
    """Values [c, h, dh] (GQA heads repeated) of block a from residual inputs x [c, d]."""
    block = model.block(a)
    attn = block.attn
    grouped = hasattr(attn, "repeat_kv_heads") and not model.cfg.ungroup_grouped_query_attention
    W_V, b_V = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
    v = torch.einsum("cd,hde->che", block.ln1(x), W_V) + b_V
    if model.cfg.clip_qkv is not None:
        v = v.clamp(-model.cfg.clip_qkv, model.cfg.clip_qkv)
    return v.repeat_interleave(attn.repeat_kv_heads, dim=-2) if grouped else v
