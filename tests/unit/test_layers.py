"""The house's import rules, read from the source: the runtime imports only itself, the
packager nothing of the controller, and transports nothing of the packager."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

#: folder -> module prefixes (absolute) its files must never import
FORBIDDEN = {
    "runtime": ("orchestrator.packager", "orchestrator.transports", "orchestrator.cli", "orchestrator.scheduler",
                "docker", "paramiko", "rich", "pydantic"),
    "packager": ("orchestrator.transports", "orchestrator.cli", "orchestrator.scheduler", "orchestrator.spec",
                 "orchestrator.inventory", "docker", "paramiko", "rich", "pydantic"),
    "transports": ("orchestrator.packager",),
}


def imported(path: Path) -> list[str]:
    """Absolute names of what a module imports (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_what_the_house_rules_allow(folder):
    broken = [f"{path.relative_to(PACKAGE.parent)} imports {name}"
              for path in sorted((PACKAGE / folder).rglob("*.py")) for name in imported(path)
              if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder])]
    assert broken == []
