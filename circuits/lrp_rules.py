"""LRP rules for RelP as value-preserving gradient changes at transformer_lens hook points.

Every rule returns, at a hook point, a tensor with the *same forward value* and a changed
gradient, by the identity

    y.detach() + (z - z.detach())       value: y exactly (z - z is 0);  gradient: that of z

so logits stay bit-identical and only the backward pass changes. Rules are hooks applied at call
time through ``model.hooks(...)``; nothing is patched into the model.

    ln        y = (x - mean x) / σ(x) · w + b       σ treated as constant: at every norm's
              (LayerNorm / RMSNorm)                 ``*.hook_scale`` return scale.detach()
    identity  y = act(x)  (GELU, SiLU, ...)         ∂y/∂x := act(x)/x, so relevance passes
                                                    through unchanged: z = x · (y/x).detach()
    half      y = act(gate) · up  (gated MLP)       each factor receives half the relevance:
                                                    z = ½ a(gate)·up.detach() + ½ a.detach()·up
    ah        softmax attention pattern             pattern constant: hook_pattern -> detach
    (0-rule)  linear maps                           the plain gradient; nothing to do

Rule sets per architecture family are the small table FAMILIES below, and ARCHITECTURES maps
transformer_lens' ``cfg.original_architecture`` to a family (a model whose loader names no family
gets its architecture's); ``rules=`` overrides. An architecture not in the table has no rule set:
RelP on it is an error that says how to pass ``rules=``.
Identity and half act on the same MLP hook point (``mlp.hook_post``), so they share one hook.

Why the table says what it says. Gemma: Identity + AH, measured on Gemma-3-270M against exact
activation patching. At component level (benchmarks/fidelity.py; README "Fidelity on
Gemma-3-270M") adding AH (attention patterns constant) to LN + Identity + Half lifts Pearson r
on IOI from 0.22 to 0.87 (residual stream) and from -0.22 to 0.80 (MLP outputs): the gradient
through saturated attention patterns is what misleads there. Dropping LN and Half from that set
keeps IOI (0.87 / 0.91 / 0.79 for residual / attention / MLP) and raises the four agreement
constructions' residual-stream r from 0.69-0.74 to 0.79-0.90 and MLP r from 0.70-0.78 to
0.77-0.92. At feature level, with the dictionaries trained here (benchmarks/attribution.py;
README "Feature circuits on Gemma-3-270M"), it raises r over the features on every agreement
construction (pooled 0.977-0.997 against 0.953-0.987) and over all nodes (0.88-0.94 against
0.84-0.88), and keeps IOI's all-node r (0.972 against 0.974): LN alone breaks resid_5 (r -0.43
on across_rc and across_pp), Half alone lowers r over the features. Column patching keeps LN there
(methods/column.py, COLUMN_RULES). Llama/Qwen keep LN + Identity + Half and NeoX/GPT-2 LN +
Identity (the RelP paper's sets): nothing here measures them on a real checkpoint (the offline
Pythia has random weights), so the measurement does not reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from circuits.types import RuleName
from saes.sites import mlp_point
from saes.splice import SplicedModel, TLHook

RULES: dict[RuleName, str] = {
    "ln": "LayerNorm/RMSNorm scale treated as constant (hook_scale detached)",
    "identity": "activation function passes relevance unchanged: derivative act(x)/x",
    "half": "gated MLP product act(gate)·up sends half the relevance to each factor",
    "ah": "attention pattern treated as constant (hook_pattern detached)",
}

FAMILIES: dict[str, tuple[RuleName, ...]] = {
    "neox": ("ln", "identity"),
    "gpt2": ("ln", "identity"),
    "gemma": ("identity", "ah"),  # measured on Gemma-3-270M: see the module docstring
    "llama": ("ln", "identity", "half"),
    "qwen": ("ln", "identity", "half"),
}

# transformer_lens' original_architecture -> family: the family's rules fit its norms (LayerNorm
# or RMSNorm) and MLP (plain or gated)
ARCHITECTURES: dict[str, str] = {
    "GPTNeoXForCausalLM": "neox",
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen",
    "Qwen3ForCausalLM": "qwen",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma",
    "Gemma3ForCausalLM": "gemma",
}

EPS = 1e-6  # |pre-activation| below this: use act(±EPS)/(±EPS) as the identity-rule ratio


def family_of(model: SplicedModel) -> str | None:
    """The model's architecture family: the one its loader names, else its architecture's
    (ARCHITECTURES), else None."""
    if model.family is not None:
        return model.family
    return ARCHITECTURES.get(str(model.cfg.original_architecture))


def rules_for(model: SplicedModel, rules: Sequence[str] | None) -> tuple[RuleName, ...]:
    """The rule set to use: ``rules`` if given, else the model family's set."""
    if rules is None:
        family = family_of(model)
        if family not in FAMILIES:
            what = (f"model family {family!r}" if family is not None else
                    f"architecture {model.cfg.original_architecture!r} of {model.name}")
            raise ValueError(
                f"no LRP rule set for {what} (known families: {', '.join(FAMILIES)}; "
                f"architectures: {', '.join(ARCHITECTURES)}); pass rules= with names from "
                f"{list(RULES)}, e.g. attribute(model, data, 'relp', rules=('ln', 'identity')) "
                "(--rules ln,identity on the command line; 'half' too for a gated MLP)"
            )
        return FAMILIES[family]
    if isinstance(rules, str):
        raise ValueError(f"rules must be a sequence of rule names, got the string {rules!r}; "
                         f"e.g. rules=({rules!r},)")
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown LRP rule(s) {unknown}; choose from {list(RULES)}")
    return tuple(cast(RuleName, r) for r in dict.fromkeys(rules))


def keep_value(y: Tensor, z: Tensor) -> Tensor:
    """y's value with z's gradient (y and z must have equal values up to rounding)."""
    return y.detach() + (z - z.detach())


def rule_hooks(model: HookedTransformer, rules: Sequence[str]) -> list[TLHook]:
    """Forward hooks implementing ``rules`` on a transformer_lens model."""
    hooks: list[TLHook] = []
    names = list(model.hook_dict)
    if "ln" in rules:
        hooks += [(n, _detach_hook) for n in names if n.endswith("hook_scale")]
    if "ah" in rules:
        hooks += [(n, _detach_hook) for n in names if n.endswith("attn.hook_pattern")]
    identity, half = "identity" in rules, "half" in rules
    if identity or half:
        gated = bool(model.cfg.gated_mlp)
        if half and not gated:
            raise ValueError(
                "rule 'half' applies to gated MLPs (act(gate)·up) but this model's MLP is not "
                "gated; drop 'half' from rules"
            )
        if model.cfg.attn_only:
            return hooks
        if getattr(model.cfg, "num_experts", None):
            raise ValueError("LRP MLP rules do not support mixture-of-experts MLPs; drop "
                             "'identity'/'half' from rules")
        if model.cfg.act_fn is not None and model.cfg.act_fn.endswith("_ln"):
            raise ValueError(f"LRP MLP rules do not support act_fn {model.cfg.act_fn!r} "
                             "(a LayerNorm after the activation)")
        for layer, block in enumerate(model.blocks):
            hooks += _mlp_hooks(layer, block.mlp.act_fn, gated, identity, half)
    return hooks


def _detach_hook(x: Tensor, hook) -> Tensor:
    return x.detach()


def _ratio(pre: Tensor, post: Tensor, act_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """act(pre)/pre, constant; near pre = 0 its limit, evaluated at ±EPS."""
    small = pre.abs() < EPS
    eps = torch.where(pre < 0, -EPS, EPS).to(pre.dtype)
    num = torch.where(small, act_fn(eps), post)
    den = torch.where(small, eps, pre)
    return (num / den).detach()


def _mlp_hooks(
    layer: int, act_fn: Callable[[Tensor], Tensor], gated: bool, identity: bool, half: bool
) -> list[TLHook]:
    """Hooks at blocks.L.mlp: capture the pre-activation (and up projection), rewrite post."""
    seen: dict[str, Tensor] = {}
    pre_name, up_name = mlp_point(layer, "pre"), mlp_point(layer, "pre_linear")

    def capture(x: Tensor, hook) -> Tensor:
        seen[hook.name] = x
        return x

    def post_hook(post: Tensor, hook) -> Tensor:
        pre = seen[pre_name]  # [b, pos, d_mlp] (the gate, in a gated MLP)
        if not gated:  # identity rule: z = pre · act(pre)/pre
            return keep_value(post, pre * _ratio(pre, post.detach(), act_fn))
        up = seen[up_name]  # [b, pos, d_mlp]
        a = act_fn(pre.detach())  # the activation's value
        a_grad = pre * _ratio(pre, a, act_fn) if identity else act_fn(pre)  # its gradient path
        w = 0.5 if half else 1.0
        z = w * a_grad * up.detach() + w * a * up
        return keep_value(post, z)

    hooks: list[TLHook] = [(pre_name, capture), (mlp_point(layer, "post"), post_hook)]
    if gated:
        hooks.insert(1, (up_name, capture))
    return hooks
