"""``plot_sweep``: faithfulness and completeness against the number of nodes, one line per method
(the RelP paper's Figure 3 for this toolkit), saved as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

NEEDED = ("method", "n_nodes", "faithfulness", "completeness")


def plot_sweep(
    table: pd.DataFrame,
    out: str | Path | None = None,
    *,
    facet: str | None = None,
    title: str | None = None,
):
    """Two rows of panels (faithfulness, completeness) against n_nodes (log x), one line per
    method; with ``facet`` (a column such as "task"), one column of panels per value.

    out: a path without (or with any) suffix; writes ``out.png`` and ``out.svg``. Returns the
    matplotlib Figure.
    """
    missing = [c for c in NEEDED + ((facet,) if facet else ()) if c not in table.columns]
    if missing:
        raise ValueError(
            f"sweep table lacks columns {missing}; pass the DataFrame evaluation.sweep returns"
        )
    facets = list(dict.fromkeys(table[facet])) if facet else [None]
    methods = list(dict.fromkeys(table["method"]))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(
        2, len(facets), figsize=(3.6 * len(facets) + 0.8, 6.2), squeeze=False, sharex="col"
    )
    for j, value in enumerate(facets):
        part = table if value is None else table[table[facet] == value]
        for i, column in enumerate(("faithfulness", "completeness")):
            ax = axes[i, j]
            for method in methods:
                rows = part[part["method"] == method].sort_values("n_nodes")
                if rows.empty:
                    continue
                ax.plot(rows["n_nodes"], rows[column], marker=".", label=method,
                        color=colors[method])
            ax.set_xscale("symlog", linthresh=1)
            ax.axhline(1.0, color="grey", lw=0.6, ls=":")
            ax.axhline(0.0, color="grey", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(column)
            if i == 1:
                ax.set_xlabel("nodes in circuit")
            if i == 0 and value is not None:
                ax.set_title(str(value))
    axes[0, -1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        stem = out.with_suffix("") if out.suffix in (".png", ".svg") else out
        for suffix in (".png", ".svg"):
            fig.savefig(stem.with_name(stem.name + suffix), dpi=150)
    return fig
