"""Per-embodiment normalisation in the released norm_stats.json layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policy.normalization import NormStats


def test_q01_q99_map_to_unit_range_and_back(tmp_path) -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(1000, 3))
    actions = rng.normal(size=(1000, 2)) * [1.0, 10.0]
    actions[:, 1] = 4.0  # a joint that never moves
    stats = NormStats()
    stats.add("franka", states, actions, action_horizon=15)
    meta = stats["franka"]
    q01, q99 = np.array(meta.action_stats.q01), np.array(meta.action_stats.q99)
    assert np.allclose(stats.normalize_action("franka", q01)[0], -1.0)
    assert np.allclose(stats.normalize_action("franka", q99)[0], 1.0)
    assert stats.normalize_action("franka", np.array([100.0, 4.0])).tolist() == [
        1.0,
        0.0,
    ]  # clipped; frozen -> 0
    mid = np.array([0.1, 4.0], dtype=np.float32)
    assert np.allclose(
        stats.unnormalize_action("franka", stats.normalize_action("franka", mid)), mid, atol=1e-6
    )

    stats.save(tmp_path / "norm_stats.json")
    payload = json.loads((tmp_path / "norm_stats.json").read_text())
    assert payload["norm_mode"] == "q01_q99"
    entry = payload["metadata_by_tag"]["franka"]
    assert {"action_stats", "state_stats", "action_dim", "action_horizon"} <= set(entry)
    assert set(entry["action_stats"]) >= {"mean", "std", "min", "max", "q01", "q99"}
    assert NormStats.load(tmp_path / "norm_stats.json") == stats


def test_released_file_without_dims_loads() -> None:
    stats = {"mean": [0, 0], "std": [1, 1], "min": [-1, -2], "max": [1, 2], "q01": [-1, -2], "q99": [1, 2]}
    payload = {
        "norm_mode": "q01_q99",
        "metadata_by_tag": {"so100": {"action_stats": stats, "state_stats": stats}},
    }
    loaded = NormStats.from_json_dict(payload)
    assert loaded["so100"].action_dim == 2 and loaded["so100"].action_horizon == 30


def test_unknown_tag_names_the_known_ones(norm_stats) -> None:
    with pytest.raises(KeyError, match="franka"):
        norm_stats["ur5"]


def test_delta_actions_are_relative_to_the_chunks_first_state(tmp_path) -> None:
    """Joints (mask True) normalise as in-chunk motion from the first state, the gripper stays absolute; the
    mask travels with the file, and a delta entry refuses actions without their state."""
    rng = np.random.default_rng(1)
    first = rng.uniform(-2.0, 2.0, size=(400, 3))  # joints all over the workspace, gripper in [0, 1]
    first[:, 2] = rng.uniform(0.0, 1.0, 400)
    motion = np.cumsum(rng.normal(0.0, 0.01, size=(400, 15, 3)), axis=1)  # small in-chunk moves
    chunks = first[:, None, :] + motion
    chunks[:, :, 2] = rng.uniform(0.0, 1.0, (400, 15))
    stats = NormStats()
    meta = stats.add("yam", first, chunks, action_horizon=15, delta_mask=[True, True, False])
    # the joints' range is the in-chunk motion (~0.1), not the workspace (~4): that is the precision gain
    assert np.ptp([meta.action_stats.q01[0], meta.action_stats.q99[0]]) < 0.5
    assert 0.9 < meta.action_stats.q99[2] - meta.action_stats.q01[2] < 1.0
    normed = stats.normalize_action("yam", chunks[:8], first[:8])
    assert normed.shape == (8, 15, 3) and np.abs(normed).max() <= 1.0
    back = stats.unnormalize_action("yam", normed, first[:8])
    inside = np.abs(normed) < 1.0  # clipped values do not come back
    assert np.allclose(back[inside], chunks[:8][inside], atol=1e-5)
    one = stats.unnormalize_action("yam", stats.normalize_action("yam", chunks[0], first[0]), first[0])
    assert one.shape == (15, 3)
    with pytest.raises(ValueError, match="first state"):
        stats.normalize_action("yam", chunks[0])
    with pytest.raises(ValueError, match="chunks"):
        NormStats().add("yam", first, chunks[:, 0], action_horizon=15, delta_mask=[True, True, False])
    stats.save(tmp_path / "norm_stats.json")
    assert NormStats.load(tmp_path / "norm_stats.json")["yam"].delta_action_mask == [True, True, False]
