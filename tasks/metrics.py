"""Metrics on next-token logits at the last real position of each prompt.

Two signs of one logit difference:
- "discovery" (Sparse Feature Circuits): logit[patch_answer] - logit[clean_answer], measured
  on the clean run; patching a node towards the patch run pushes it up.
- "evaluation": correct minus incorrect, logit[clean_answer] - logit[patch_answer].
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from .pairs import Dataset

MetricUse = Literal["discovery", "evaluation"]
"""What a logit difference is used for, which fixes its sign: "discovery" (patch - clean answer,
the attribution target) or "evaluation" (clean - patch answer, the faithfulness metric)."""
USES: tuple[MetricUse, ...] = get_args(MetricUse)


def last_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits at each row's last real position: [b, seq, vocab], [b] -> [b, vocab]."""
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    b, seq, _ = logits.shape
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [{b}] to match logits, got shape {tuple(lengths.shape)}")
    lengths = lengths.to(logits.device)
    if bool((lengths < 1).any()) or bool((lengths > seq).any()):
        raise ValueError(
            f"lengths must lie in [1, {seq}] (the logits' seq), got {lengths.tolist()}"
        )
    return logits[torch.arange(b, device=logits.device), lengths - 1]  # [b, vocab]


def _answer_logits(logits: torch.Tensor, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the clean and of the patch answer, each [b], from [b, seq, vocab] or [b, vocab]."""
    if logits.shape[0] != len(data):
        raise ValueError(
            f"logits have batch {logits.shape[0]} but data has {len(data)} pairs; "
            f"pass the matching slice (data.batches / data.subset)"
        )
    last = logits if logits.ndim == 2 else last_logits(logits, data.lengths)  # [b, vocab]
    clean = last.gather(1, data.clean_answer.to(last.device)[:, None])[:, 0]  # [b]
    patch = last.gather(1, data.patch_answer.to(last.device)[:, None])[:, 0]  # [b]
    return clean, patch


def logit_diff(logits: torch.Tensor, data: Dataset, use: MetricUse = "discovery") -> torch.Tensor:
    """Per-pair logit difference [b] at the last real position.

    logits: [b, seq, vocab] (or [b, vocab], already at the last position).
    use "discovery": patch - clean answer; use "evaluation": clean - patch answer.
    """
    if use not in USES:
        raise ValueError(f"unknown logit_diff use {use!r}; pass one of {USES}")
    clean, patch = _answer_logits(logits, data)
    return patch - clean if use == "discovery" else clean - patch


def accuracy(logits: torch.Tensor, data: Dataset) -> float:
    """Fraction of pairs whose clean answer out-scores the patch answer (evaluation diff > 0)."""
    return float((logit_diff(logits, data, "evaluation") > 0).float().mean())
