"""Import-layer check (DESIGN.md, "Data flow: one direction"): data flows tasks -> saes ->
circuits -> evaluation -> CLI, and no module imports one from a layer to its right.

    layer          may import (besides itself)
    tasks          nothing of ours
    saes           tasks
    circuits       saes, tasks              (circuits.cli excluded: it is the CLI layer)
    evaluation     circuits, saes, tasks
    circuits.cli   everything               (the module circuits/cli.py or the package
                                             circuits/cli/, and circuits/__main__.py)

"Ours" are the top-level packages circuits, saes, tasks, evaluation. Every import statement
counts: top-level, inside functions, under TYPE_CHECKING, and relative ones (`from .pairs ...`).
Usage: python3 scripts/check_layers.py [ROOT]; prints `file:line: <layer> imports <other>` per
violation and exits 1 if there is any. Standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CLI = "circuits.cli"
ALLOWED = {
    "tasks": set(),
    "saes": {"tasks"},
    "circuits": {"saes", "tasks"},
    "evaluation": {"circuits", "saes", "tasks"},
    CLI: {"circuits", "saes", "tasks", "evaluation"},
}
PACKAGES = ("tasks", "saes", "circuits", "evaluation")


def layer(module: str) -> str | None:
    """The layer of a dotted module name, or None if it is not ours."""
    if module in (CLI, "circuits.__main__") or module.startswith(CLI + "."):
        return CLI
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names one import statement in `module` brings in (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
        base = ".".join(parts + ([base] if base else []))
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


def violations(root: Path) -> list[str]:
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            is_package = path.name == "__init__.py"
            module = ".".join(rel.with_suffix("").parts[: -1 if is_package else None])
            own = layer(module) or package
            for node in ast.walk(ast.parse(path.read_text(), filename=str(rel))):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                for other in dict.fromkeys(map(layer, imported(node, module, is_package))):
                    if other is not None and other != own and other not in ALLOWED[own]:
                        found.append(f"{rel}:{node.lineno}: {own} imports {other}")
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    problems = violations(root)
    print("\n".join(problems) if problems else "import layers: ok")
    sys.exit(1 if problems else 0)
