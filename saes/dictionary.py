"""A sparse dictionary (SAE) at one site: encode to features, decode back.

    f     = act((x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc)     [..., d_sae]
    x_hat = f @ W_dec + b_dec                                             [..., d_in]

JumpReLU: f = pre · [pre > threshold] (sae_lens: relu(pre) · [pre > threshold], the same for the
non-negative thresholds JumpReLU SAEs have; a threshold of -inf makes a linear dictionary).

Decoding is affine in f, which the attribution methods rely on: a change Δf of one feature moves
the site's activation by Δf · W_dec[i]. Built from a sae_lens SAE (standard/ReLU, JumpReLU or
TopK architecture) or as the identity (neurons as nodes).

Where it came from travels with it: ``release`` and ``sae_id`` (what
``sae_lens.SAE.from_pretrained(release, sae_id)`` loads; None for dictionaries not loaded by
release) and ``neuronpedia_id`` (sae_lens' directory entry, e.g.
``gemma-3-270m/12-gemmascope-2-res-16k``; None where it lists none). ``neuronpedia_ids`` and
``sources`` read them off any ``{site: Dictionary}`` mapping, e.g. ``model.dictionaries``;
``neuronpedia_url(id, feature)`` is a feature's page, https://www.neuronpedia.org/{id}/{feature}.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        release: str | None = None,
        sae_id: str | None = None,
        neuronpedia_id: str | None = None,
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
        self.release = release
        self.sae_id = sae_id
        self.neuronpedia_id = neuronpedia_id

    @property
    def source(self) -> str | None:
        """``release/sae_id`` for a dictionary loaded by release, else None."""
        if self.release is None:
            return None
        return f"{self.release}/{self.sae_id}"

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

    def encode_features(self, x: Tensor, features: Tensor) -> Tensor:
        """[..., d_in] -> [..., len(features)]: ``encode(x)[..., features]``, computing only those
        columns of W_enc (a TopK dictionary ranks all features, so it encodes them all)."""
        if self.identity:
            return x[..., features]
        if self.k is not None:
            return self.encode(x)[..., features]
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc[:, features] + self.b_enc[features]  # [..., n]
        if self.threshold is not None:
            return pre * (pre > self.threshold[features])
        return pre.relu()

    def decode(self, f: Tensor) -> Tensor:
        """[..., d_sae] -> [..., d_in] reconstruction."""
        if self.identity:
            return f
        return f @ self.W_dec + self.b_dec

    @classmethod
    def from_sae_lens(
        cls,
        sae: SAE,
        *,
        release: str | None = None,
        sae_id: str | None = None,
        neuronpedia_id: str | None = None,
    ) -> Dictionary:
        """Copy the weights of a sae_lens SAE (standard, jumprelu or topk); neuronpedia_id
        defaults to the one in its config."""
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
            release=release,
            sae_id=sae_id,
            neuronpedia_id=neuronpedia_id
            or getattr(getattr(cfg, "metadata", None), "neuronpedia_id", None),
        )

    @classmethod
    def identity_of(cls, d_in: int) -> Dictionary:
        """Neurons as features: encode and decode are the identity, the error is always 0."""
        eye = torch.eye(d_in)
        zeros = torch.zeros(d_in)
        return cls(
            eye, zeros, eye.clone(), zeros.clone(), apply_b_dec_to_input=False, identity=True
        )


NEURONPEDIA = "https://www.neuronpedia.org"


def neuronpedia_url(neuronpedia_id: str, feature: int) -> str:
    """The Neuronpedia page of feature ``feature`` of the dictionary ``neuronpedia_id``, e.g.
    https://www.neuronpedia.org/pythia-70m-deduped/0-res-sm/123."""
    return f"{NEURONPEDIA}/{neuronpedia_id}/{feature}"


def neuronpedia_ids(dictionaries: Mapping[str, Dictionary]) -> dict[str, str]:
    """site -> Neuronpedia id, for the dictionaries that have one (``model.dictionaries``)."""
    return {site: d.neuronpedia_id for site, d in dictionaries.items() if d.neuronpedia_id}


def sources(dictionaries: Mapping[str, Dictionary]) -> dict[str, str]:
    """site -> ``release/sae_id``, for the dictionaries loaded by release."""
    return {site: d.source for site, d in dictionaries.items() if d.source is not None}
