"""ChunkQueue: latency compensation, latest vs weighted merging, versions per step, starvation."""

from __future__ import annotations

import numpy as np
import pytest

from actors.runtime_chunks import ChunkQueue


def chunk(first: float, n: int, dim: int = 2) -> np.ndarray:
    """(n, dim) actions whose value is the step they were planned for plus `first` offsets."""
    return np.repeat((first + np.arange(n, dtype=np.float32))[:, None], dim, axis=1)


def drain(q: ChunkQueue, start: int, n: int) -> list[float | None]:
    out = []
    for k in range(start, start + n):
        popped = q.pop(k)
        out.append(None if popped is None else float(popped[0][0]))
    return out


def test_latency_compensation_drops_actions_already_in_the_past() -> None:
    q = ChunkQueue(2, "latest")
    rep = q.merge(chunk(100, 10), first_step=5, now_step=8, version=1)  # predicted at 5, landed at 8
    assert (rep.stale, rep.queued) == (3, 7)
    assert q.remaining(8) == 7
    assert drain(q, 8, 8) == [103, 104, 105, 106, 107, 108, 109, None]  # step 8 runs the action planned for 8


def test_a_chunk_entirely_in_the_past_leaves_the_queue_alone() -> None:
    q = ChunkQueue(2)
    q.merge(chunk(0, 5), first_step=10, now_step=10, version=1)
    rep = q.merge(chunk(50, 3), first_step=2, now_step=11, version=2)
    assert rep.stale == 3 and rep.queued == 4
    assert drain(q, 11, 4) == [1, 2, 3, 4]


def test_latest_replaces_the_overlap_and_the_new_chunk_ends_the_queue() -> None:
    q = ChunkQueue(2, "latest")
    q.merge(chunk(0, 10), first_step=0, now_step=0, version=1)
    assert drain(q, 0, 4) == [0, 1, 2, 3]
    rep = q.merge(chunk(100, 4), first_step=3, now_step=4, version=2)  # covers steps 4..6 after compensation
    assert (rep.stale, rep.blended, rep.queued) == (1, 3, 3)
    assert drain(q, 4, 4) == [101, 102, 103, None]  # old steps 7..9 are gone: the newest plan ends at 6


def test_weighted_cross_fades_from_the_old_plan_to_the_new_one() -> None:
    q = ChunkQueue(1, "weighted")
    q.merge(np.zeros((10, 1), np.float32), first_step=0, now_step=0, version=1)
    q.pop(0)
    q.pop(1)
    rep = q.merge(np.ones((10, 1), np.float32), first_step=2, now_step=2, version=2)
    assert rep.blended == 8  # old steps 2..9 overlap new steps 2..11
    vals = [float(q.pop(k)[0][0]) for k in range(2, 12)]
    np.testing.assert_allclose(vals[:8], np.arange(1, 9) / 9, rtol=1e-6)  # weight of the new plan rises
    assert vals[8:] == [1.0, 1.0]
    assert np.all(np.diff(vals[:9]) > 0)  # always towards the new plan, never back


def test_weighted_is_continuous_where_latest_jumps() -> None:
    old, new = np.zeros((15, 1), np.float32), np.full((15, 1), 0.5, np.float32)
    jumps = {}
    for mode in ("latest", "weighted"):
        q = ChunkQueue(1, mode)
        q.merge(old, 0, 0, 1)
        executed = [float(q.pop(k)[0][0]) for k in range(7)]
        q.merge(new, first_step=5, now_step=7, version=2)
        executed += [float(q.pop(k)[0][0]) for k in range(7, 20)]
        jumps[mode] = float(np.abs(np.diff(executed)).max())
    assert jumps["latest"] == pytest.approx(0.5)
    assert jumps["weighted"] < 0.1


def test_versions_follow_the_dominant_chunk() -> None:
    q = ChunkQueue(1, "weighted")
    q.merge(np.zeros((10, 1), np.float32), 0, 0, version=3)
    q.merge(np.ones((10, 1), np.float32), 0, 0, version=4)  # 10-step overlap: weights 1/11 .. 10/11
    versions = [q.pop(k)[1] for k in range(10)]
    assert versions == [3] * 5 + [4] * 5


def test_empty_queue_pops_none_and_counts_nothing_queued() -> None:
    q = ChunkQueue(3)
    assert q.pop(0) is None and q.remaining(0) == 0
    q.merge(np.zeros((2, 3), np.float32), 0, 0, 1)
    assert q.pop(5) is None  # skipped past everything queued
    assert len(q) == 0


def test_bad_shapes_and_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="merge mode"):
        ChunkQueue(2, "average")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk shape"):
        ChunkQueue(2).merge(np.zeros((4, 3), np.float32), 0, 0, 1)
