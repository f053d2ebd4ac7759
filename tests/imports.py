"""What the project's modules import, read from their source with ``ast`` (nothing is imported).

Reading the source rather than importing sees every import: one under ``if TYPE_CHECKING:``
or inside a function never runs at import time, yet it still ties two modules together.
``module_level=True`` keeps only the imports that do run when the module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(*packages: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module and package under ``packages`` (generated code
    left out), the packages being folders of ``root``."""
    found = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "_generated" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``; with ``module_level`` only those run on import:
    none inside a function or under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                         | ast.Lambda):
            continue
        elif module_level and isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def imports(path: Path, known: dict[str, Path], *, module_level: bool = False) -> set[str]:
    """Every dotted name ``path`` imports. ``from pkg import name`` counts as ``pkg.name``
    when that is a module of ``known``, else as ``pkg``."""
    names = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8"), str(path)),
                            module_level):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        assert node.level == 0 and node.module, f"{path}: relative import"
        for alias in node.names:
            name = f"{node.module}.{alias.name}"
            names.add(name if name in known else node.module)
    return names
