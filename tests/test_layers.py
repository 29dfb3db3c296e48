"""scripts/check_layers.py: the repository keeps its import layers, and the check catches
violations (inside functions, under TYPE_CHECKING, relative, into the CLI) in a small tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "check_layers.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), str(root)], capture_output=True, text=True, check=False
    )


def test_repository_keeps_its_layers() -> None:
    result = check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


TREE = {
    # allowed: relative imports within tasks, each layer importing its left, the CLI everything
    "tasks/__init__.py": "from . import pairs\nfrom .pairs import Dataset\n",
    "tasks/pairs.py": "import json\n",
    "saes/splice.py": "from tasks.pairs import Dataset\n",
    "circuits/scores.py": "import saes.splice\nfrom tasks import pairs\n",
    "circuits/cli/__init__.py": "from evaluation import sweep\nfrom .commands import main\n",
    "circuits/cli/commands.py": "import evaluation.sweep\nfrom circuits import scores\n",
    "circuits/__main__.py": "from circuits.cli import main\n",
    "evaluation/sweep.py": "from circuits.scores import Scores\nfrom saes import splice\n",
    # violations
    "tasks/metrics.py": "import torch\n\n\ndef f():\n    from saes import splice\n",
    "saes/loader.py": (
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from circuits.scores import Scores\n"
    ),
    "circuits/forward.py": "import evaluation.sweep as sweep\n",
    "circuits/methods/__init__.py": "from ..cli import main\n",
    "circuits/render.py": "from circuits import cli\n",
    "evaluation/plot.py": "from circuits.cli.commands import main\n",
}
EXPECTED = {
    "tasks/metrics.py:5: tasks imports saes",
    "saes/loader.py:4: saes imports circuits",
    "circuits/forward.py:1: circuits imports evaluation",
    "circuits/methods/__init__.py:1: circuits imports circuits.cli",
    "circuits/render.py:1: circuits imports circuits.cli",
    "evaluation/plot.py:1: evaluation imports circuits.cli",
}


def test_check_reports_each_violation(tmp_path: Path) -> None:
    for name, text in TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = check(tmp_path)
    assert result.returncode == 1
    assert set(result.stdout.splitlines()) == EXPECTED


def test_cli_module_form_may_import_everything(tmp_path: Path) -> None:
    (tmp_path / "circuits").mkdir()
    (tmp_path / "circuits" / "cli.py").write_text("from evaluation import sweep\n")
    assert check(tmp_path).returncode == 0
