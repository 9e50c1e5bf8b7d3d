"""The GC threshold a full snapshot raises for speed is raised for the snapshot only."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from course_export_service import exporter


@pytest.fixture
def threshold() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*before)


def test_young_collections_are_rarer_during_a_snapshot_only(
    threshold: tuple[int, int, int],
) -> None:
    with exporter._fewer_young_collections():
        assert gc.get_threshold() == (exporter._GEN0_THRESHOLD, 10, 10)
    assert gc.get_threshold() == threshold
    with pytest.raises(RuntimeError), exporter._fewer_young_collections():
        raise RuntimeError("a failed snapshot puts it back too")
    assert gc.get_threshold() == threshold


def test_a_threshold_changed_meanwhile_is_left_alone(threshold: tuple[int, int, int]) -> None:
    with exporter._fewer_young_collections():
        gc.set_threshold(5000, 20, 20)  # someone else's decision
    assert gc.get_threshold() == (5000, 20, 20)


def test_a_higher_threshold_is_not_lowered(threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(50_000, 10, 10)
    with exporter._fewer_young_collections():
        assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_threshold() == (50_000, 10, 10)
