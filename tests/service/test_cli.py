"""The server's command line, generated from the settings."""

from __future__ import annotations

import pytest

from service.cli import build_parser
from service.settings import Settings


def test_help_shows_every_setting_with_its_description_as_written(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse re-wraps the lines
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert f"env AEC_{name.upper()}" in text
    # A "%" in a description is printed as it is (argparse %-formats help text).
    with_percent = [f.description for f in Settings.model_fields.values()
                    if f.description and "%" in f.description]
    assert with_percent
    for description in with_percent:
        assert " ".join(description.split()) in text
