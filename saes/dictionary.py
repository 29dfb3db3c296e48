"""A sparse dictionary (SAE) at one site: encode to features, decode back.

    f     = act((x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc)     [..., d_sae]
    x_hat = f @ W_dec + b_dec                                             [..., d_in]

Decoding is affine in f, which the attribution methods rely on: a change Δf of one feature moves
the site's activation by Δf · W_dec[i]. Built from a sae_lens SAE (standard/ReLU, JumpReLU or
TopK architecture) or as the identity (neurons as nodes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sae_lens import SAE


class Dictionary(nn.Module):
    def __init__(
        self,
        W_enc: Tensor,  # [d_in, d_sae]
        b_enc: Tensor,  # [d_sae]
        W_dec: Tensor,  # [d_sae, d_in]
        b_dec: Tensor,  # [d_in]
        *,
        apply_b_dec_to_input: bool = True,
        threshold: Tensor | None = None,  # [d_sae], JumpReLU
        k: int | None = None,  # TopK
        identity: bool = False,
    ):
        super().__init__()
        d_in, d_sae = W_enc.shape
        if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
            raise ValueError(
                f"inconsistent dictionary shapes: W_enc {tuple(W_enc.shape)}, W_dec "
                f"{tuple(W_dec.shape)}, b_enc {tuple(b_enc.shape)}, b_dec {tuple(b_dec.shape)}"
            )
        self.W_enc, self.b_enc = nn.Parameter(W_enc), nn.Parameter(b_enc)
        self.W_dec, self.b_dec = nn.Parameter(W_dec), nn.Parameter(b_dec)
        self.threshold = None if threshold is None else nn.Parameter(threshold)
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.k = k
        self.identity = identity

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] feature activations."""
        if self.identity:
            return x
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.threshold is not None:
            return pre * (pre > self.threshold)
        if self.k is not None:
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        return pre.relu()

    def decode(self, f: Tensor) -> Tensor:
        """[..., d_sae] -> [..., d_in] reconstruction."""
        if self.identity:
            return f
        return f @ self.W_dec + self.b_dec

    @classmethod
    def from_sae_lens(cls, sae: SAE) -> Dictionary:
        """Copy the weights of a sae_lens SAE (standard, jumprelu or topk)."""
        cfg = sae.cfg
        architecture = cfg.architecture()
        if architecture not in ("standard", "jumprelu", "topk"):
            raise ValueError(
                f"sae_lens architecture {architecture!r} is not supported; use a standard "
                "(ReLU), jumprelu or topk SAE"
            )
        if getattr(cfg, "normalize_activations", "none") not in ("none", None):
            raise ValueError(
                f"SAE normalises its inputs ({cfg.normalize_activations!r}); fold the "
                "normalisation into its weights before splicing"
            )
        state = {k: v.detach().clone().float() for k, v in sae.state_dict().items()}
        return cls(
            state["W_enc"],
            state["b_enc"],
            state["W_dec"],
            state["b_dec"],
            apply_b_dec_to_input=bool(getattr(cfg, "apply_b_dec_to_input", True)),
            threshold=state.get("threshold"),
            k=getattr(cfg, "k", None) if architecture == "topk" else None,
        )

    @classmethod
    def identity_of(cls, d_in: int) -> Dictionary:
        """Neurons as features: encode and decode are the identity, the error is always 0."""
        eye = torch.eye(d_in)
        zeros = torch.zeros(d_in)
        return cls(
            eye, zeros, eye.clone(), zeros.clone(), apply_b_dec_to_input=False, identity=True
        )
