"""Models with sparse dictionaries spliced in at every site (one error node per site)."""

from saes.dictionary import Dictionary
from saes.loader import MODELS, load
from saes.sites import Site, all_sites, upstream
from saes.splice import SiteNodes, SplicedModel

__all__ = [
    "Dictionary",
    "MODELS",
    "Site",
    "SiteNodes",
    "SplicedModel",
    "all_sites",
    "load",
    "upstream",
]
