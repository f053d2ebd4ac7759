"""The heap policy: what is alive after a change of the loaded set is never scanned again,
what a change leaves behind is still reclaimed, and a change that unloads nothing walks only
what is new."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import heap
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from tests.service.bundles import clone_version


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """Leave the collector as the other tests expect it."""
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_freezes_the_living_and_reclaims_cycles_left_since() -> None:
    kept = _Cycle()
    heap.settle()
    assert gc.get_freeze_count() > 0
    probe = weakref.ref(kept)
    del kept
    gc.collect()
    # Frozen: a full collection does not even look at it (the point: no 150 ms scans).
    assert probe() is not None
    heap.settle()
    # The next settle unfreezes first, so the cycle that became garbage is reclaimed.
    assert probe() is None


def test_a_settle_without_reclaim_collects_and_freezes_only_the_unfrozen() -> None:
    old, young = _Cycle(), _Cycle()
    heap.settle()
    old_probe = weakref.ref(old)
    del old
    frozen = gc.get_freeze_count()
    dropped = _Cycle()
    dropped_probe = weakref.ref(dropped)
    del dropped
    kept = _Cycle()
    heap.settle(reclaim=False)
    # Only what came since was looked at: its garbage went, the rest of it was frozen.
    assert dropped_probe() is None
    assert gc.get_freeze_count() > frozen
    assert old_probe() is not None  # garbage frozen before waits for a reclaiming settle
    heap.settle()
    assert old_probe() is None
    assert young is not None and kept is not None


@pytest.mark.anyio
async def test_a_replaced_version_is_reclaimed_and_the_new_one_frozen(
        model_repo: Path, digits_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(model_repo=model_repo, poll_seconds=0, max_batch_size=4,
                        drain_seconds=5)
    reclaims: list[bool] = []
    settle = heap.settle

    def recorded(*, reclaim: bool = True) -> float:
        reclaims.append(reclaim)
        return settle(reclaim=reclaim)

    monkeypatch.setattr(heap, "settle", recorded)
    repo = ModelRepository(settings, Metrics(),
                           runtime_factory("/CPU:0", settings.batch_sizes()))
    await repo.start()
    try:
        assert gc.get_freeze_count() > 0  # settled after the first load
        old = weakref.ref(repo.get("digits").runtime)
        clone_version(digits_bundle, model_repo, "other", 1)
        await repo.poll_once()  # a model added, nothing unloaded: no walk of the whole heap
        assert old() is not None and reclaims == [False, False]
        clone_version(digits_bundle, model_repo, "digits", 2)
        await repo.poll_once()
        assert repo.get("digits").version == 2
        assert reclaims == [False, False, True]
        assert old() is None  # the unloaded version's runtime, TensorFlow objects and all
    finally:
        await repo.stop(1)
