"""Helpers for tests that need several versions of a real bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from service import bundle


def clone_version(source: Path, repo: Path, name: str, version: int) -> Path:
    """Copy a bundle to ``repo/name/version``, rewriting the manifest's name and version.

    The manifest is not among its own checksummed files, so the copy still verifies.
    """
    target = repo / name / str(version)
    tmp = repo / name / f".tmp-clone-{version}"
    shutil.copytree(source, tmp)
    raw = json.loads((tmp / bundle.MANIFEST_FILE).read_text())
    raw["name"], raw["version"] = name, version
    (tmp / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    tmp.rename(target)
    return target


def sign_version(version_dir: Path, private_key: Path) -> Path:
    """Sign a version the way an operator does (``python -m training sign``)."""
    from training.signing import Signer, sign_existing

    return sign_existing(version_dir, Signer(private_key))
