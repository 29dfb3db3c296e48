"""`Scores`: the result of node attribution, one dense tensor per site.

Per site, the last axis is the site's nodes: with a dictionary, ``d_sae`` features then the error
node (``n_nodes = d_sae + 1``); on a bare model, the component itself (``n_nodes = 1``).

    aggregation "none":  [pos, n_nodes]   one score per node and token position
    aggregation "sum":   [n_nodes]        sum over positions of the per-position scores
    per_example:         a leading [n_examples] axis; otherwise the mean over examples

Saved as one safetensors file (tensors keyed by site name, everything else as JSON in the
header): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from circuits.types import AGGREGATIONS, Aggregation, check_choice

_HEADER_KEY = "circuits.scores"


@dataclass
class Scores:
    """Node scores of one method on one dataset."""

    method: str
    model: str  # the SplicedModel's name
    aggregation: Aggregation
    per_example: bool
    sites: dict[str, Tensor]  # site name -> [n_examples?, pos?, n_nodes]
    n_examples: int
    components_only: bool = False  # True: no dictionaries, a site's one node is the component
    signed: bool = True  # False for methods that score magnitudes only (atp*)
    options: dict[str, Any] = field(default_factory=dict)  # method options (JSON-able)
    # site -> {"source": release/sae_id, "neuronpedia": id} where the model's dictionaries say
    dictionaries: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("aggregation", self.aggregation, AGGREGATIONS)

    # ---- views -------------------------------------------------------------------------------
    @property
    def per_position(self) -> bool:
        """True for aggregation "none": one score per (position, node)."""
        return self.aggregation == "none"

    def n_nodes(self, site: str) -> int:
        return self._get(site).shape[-1]

    def check_finite(self) -> None:
        """Raise, naming the sites, if any score is NaN or inf: a NaN node would silently drop
        out of every threshold, top-k and table (NaN compares false)."""
        bad = {site: int((~torch.isfinite(v)).sum()) for site, v in self.sites.items()
               if not torch.isfinite(v).all()}
        if bad:
            where = ", ".join(f"{site} ({n})" for site, n in bad.items())
            raise ValueError(
                f"{self.method} scores of {self.model} have NaN or inf at {where}; a NaN in "
                "the inputs, the dictionaries or the model's arithmetic (e.g. float16 overflow) "
                "made them: fix that and score again"
            )

    def error_index(self, site: str) -> int:
        """Index of the site's error node (its last node; a bare site's one node is the
        component)."""
        return self.n_nodes(site) - 1

    def features(self, site: str) -> Tensor:
        """Scores of the feature nodes of a spliced site: [..., d_sae]."""
        if self.components_only:
            raise ValueError("these scores are of a bare model (components, no features)")
        return self._get(site)[..., :-1]

    def error(self, site: str) -> Tensor:
        """Scores of the error node of a spliced site: [...] (the last node)."""
        if self.components_only:
            raise ValueError("these scores are of a bare model (components, no error nodes)")
        return self._get(site)[..., -1]

    def _get(self, site: str) -> Tensor:
        if site not in self.sites:
            raise KeyError(f"no scores for site {site!r}; scored sites are {list(self.sites)}")
        return self.sites[site]

    def to(self, device: torch.device | str) -> Scores:
        return Scores(
            self.method, self.model, self.aggregation, self.per_example,
            {k: v.to(device) for k, v in self.sites.items()}, self.n_examples,
            self.components_only, self.signed, dict(self.options), dict(self.dictionaries),
        )

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.sites.items()}
        return (
            f"Scores(method={self.method!r}, model={self.model!r}, aggregation="
            f"{self.aggregation!r}, per_example={self.per_example}, n_examples="
            f"{self.n_examples}, sites={shapes})"
        )

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one .safetensors file (tensors + a JSON header); returns the path."""
        meta = {
            "method": self.method,
            "model": self.model,
            "aggregation": self.aggregation,
            "per_example": self.per_example,
            "n_examples": self.n_examples,
            "components_only": self.components_only,
            "signed": self.signed,
            "options": self.options,
            "dictionaries": self.dictionaries,
            "site_order": list(self.sites),
        }
        return write_tensors(path, self.sites, _HEADER_KEY, meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Scores:
        meta, tensors = read_tensors(path, _HEADER_KEY, "Scores", device)
        sites = {k: tensors[k] for k in meta["site_order"]}
        return cls(
            method=meta["method"],
            model=meta["model"],
            aggregation=meta["aggregation"],
            per_example=meta["per_example"],
            sites=sites,
            n_examples=meta["n_examples"],
            components_only=meta.get("components_only", meta.get("bare", False)),
            signed=meta["signed"],
            options=meta["options"],
            dictionaries=meta.get("dictionaries", {}),
        )


# ---- one safetensors file: tensors plus a JSON header (Scores, EdgeScores) --------------------
def write_tensors(path: str | Path, tensors: dict[str, Tensor], key: str, meta: dict) -> Path:
    """Save ``tensors`` and ``meta`` (as JSON under header ``key``) to one file; no pickle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={key: json.dumps(meta)})
    return path


def read_tensors(
    path: str | Path, key: str, what: str, device: torch.device | str = "cpu"
) -> tuple[dict, dict[str, Tensor]]:
    """(meta, tensors) of a file written by write_tensors; ``what`` names the type in errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}; write one with {what}.save")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        header = (f.metadata() or {}).get(key)
        if header is None:
            raise ValueError(
                f"{path} is a safetensors file but not a {what} file (no {key!r} header); "
                f"write it with {what}.save"
            )
        return json.loads(header), {k: f.get_tensor(k) for k in f.keys()}
