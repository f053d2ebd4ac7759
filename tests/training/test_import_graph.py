"""No import cycle inside the training package.

Read from the source with ``ast`` rather than by importing: a cycle through an import under
``if TYPE_CHECKING:`` or inside a function never fails at import time, yet it still ties two
modules together (``training.loop`` and ``training.models.classifier`` were one such pair).
Every ``import`` and ``from ... import`` of a ``training`` module counts, wherever it is.
"""

from __future__ import annotations

import pytest

from tests.imports import imports, modules


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` meets, each as a closed path."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return cycles


def _graph() -> dict[str, set[str]]:
    """Every training module -> the training modules it imports."""
    known = modules("training")
    return {name: (imports(path, known) & set(known)) - {name} for name, path in known.items()}


def test_the_training_package_has_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_the_imports() -> None:
    graph = _graph()
    assert {"training.models", "training.loop", "training.recipes.contrastive"} <= set(graph)
    assert "training.models.classifier" in graph["training.models"]
    assert "training.loop" in graph["training.models.classifier"]
    # `from training import knn_graph` and `from training.recipes import communities` name
    # the modules themselves.
    assert {"training.recipes.communities", "training.knn_graph"} \
        <= graph["training.recipes.contrastive"]
    # Imports inside functions count too (the CLI imports the job lazily).
    assert "training.job" in graph["training.cli"]


@pytest.mark.parametrize(("graph", "cycle"), [
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"b", "d"}, "d": set()}, ["b", "c", "b"]),
])
def test_a_cycle_is_found(graph: dict[str, set[str]], cycle: list[str]) -> None:
    assert _cycles(graph) == [cycle]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
