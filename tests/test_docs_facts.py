"""What docs/ states that the code also states, checked against the code: the settings table
(service/settings.py), the metric names (service/metrics.py), the error tables
(service/errors.py), the manifest's fields (service/bundle.py), the training presets
(training/cli.py), and docs/architecture.md's layout (the modules on disk) and dependency rules
(the imports in the source). A setting, metric, error, field, preset, module or import cannot
be added, renamed or dropped against what a page says without the page following."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from service.bundle import ClusterStats, InputSpec, Manifest, TrainingInfo
from service.errors import ERROR_CLASSES, ServiceError
from service.metrics import Metrics
from service.settings import Settings
from tests.imports import imports, modules
from training.cli import PRESETS, preset_options

ROOT = Path(__file__).resolve().parents[1]
SERVING = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
BUNDLE = (ROOT / "docs" / "bundle.md").read_text(encoding="utf-8")
TRAINING = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
QUALITY = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
PACKAGES = ("training", "service")
# The installable client (clients/python): a package of its own, held to its rules too.
CLIENT_ROOT = ROOT / "clients" / "python"
CLIENT_PACKAGE = "aecluster_client"


def _section(text: str, heading: str) -> str:
    """``heading``'s section: up to the next heading of its level or above (the page title
    aside: a shell comment in a code block looks like one)."""
    start = text.index(f"\n{heading}\n")
    level = len(heading) - len(heading.lstrip("#"))
    end = re.compile(rf"\n#{{2,{level}}} ").search(text, start + 1)
    return text[start:] if end is None else text[start:end.start()]


def _settings_rows() -> dict[str, tuple[str, str, str]]:
    """Variable name -> (flag, default cell, meaning) of docs/serving.md's settings table."""
    rows = re.findall(r"^\| `(AEC_\w+)` / `(--[\w-]+)` \| (.*?) \| (.*) \|$",
                      _section(SERVING, "## Settings"), flags=re.MULTILINE)
    return {variable: (flag, default, meaning) for variable, flag, default, meaning in rows}


def _default_cell(default: Any) -> set[str]:
    if default is None:
        return {"unset", "true with keys"}  # require_signature: None means "true with keys"
    if default == "":
        return {"(empty)"}
    return {f"`{default}`"}


def test_the_settings_table_has_a_row_per_setting() -> None:
    rows = _settings_rows()
    assert set(rows) == {f"AEC_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_each_setting_row_says_what_the_code_says(name: str) -> None:
    field = Settings.model_fields[name]
    flag, default, meaning = _settings_rows()[f"AEC_{name.upper()}"]
    assert flag == "--" + name.replace("_", "-")
    assert default in _default_cell(field.default)
    assert meaning == field.description


METRICS_SECTIONS = pytest.mark.parametrize(("page", "heading"), [
    ("serving.md", "## Metrics"), ("architecture.md", "### Metrics")])


def _page(name: str) -> str:
    return {"serving.md": SERVING, "architecture.md": ARCHITECTURE}[name]


@METRICS_SECTIONS
def test_the_metrics_listed_are_the_ones_exported(page: str, heading: str) -> None:
    listed = set(re.findall(r"`(aecluster_\w+)(?:\{[\w,]*\})?`", _section(_page(page), heading)))
    # prometheus_client names a counter's family without the _total its samples carry. The
    # process, platform and GC collectors' series are prometheus_client's, named in prose.
    exported = {family.name + ("_total" if family.type == "counter" else "")
                for family in Metrics().registry.collect()
                if family.name.startswith("aecluster_")}
    assert listed == exported


@METRICS_SECTIONS
def test_the_labels_listed_are_the_ones_exported(page: str, heading: str) -> None:
    metrics = Metrics()
    for name, labels in re.findall(r"`(aecluster_\w+)\{([\w,]*)\}`",
                                   _section(_page(page), heading)):
        collector = next(c for c in vars(metrics).values()
                         if getattr(c, "_name", None) == name.removesuffix("_total"))
        assert tuple(labels.split(",")) == collector._labelnames, name


def _fields_in(cell: str) -> set[str]:
    return set(re.findall(r"`(\w+)`", cell))


def _manifest_table() -> dict[str, str]:
    """Backticked names of the first cell (a row may name several) -> the meaning cell."""
    table: dict[str, str] = {}
    for names, meaning in re.findall(r"^\| (`[^|]+`) \| (.*) \|$",
                                     _section(BUNDLE, "## The manifest"), flags=re.MULTILINE):
        for name in _fields_in(names):
            table[name] = meaning
    return table


def test_the_manifest_table_lists_every_field() -> None:
    assert set(_manifest_table()) == set(Manifest.model_fields)


@pytest.mark.parametrize(("field", "model"), [("input", InputSpec), ("training", TrainingInfo)])
def test_the_manifest_table_names_every_nested_field(field: str, model: type[BaseModel]) -> None:
    assert set(model.model_fields) <= _fields_in(_manifest_table()[field])


def test_the_cluster_stats_row_names_every_statistic() -> None:
    assert set(ClusterStats.model_fields) <= _fields_in(_manifest_table()["cluster_stats"])


def _documented_presets() -> dict[str, str]:
    """Preset name -> the options docs/training.md's presets table says it stands for."""
    return dict(re.findall(r"^\| `([\w-]+)` \| `([^`]+)` \|", _section(TRAINING, "## Presets"),
                           flags=re.MULTILINE))


def _retired_presets() -> set[str]:
    retired = _section(QUALITY, "## Retired: measured, then removed")
    return set(re.findall(r"`--preset ([\w-]+)`", retired))


def test_each_documented_preset_stands_for_what_the_cli_sets() -> None:
    documented = _documented_presets()
    assert documented
    for name, options in documented.items():
        assert name in PRESETS, name
        assert options == preset_options(name), name


def test_every_preset_is_documented_or_recorded_as_retired() -> None:
    documented, retired = set(_documented_presets()), _retired_presets()
    assert not documented & retired
    assert set(PRESETS) <= documented | retired


def _declared_errors() -> dict[str, tuple[int, str]]:
    """Error class -> (HTTP status, gRPC code) of service/errors.py: its table of classes and
    every subclass of ServiceError, so a class left out of the table is still seen."""
    classes, pending = set(ERROR_CLASSES), [ServiceError]
    while pending:
        subclasses = pending.pop().__subclasses__()
        classes.update(subclasses)
        pending += subclasses
    return {cls.__name__: (int(cls.http_status), cls.grpc_code) for cls in classes}


def _error_rows(text: str) -> list[tuple[str, ...]]:
    """(class, if the table names it; HTTP status; gRPC code) of every error table row."""
    return re.findall(r"^\|[^|\n]+\|(?: `(\w+)` \|)? (\d{3})\b[^|\n]* \| ([A-Z_]+) \|$", text,
                      flags=re.MULTILINE)


@pytest.mark.parametrize(("page", "heading"), [("serving.md", "## Errors"),
                                               ("architecture.md", "### Errors")])
def test_each_error_table_has_the_statuses_the_code_declares(page: str, heading: str) -> None:
    documented = sorted((int(status), code)
                        for _, status, code in _error_rows(_section(_page(page), heading)))
    assert documented == sorted(_declared_errors().values())


def test_the_architecture_error_table_names_each_class_with_its_statuses() -> None:
    rows = _error_rows(_section(ARCHITECTURE, "### Errors"))
    documented = {name: (int(status), code) for name, status, code in rows}
    assert len(documented) == len(rows)  # no class twice
    assert documented == _declared_errors()


def _braces(path: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py``."""
    match = re.fullmatch(r"(.*)\{([^{}]*)\}(.*)", path)
    return [path] if match is None else [match[1] + part + match[3]
                                         for part in match[2].split(",")]


def _layout_paths() -> list[str]:
    """Every path the first cells of docs/architecture.md's layout tables name."""
    cells = re.findall(r"^\| ([^|\n]*`[^|\n]*) \|", _section(ARCHITECTURE, "## Layout"),
                       flags=re.MULTILINE)
    return [path for cell in cells for named in re.findall(r"`([^`]+)`", cell)
            for path in _braces(named)]


def test_every_path_the_layout_names_exists() -> None:
    named = _layout_paths()
    assert "training/job.py" in named and "service/rest/tfjson.py" in named
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"docs/architecture.md's layout names paths that do not exist: {missing}"


def test_every_module_is_in_the_layout() -> None:
    on_disk = {path.relative_to(ROOT).as_posix() for path in modules(*PACKAGES).values()
               if path.name != "__init__.py"}
    missing = sorted(on_disk - set(_layout_paths()))
    assert not missing, f"docs/architecture.md's layout does not name: {missing}"


Rule = tuple[list[str], list[str], list[str]]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([\w.]+)`", cell)


def _rules() -> list[Rule]:
    """(these modules, import nothing from, except) of every row of the dependency table."""
    rules = []
    for line in _section(ARCHITECTURE, "## Dependency direction").splitlines():
        if line.startswith("| `"):
            subjects, forbidden, allowed, _why = line.strip().strip("|").split("|")
            rules.append((_names(subjects), _names(forbidden), _names(allowed)))
    return rules


def _within(name: str, prefixes: list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _known() -> dict[str, Path]:
    """Every module of the packages and of the installable client."""
    return {**modules(*PACKAGES), **modules(CLIENT_PACKAGE, root=CLIENT_ROOT)}


def _import_graph() -> dict[str, set[str]]:
    """Every module of the packages and the client -> every name it imports, wherever in
    the file."""
    known = _known()
    return {name: imports(path, known) for name, path in known.items()}


def _breaches(rule: Rule, graph: dict[str, set[str]]) -> list[str]:
    subjects, forbidden, allowed = rule
    return sorted(f"{module} imports {name}" for module, names in graph.items()
                  if _within(module, subjects) for name in names
                  if _within(name, forbidden) and not _within(name, allowed))


def test_the_dependency_rules_hold() -> None:
    rules, graph = _rules(), _import_graph()
    assert len(rules) >= 5
    breaches = [breach for rule in rules for breach in _breaches(rule, graph)]
    assert not breaches, "docs/architecture.md's dependency rules are broken: " + "; ".join(
        breaches)


def test_the_dependency_rules_name_what_exists() -> None:
    # A rule about a module that was renamed away would hold for nothing.
    known = _known()
    for subjects, forbidden, allowed in _rules():
        assert subjects and forbidden, (subjects, forbidden)
        for name in subjects + forbidden + allowed:
            if name.split(".")[0] in (*PACKAGES, CLIENT_PACKAGE):
                assert name in known, f"{name}: no such module"
            else:
                assert importlib.util.find_spec(name) is not None, f"{name}: not installed"


def test_a_broken_rule_is_reported() -> None:
    graph = _import_graph()
    assert "training.job imports training.recipes.contrastive" in _breaches(
        (["training.job"], ["training.recipes"], []), graph)
    assert _breaches((["training.job"], ["training.recipes"], ["training.recipes"]), graph) == []
    assert _breaches((["training"], ["tensorflow"], []), graph)  # external names too
    # The client is in the graph: its imports are seen (and it does import grpc).
    assert "aecluster_client._grpc imports grpc" in _breaches(
        (["aecluster_client"], ["grpc"], []), graph)


def _loaded_on_import(module: str) -> set[str]:
    """The names importing ``module`` imports from outside the packages: its parent packages'
    and its own module-level imports, followed through every project module they reach."""
    known = modules(*PACKAGES)
    seen: set[str] = set()
    outside: set[str] = set()
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        for name in (".".join(parts[:depth]) for depth in range(1, len(parts) + 1)):
            if name not in known or name in seen:
                continue
            seen.add(name)
            for imported in imports(known[name], known, module_level=True):
                if imported.split(".")[0] in PACKAGES:
                    pending.append(imported)
                else:
                    outside.add(imported)
    return outside


def _lazy_command_lines() -> list[str]:
    """The modules docs/architecture.md says load no TensorFlow when imported."""
    sentence = re.search(r"The command lines import lazily:\s+what\s(.*?)\simport\s+at\s+"
                         r"module\s+level", _section(ARCHITECTURE, "## Dependency direction"),
                         flags=re.DOTALL)
    assert sentence is not None
    return _names(sentence.group(1))


def test_the_command_lines_load_no_tensorflow() -> None:
    command_lines = _lazy_command_lines()
    assert command_lines
    for module in command_lines:
        loaded = _loaded_on_import(module)
        assert not [name for name in loaded if _within(name, ["tensorflow", "keras"])], module


def test_the_module_level_walk_follows_packages() -> None:
    assert "keras" in _loaded_on_import("training.job")  # its own import
    assert "prometheus_client" in _loaded_on_import("service.batcher")  # via service.metrics
    # service.rest.encoding imports no FastAPI itself; its package's __init__ does.
    assert "fastapi" in _loaded_on_import("service.rest.encoding")
    assert "tensorflow" not in _loaded_on_import("service.bundle")
