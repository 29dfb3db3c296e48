"""RelP (relevance patching): AtP with the backward pass changed by LRP rules.

    score(node) = Δ(node) · R(node)

where R is the LRP propagation coefficient: the gradient of the metric computed with the rule
hooks of circuits/lrp_rules.py active during the clean forward pass. The rules keep every
forward value bit-identical and change only the backward (LN: norm scale constant; Identity:
act(x)/x as the activation's derivative; Half: a gated product sends half its relevance to each
factor; AH: attention pattern constant). The rule set comes from the model's family (neox/gpt2:
ln + identity; llama/qwen: ln + identity + half; gemma: ln + identity + half + ah, as measured in
circuits/lrp_rules.py) unless ``rules=`` names one.
With ``rules=()`` RelP is AtP exactly. Cost: that of AtP.
"""

from __future__ import annotations

from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods.atp import attribution_patching
from circuits.methods.base import Options, SiteScores
from saes.splice import SplicedModel
from tasks.pairs import Dataset


def score_batch(model: SplicedModel, batch: Dataset, options: Options) -> SiteScores:
    rules = rules_for(model, options.rules)
    return attribution_patching(model, batch, options, hooks=rule_hooks(model.transformer, rules))
