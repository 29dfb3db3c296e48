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

from circuits.context import AttributionContext
from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods.atp import attribution_patching
from circuits.methods.base import RuledOptions, SiteScores


def score_batch(ctx: AttributionContext, options: RuledOptions) -> SiteScores:
    rules = rules_for(ctx.model, options.rules)
    return attribution_patching(ctx, hooks=rule_hooks(ctx.model.transformer, rules))
