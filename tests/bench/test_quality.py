"""bench/quality.py's rows: every one a recipe training still accepts, the K = 20 row the preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.by_path import load_module
from training.cli import PRESETS
from training.config import ContrastiveConfig

ROOT = Path(__file__).resolve().parents[2]
quality = load_module(ROOT / "bench" / "quality.py", "bench_quality")


@pytest.mark.parametrize("quick", [True, False])
def test_every_row_is_a_model_config_training_accepts(quick: bool) -> None:
    rows = quality.recipes(quick)
    assert len({row.name for row in rows}) == len(rows)
    for row in rows:
        config = quality.recipe_config(row)
        assert (config.kind, config.latent_dim, config.epochs) == (row.model, row.latent,
                                                                    row.epochs)
        if isinstance(config, ContrastiveConfig):
            assert config.backbone.batch_size == row.batch_size


def test_the_k20_row_trains_the_preset_training_declares() -> None:
    name = "contrastive-crop1-relight-hog-graph20-e30-split10-whiten25-consensus8"
    rows = {row.name: row for row in quality.recipes(False)}
    assert rows[name] == next(row for row in quality.recipes(True) if row.name == name)
    row = rows[name]
    preset = dict(PRESETS["contrastive-graph20-consensus"])
    assert preset.pop("clusters") == 20  # the protocol fits K = 10 and K = 20 itself
    assert (row.model, row.epochs, row.batch_size) == (preset.pop("model"),
                                                       preset.pop("epochs"), 256)
    assert row.extra == preset
    # The row as it was spelled out before it read the preset: the saved runs stay its own.
    assert row == dataclasses.replace(row, latent=10, extra={
        "min_crop": 1.0, "view_relight": True, "graph_communities": 20, "hog_weight": 0.5,
        "coarse_communities": 10, "graph_whitening": 0.25, "community_searches": 8})


def test_a_full_rebuild_keeps_every_committed_row() -> None:
    """The summary rebuilt from the saved runs, as a full `make bench-quality` would (live
    rows, then the retired rows' saved runs), holds exactly the committed rows and figures:
    retiring an option does not drop its measured row from the table."""
    import json

    results = ROOT / "bench" / "results"
    committed = json.loads((results / "quality.json").read_text())["summary"]
    runs = results / "runs"
    seeds = [0, 1, 2]
    rows = [json.loads(path.read_text()) for row in quality.recipes(False) for seed in seeds
            if (path := quality.run_file(runs, row, seed)).exists()]
    rows += quality.retired_runs(runs, seeds)
    rebuilt = {entry["recipe"]: entry for entry in quality.summarise(rows)}
    assert rebuilt == {entry["recipe"]: entry for entry in committed}
    assert set(quality.RETIRED_ROWS) <= set(rebuilt)
    assert not set(quality.RETIRED_ROWS) & {row.name for row in quality.recipes(False)}
