"""training.config: one declaration per model option gives the flag, the field and the check."""

from __future__ import annotations

from typing import Any

import pytest

from training.cli import build_parser, model_options
from training.config import (
    MODEL_KINDS,
    AutoencoderConfig,
    ContrastiveConfig,
    annotation_kind,
    flags,
    flat,
    model_config,
)
from training.errors import ConfigError


def _other_value(entry: Any, kind: str) -> tuple[list[str], Any]:
    """A value unlike the default for ``kind``: (the command-line words, the parsed value)."""
    default = entry.defaults[kind]
    form = annotation_kind(entry.annotation)
    if form == "bool":
        return [("--no-" if default else "--") + entry.flag[2:]], not default
    if form == "choice":
        value = next(c for c in ("bce", "mse") if c != default)
        return [entry.flag, value], value
    if form == "sizes":
        return [entry.flag, "7,5"], (7, 5)
    if entry.dest == "graph_communities":
        return [entry.flag, "12"], 12
    if entry.dest == "coarse_communities":  # needs graph communities above it
        return [entry.flag, "3", "--graph-communities", "6"], 3
    if form == "int":
        value = 3 if default is None else default + 2  # None: auto, decided from the data
        return [entry.flag, str(value)], value
    value = 0.25 if default != 0.25 else 0.125
    return [entry.flag, str(value)], value


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_flag_sets_its_field_and_nothing_else(kind: str) -> None:
    parser = build_parser()
    baseline = flat(model_config(kind))
    entries = [entry for entry in flags().values() if kind in entry.paths]
    assert len(entries) >= 9
    for entry in entries:
        words, value = _other_value(entry, kind)
        args = parser.parse_args(["train", "--model", kind, *words, "--out", "x/m/1"])
        config = model_config(args.model, model_options(args))
        changed = {k for k, v in flat(config).items() if baseline[k] != v}
        expected = {entry.dest} | ({"graph_communities"} if "--graph-communities" in words
                                   and entry.dest != "graph_communities" else set())
        assert changed == expected, entry.flag
        field: Any = config
        for part in entry.paths[kind]:
            field = getattr(field, part)
        assert field == value, entry.flag


def test_every_option_has_help_and_a_flag_form() -> None:
    for entry in flags().values():
        assert entry.flag.startswith("--") and entry.help, entry.dest
        annotation_kind(entry.annotation)  # raises for a type with no flag form
        assert entry.kinds and set(entry.kinds) <= set(MODEL_KINDS)


def test_the_defaults_are_the_classes_defaults() -> None:
    assert model_config("conv") == AutoencoderConfig()
    assert model_config("vae") == AutoencoderConfig(kind="vae")
    assert model_config("contrastive") == ContrastiveConfig()
    # The record of a run rebuilds the run's config.
    for kind in MODEL_KINDS:
        config = model_config(kind, {"latent": 7, "epochs": 3})
        record = flat(config)
        assert record.pop("kind") == kind
        assert model_config(kind, record) == config


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("gan", {}, "unknown model kind 'gan': choose dense, conv, vae, contrastive"),
    ("conv", {"min_crop": 0.5}, "--min-crop does not apply to --model conv; it is an option "
                                "of --model contrastive"),
    ("contrastive", {"dense_units": (8,)}, "--dense-units does not apply to --model "
                                           "contrastive"),
    ("conv", {"latent": 0}, "--latent: Input should be greater than or equal to 1, got 0"),
    ("conv", {"nope": 1}, "unknown option 'nope'"),
])
def test_bad_options_name_the_flag(kind: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        model_config(kind, options)
    assert message in str(info.value)


def test_configs_are_frozen_and_hashable() -> None:
    config = ContrastiveConfig()
    with pytest.raises(Exception, match="frozen"):
        config.learning_rate = 1.0  # type: ignore[misc]
    assert hash(config) == hash(ContrastiveConfig())


def test_the_config_module_imports_no_tensorflow() -> None:
    import subprocess
    import sys

    code = ("import sys, training.config, training.cli; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
