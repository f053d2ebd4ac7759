"""bench/quality.py's rows: every one a recipe training still accepts, the K = 20 row the preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.by_path import load_module
from training.cli import DEFAULT_MODEL, PRESETS, build_parser, model_options
from training.config import ContrastiveConfig, model_config

ROOT = Path(__file__).resolve().parents[2]
quality = load_module(ROOT / "bench" / "quality.py", "bench_quality")


@pytest.mark.parametrize("quick", [True, False])
def test_every_row_is_a_model_config_training_accepts(quick: bool) -> None:
    rows = quality.recipes(quick)
    assert len({row.name for row in rows}) == len(rows)
    for row in rows:
        config = quality.recipe_config(row)
        # A setting the row leaves out (None) is the recipe's own default.
        default = model_config(row.model)
        assert config.kind == row.model
        assert config.latent_dim == (default.latent_dim if row.latent is None else row.latent)
        assert config.epochs == (default.epochs if row.epochs is None else row.epochs)
        if isinstance(config, ContrastiveConfig):
            assert isinstance(default, ContrastiveConfig)
            assert config.backbone.batch_size == (
                default.backbone.batch_size if row.batch_size is None else row.batch_size)


@pytest.mark.parametrize("name, dataset", [("default", "fashion-mnist"),
                                           ("digits-default", "digits")])
def test_the_default_rows_train_what_train_does_without_model_options(name: str,
                                                                       dataset: str) -> None:
    rows = {row.name: row for row in quality.recipes(False)}
    row = rows[name]
    assert row.dataset == dataset and row.extra == {}
    # `train --dataset D` with nothing else: the parser's model, its config from no flags.
    args = build_parser().parse_args(["train", "--dataset", dataset, "--out", "x"])
    assert row.model == args.model == DEFAULT_MODEL
    assert quality.recipe_config(row) == model_config(args.model, model_options(args))
    assert rows["default"] in quality.recipes(True)  # QUICK=1 runs it too


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
