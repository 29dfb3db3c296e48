"""What every attribution method receives, returns and says about itself.

A method is a function ``score_batch(ctx, options)`` that reads one batch's
`AttributionContext` (circuits/context.py: the clean and patch runs, node deltas) and yields,
site by site, the per-example, per-position scores of that site's nodes:

    (site name, [batch, pos, n_nodes])       zeros at padded positions

`attribute` batches the dataset, aggregates over positions and examples, and builds `Scores`.
Yielding one site at a time keeps a single dense [batch, pos, d_sae + 1] tensor alive at once.

Each method takes its own options type: every method takes ``Options`` (candidates, progress);
ig adds ``steps`` (`IGOptions`), exact its patch batch (`ExactOptions`), the methods with LRP
rules ``rules`` (`RuledOptions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from torch import Tensor

from circuits.types import RuleName

if TYPE_CHECKING:
    from circuits.context import AttributionContext
    from saes.splice import SplicedModel


@dataclass(frozen=True)
class Options:
    """Options every method takes."""

    # site name -> bool mask [n_nodes] or [pos, n_nodes] of nodes to score (others score 0);
    # None scores every node. `exact` and `column` only compute the candidates.
    candidates: dict[str, Tensor] | None = None
    progress: bool = True  # inner progress bars (exact)

    def to_json(self) -> dict[str, Any]:
        """What Scores.options records: the method's own options (candidates only as a flag)."""
        out: dict[str, Any] = {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in fields(self) if f.name not in _COMMON
            for v in [getattr(self, f.name)]
        }
        if self.candidates is not None:
            out["candidates"] = True
        return out


_COMMON = ("candidates", "progress")


@dataclass(frozen=True)
class IGOptions(Options):
    steps: int = 10  # interpolation steps (midpoint rule)


@dataclass(frozen=True)
class ExactOptions(Options):
    exact_batch: int = 256  # patched copies of the clean batch per forward pass


@dataclass(frozen=True)
class RuledOptions(Options):
    # LRP rule names; None = the model family's set (resolved by `attribute` before batch 1)
    rules: tuple[RuleName, ...] | None = None


SiteScores = Iterator[tuple[str, Tensor]]  # (site name, [batch, pos, n_nodes]) per site
ScoreFn = Callable[["AttributionContext", Any], SiteScores]
# (model, rules or None) -> the rules the method applies, checked; fails before the first batch
RuleResolver = Callable[["SplicedModel", "Sequence[str] | None"], tuple[RuleName, ...]]


@dataclass(frozen=True)
class Method:
    """One entry of the method registry: what the method is, not only how it runs."""

    name: str
    score_batch: ScoreFn
    cost: str  # what one batch costs, in forward/backward passes
    edges: str  # the method whose edge definition (circuits/edges.py) gives this one's edges
    options: type[Options] = Options  # the options it takes
    signed: bool = True  # False: the method scores magnitudes (|effect|) only
    resolve_rules: RuleResolver | None = None  # the rules it applies (None: takes no rules)
    # False: it recomputes attention from the residual stream and cannot yet take a node inside
    # attention (an attn_z site, hook_z before W_O)
    attn_z: bool = True

    @property
    def takes_rules(self) -> bool:
        return self.resolve_rules is not None

    @property
    def option_names(self) -> tuple[str, ...]:
        """The options of this method beyond those every method takes (e.g. ("steps",))."""
        return tuple(f.name for f in fields(self.options) if f.name not in _COMMON)

    def make_options(self, **given: Any) -> Options:
        """This method's options from keyword arguments; None means the default. An option the
        method does not take is an error naming the methods that take it."""
        own = {f.name for f in fields(self.options)}
        for key, value in given.items():
            if value is not None and key not in own:
                raise ValueError(
                    f"{key}= is not an option of method {self.name!r} (its options: "
                    f"{', '.join(self.option_names) or 'none'}); drop {key}="
                )
        return self.options(**{k: v for k, v in given.items() if v is not None and k in own})
