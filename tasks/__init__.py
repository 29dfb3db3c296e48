"""Tasks: clean/patch prompt pairs, their tokenization, and logit-difference metrics.

Imports nothing else of this project. `sva` builds subject-verb agreement pairs, `ioi`
indirect-object pairs; `tokenize` turns pairs into a `Dataset` for one tokenizer.
"""

from . import ioi, sva
from .metrics import MetricUse, accuracy, last_logits, logit_diff
from .pairs import Dataset, PromptPair, neox_tokenizer, tokenize, tokenizer_id

__all__ = [
    "Dataset",
    "MetricUse",
    "PromptPair",
    "accuracy",
    "ioi",
    "last_logits",
    "logit_diff",
    "neox_tokenizer",
    "sva",
    "tokenize",
    "tokenizer_id",
]
