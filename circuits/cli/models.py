"""``circuits models [MODEL]``: which models load by name, and which sae_lens releases fit one.

    circuits models                the named models, and the models sae_lens has releases for
    circuits models gpt2           the releases made for gpt2 (any name or alias of it)
    circuits models --all          every model transformer_lens knows (each loads by name)

Read from sae_lens' directory and transformer_lens' model list; nothing is downloaded and no
run directory is written.
"""

from __future__ import annotations

import argparse

from circuits.cli.common import UsageError
from saes.loader import DEFAULT_DICTIONARIES, NOT_A_SITE
from saes.names import DESCRIPTIONS, MODELS, identity, official, resolve_model
from saes.names import transformer_lens_models as tl_models
from saes.releases import models_with_releases, releases_for, summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="the models that load by name, and the releases for one")
    m.add_argument("model", nargs="?", default=None,
                   help="list the sae_lens releases made for this model (a name or alias)")
    m.add_argument("--all", action="store_true",
                   help="list every model transformer_lens knows (each loads by name)")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.model is not None:
        print(releases_text(args.model))
    elif args.all:
        with_releases = {identity(m) for m in models_with_releases()}
        for name in tl_models():
            mark = "  (sae_lens releases)" if name.lower() in with_releases else ""
            print(name + mark)
    else:
        print(overview())


def overview() -> str:
    lines = ["Named models (each with its own loader):"]
    lines += [f"  {name:<20} {DESCRIPTIONS[name]}" for name in MODELS]
    lines += ["", "Besides these, any model transformer_lens knows loads by name or alias "
              "(`circuits models --all`), and any local Hugging Face checkpoint folder.", "",
              "Models sae_lens has releases for (`circuits models MODEL` lists them):"]
    for model, releases in models_with_releases().items():
        known = official(model)
        loads = "" if known else ("  (transformer_lens knows no such name: load a local "
                                  "checkpoint folder named after it)")
        alias = f" = {known}" if known and known != model else ""
        lines.append(f"  {model}{alias}: {len(releases)} release(s){loads}")
    return "\n".join(lines)


def releases_text(name: str) -> str:
    try:
        model = resolve_model(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    mine = releases_for(model.name) if model.name != "organism" else []
    head = f"{model.name} ({model.kind}{': ' + model.source if model.source else ''})"
    lines = [head]
    if model.name in DESCRIPTIONS:
        lines.append(f"  {DESCRIPTIONS[model.name]}")
    if model.name in DEFAULT_DICTIONARIES:
        lines.append(f"  default dictionaries: {DEFAULT_DICTIONARIES[model.name]}")
    if not mine:
        lines.append("  sae_lens has no release for it; use --dictionaries neurons (the neuron "
                     "baseline) or none (component level)" if model.name != "organism" else
                     "  its own dictionaries are shipped with it")
        return "\n".join(lines)
    lines.append(f"  {len(mine)} sae_lens release(s), for --dictionaries RELEASE[:VARIANT]:")
    for release in mine:
        s = summary(release)
        refused = sorted({NOT_A_SITE[k].split(";")[0].split(" (")[0] for k in s.hook_kinds
                          if k in NOT_A_SITE})
        layers = f"layers {_span(s.layers)}" if s.layers else "layers ?"
        l0 = "" if s.l0 is None else ", stated L0 " + (
            f"{s.l0[0]:g}" if s.l0[0] == s.l0[1] else f"{s.l0[0]:g}-{s.l0[1]:g}")
        variants = f", {len(s.variants)} variants (e.g. {s.variants[0]})" if s.variants else ""
        note = f"  REFUSED: {'; '.join(refused)}" if refused else ""
        lines.append(f"  {release}: {s.n} dictionaries at {', '.join(s.hook_kinds)}, {layers}"
                     f"{l0}{variants}; {s.loader} format{note}")
    return "\n".join(lines)


def _span(layers: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 5) -> '0-3, 5'."""
    runs: list[list[int]] = []
    for n in layers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
