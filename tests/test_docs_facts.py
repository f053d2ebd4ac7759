"""What docs/ states that the code also states, checked against the code: the settings table
(service/settings.py), the metric names (service/metrics.py), the manifest's fields
(service/bundle.py) and the training presets (training/cli.py). A setting, metric, field or
preset cannot be added, renamed or dropped without its page following."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from service.bundle import ClusterStats, InputSpec, Manifest, TrainingInfo
from service.metrics import Metrics
from service.settings import Settings
from training.cli import PRESETS, preset_options

ROOT = Path(__file__).resolve().parents[1]
SERVING = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
BUNDLE = (ROOT / "docs" / "bundle.md").read_text(encoding="utf-8")
TRAINING = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
QUALITY = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


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


def test_the_metrics_listed_are_the_ones_exported() -> None:
    listed = set(re.findall(r"`(aecluster_\w+)(?:\{[\w,]*\})?`", _section(SERVING, "## Metrics")))
    # prometheus_client names a counter's family without the _total its samples carry.
    exported = {family.name + ("_total" if family.type == "counter" else "")
                for family in Metrics().registry.collect()}
    assert listed == exported


def test_the_labels_listed_are_the_ones_exported() -> None:
    metrics = Metrics()
    for name, labels in re.findall(r"`(aecluster_\w+)\{([\w,]*)\}`",
                                   _section(SERVING, "## Metrics")):
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
