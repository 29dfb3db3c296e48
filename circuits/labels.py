"""A reader's labels of features: a file of (site, feature, label) rows, put on a circuit's nodes.

A labels file is CSV with the header ``site,feature,label`` or JSON, a list of objects
``{"site": ..., "feature": ..., "label": ...}``. ``read_labels`` checks its structure;
``apply_labels`` checks each row against the circuit (a site it scores, a feature index of that
site's dictionary) and sets the ``label`` attribute of the circuit's nodes of that feature, at
every position of a per-position circuit. Any bad row is a ValueError naming the file, the row
and the fix. The SVG, the HTML view and the export show the labels.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from circuits.circuit import Circuit

HEADER = ("site", "feature", "label")
FORMATS = ('CSV with the header "site,feature,label" or a JSON list of {"site": ..., '
           '"feature": ..., "label": ...}')


@dataclass(frozen=True)
class Label:
    site: str
    feature: int
    label: str
    row: str  # where it was read: "FILE line N" (CSV) or "FILE item N" (JSON), for errors


def read_labels(path: str | Path) -> list[Label]:
    """The rows of a labels file (.json: JSON, anything else: CSV)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist; pass {FORMATS}")
    text = path.read_text(encoding="utf-8")
    rows = _json_rows(path, text) if path.suffix == ".json" else _csv_rows(path, text)
    labels: list[Label] = []
    seen: dict[tuple[str, int], str] = {}
    for where, record in rows:
        site, feature, label = (record.get(k) for k in HEADER)
        if not isinstance(site, str) or not site:
            raise ValueError(f"{where}: site {site!r} is not a site name (e.g. resid_1)")
        if isinstance(feature, str) and feature.strip().isdigit():
            feature = int(feature)
        if not isinstance(feature, int) or isinstance(feature, bool) or feature < 0:
            raise ValueError(f"{where}: feature {feature!r} is not a feature index (an "
                             "integer >= 0; error nodes take no labels)")
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}: the label of {site}/{feature} is empty; give it text")
        if (site, feature) in seen:
            raise ValueError(f"{where}: {site}/{feature} is labelled again (first at "
                             f"{seen[site, feature]}); give each feature one label")
        seen[site, feature] = where
        labels.append(Label(site, feature, label.strip(), where))
    return labels


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != HEADER:
        raise ValueError(f"labels file {path} has the header {reader.fieldnames}; pass {FORMATS}")
    return [(f"{path} line {reader.line_num}", row) for row in reader]


def _json_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"labels file {path} is not JSON ({err.msg}); pass {FORMATS}") from err
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"labels file {path} is not a list of objects; pass {FORMATS}")
    return [(f"{path} item {i}", item) for i, item in enumerate(data)]


def check_labels(labels: list[Label], d_sae: Mapping[str, int], what: str = "circuit") -> None:
    """Each row names a site of ``d_sae`` (site -> its dictionary's width) and a feature below
    that width; else a ValueError naming the row. ``what`` names whose sites they are."""
    if not d_sae and labels:
        raise ValueError(f"{labels[0].row}: the {what} has no features (a model without "
                         "dictionaries); there is nothing to label")
    for label in labels:
        if label.site not in d_sae:
            raise ValueError(f"{label.row}: site {label.site!r} is not one of the {what}'s "
                             f"sites {list(d_sae)}")
        if label.feature >= d_sae[label.site]:
            raise ValueError(f"{label.row}: feature {label.feature} is outside the dictionary "
                             f"of site {label.site!r} (features 0 to {d_sae[label.site] - 1})")


def apply_labels(circuit: Circuit, labels: list[Label]) -> int:
    """Set ``label`` on the circuit's nodes of each labelled feature; returns how many nodes got
    one. A row naming a site the circuit does not score, or a feature outside its dictionary, is
    an error (`check_labels`, for every row before any label is set)."""
    meta = circuit.meta
    check_labels(labels, {} if meta.components_only else
                 {site: shape[-1] - 1 for site, shape in meta.site_shapes.items()})
    by_feature = {(label.site, label.feature): label.label for label in labels}
    labelled = 0
    for _, attrs in circuit.graph.nodes(data=True):
        text = by_feature.get((attrs["site"], attrs["feature"]))
        if attrs["role"] == "feature" and text is not None:
            attrs["label"] = text
            labelled += 1
    return labelled
