"""No pickle-capable load anywhere in the repository (benchmarks and tests included): tensors
travel as safetensors, everything else as JSON. A pickle file runs code when loaded."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# torch.load without weights_only=True, pickle/dill/joblib, numpy with allow_pickle=True
UNSAFE = re.compile(
    r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)|^\s*(import|from)\s+(pickle|dill|"
    r"joblib|cloudpickle)\b|allow_pickle\s*=\s*True",
    re.MULTILINE,
)


def unsafe_loads(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or (
                path == Path(__file__).resolve()):  # this file spells the patterns
            continue
        text = path.read_text(encoding="utf-8")
        for match in UNSAFE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            hits.append(f"{path.relative_to(root)}:{line}: {match.group(0).strip()}")
    return hits


def test_the_repository_loads_nothing_with_pickle():
    assert unsafe_loads(REPO) == []


def test_the_check_finds_a_pickle_load(tmp_path):
    (tmp_path / "a.py").write_text("import torch\nx = torch.load('f.pt')\n"
                                   "y = torch.load('g.pt', weights_only=True)\n")
    (tmp_path / "b.py").write_text("import pickle\n")
    assert [h.split(":")[0] + ":" + h.split(":")[1] for h in unsafe_loads(tmp_path)] == [
        "a.py:2", "b.py:1"]
