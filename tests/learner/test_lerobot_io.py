"""LeRobot v3 round trips in both directions, always through lerobot's own LeRobotDataset reader and writer:
fleet -> LeRobot -> fleet keeps every field; LeRobot -> fleet -> LeRobot keeps every frame; video via PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleet.config import ReplayConfig
from fleet.replay import ReplayStore
from learner.lerobot_compat import load_lerobot
from learner.lerobot_io import export_fleet, export_lerobot_dataset, import_lerobot_dataset
from learner.mixture import MixtureSampler
from tests.factories import SCHEMAS, synthetic_episode
from tests.learner.conftest import learner_config, synthetic_stats


def _other_store(store: ReplayStore, prefix: str) -> ReplayStore:
    return ReplayStore(store.r, ReplayConfig(chunk_steps=8, prefix=prefix), schemas=SCHEMAS)


def test_fleet_to_lerobot_and_back(store: ReplayStore, tmp_path: Path) -> None:
    episodes = [
        synthetic_episode("franka", steps=12, seed=i, success=i != 1, interventions=3 if i == 1 else 0)
        for i in range(3)
    ]
    episodes.append(synthetic_episode("so101", steps=10, seed=7))
    episodes.append(synthetic_episode("franka", steps=10, seed=8, source="eval"))  # not exported by default
    for ep in episodes:
        store.append(ep)
    reports = export_fleet(store, tmp_path / "out")
    assert [(r.embodiment, r.episodes, r.frames) for r in reports] == [("franka", 3, 36), ("so101", 1, 10)]

    ds = load_lerobot().LeRobotDataset("molmofleet/franka", root=tmp_path / "out" / "franka")
    assert ds.meta.info["codebase_version"] == "v3.0" and ds.meta.robot_type == "franka"
    assert ds.num_episodes == 3 and len(ds) == 36 and ds.fps == 15
    item = ds[12 + 5]  # episode 1 (the failed one with 3 interventions at its end), frame 5
    assert item["episode_index"] == 1 and item["task"] == "reach the red cube"
    assert item["observation.state"].tolist() == episodes[1].state[5].tolist()
    assert item["observation.images.wrist"].shape == (3, 16, 16)
    assert round(float(item["observation.images.wrist"][0, 0, 0]) * 255) == (5 + 7) % 256
    assert (
        not bool(ds[12 + 11]["next.success"]) and bool(ds[11]["next.success"]) and bool(ds[11]["next.done"])
    )
    assert [bool(ds[12 + t]["intervention"]) for t in range(12)] == episodes[1].intervention.tolist()

    back = _other_store(store, "back")
    report = import_lerobot_dataset(back, tmp_path / "out" / "franka")
    assert (report.stored, report.rejected) == (3, {})
    for ep in episodes[:3]:
        got = back.read_episode(ep.meta.episode_id)
        assert got.meta == ep.meta
        for name in ("state", "action", "intervention"):
            assert np.array_equal(getattr(got, name), getattr(ep, name)), name
        assert all(np.array_equal(got.images[c], ep.images[c]) for c in ep.images)
        assert list(got.images) == list(ep.images)
    assert import_lerobot_dataset(back, tmp_path / "out" / "franka").duplicates == 3  # idempotent


def _write_native(root: Path, episodes: int = 3, steps: int = 9, size: int = 24) -> list[dict]:
    """A dataset written by lerobot itself, with its own camera names (an SO-101 recording)."""
    lr = load_lerobot()
    feats = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": [f"j{i}" for i in range(6)]},
        "action": {"dtype": "float32", "shape": (6,), "names": [f"j{i}" for i in range(6)]},
        "observation.images.laptop": {
            "dtype": "image",
            "shape": (size, size, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.images.phone": {
            "dtype": "image",
            "shape": (size, size, 3),
            "names": ["height", "width", "channels"],
        },
    }
    ds = lr.LeRobotDataset.create(
        "lerobot/so101_pick", fps=30, features=feats, root=root, robot_type="so101", use_videos=False
    )
    rng = np.random.default_rng(0)
    frames = []
    for e in range(episodes):
        for _t in range(steps):
            f = {
                "observation.state": rng.normal(size=6).astype(np.float32),
                "action": rng.normal(size=6).astype(np.float32),
                "observation.images.laptop": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "observation.images.phone": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "task": f"pick the {['red', 'blue'][e % 2]} cube",
            }
            frames.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in f.items()})
            ds.add_frame(f)
        ds.save_episode()
    ds.finalize()
    return frames


def test_lerobot_to_fleet_and_back(store: ReplayStore, tmp_path: Path) -> None:
    frames = _write_native(tmp_path / "native")
    report = import_lerobot_dataset(store, tmp_path / "native", cameras={"phone": "front", "laptop": "wrist"})
    assert (report.episodes, report.stored, report.frames) == (3, 3, 27)
    ids = store.episode_ids("src:rehearsal")
    metas = store.metas(ids)
    assert {m.embodiment for m in metas} == {"so101"} and all(m.success and m.fps == 30 for m in metas)
    assert {m.instruction for m in metas} == {"pick the red cube", "pick the blue cube"}
    first = next(i for i, m in zip(ids, metas, strict=True) if m.seed == 0)
    ep = store.read_episode(first)
    assert list(ep.images) == ["front", "wrist"]
    assert np.array_equal(ep.images["front"][4], frames[4]["observation.images.phone"])
    assert np.array_equal(ep.state, np.stack([f["observation.state"] for f in frames[:9]]))

    # the rehearsal pool of the mixture now draws from it
    sampler = MixtureSampler(store, learner_config(tmp_path, holdout_fraction=0.0), synthetic_stats())
    sampler.refresh()
    assert sampler.pool_sizes()["rehearsal"] == 3

    out = export_lerobot_dataset(
        store,
        tmp_path / "again",
        sorted(ids, key=lambda i: store.metas([i])[0].seed),
        repo_id="molmofleet/so101",
    )
    again = load_lerobot().LeRobotDataset("molmofleet/so101", root=out.root)
    assert len(again) == 27
    for i in (0, 13, 26):
        assert np.array_equal(again[i]["observation.state"].numpy(), frames[i]["observation.state"])
        assert np.array_equal(again[i]["action"].numpy(), frames[i]["action"])
        img = np.rint(again[i]["observation.images.front"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        assert np.array_equal(img, frames[i]["observation.images.phone"])
        assert again[i]["task"] == frames[i]["task"]


def test_video_round_trip_through_pyav(store: ReplayStore, tmp_path: Path) -> None:
    eps = [synthetic_episode("franka", steps=10, size=32, seed=i) for i in range(2)]
    for ep in eps:
        store.append(ep)
    (report,) = export_fleet(store, tmp_path / "video", video=True)
    ds = load_lerobot().LeRobotDataset("molmofleet/franka", root=report.root, video_backend="pyav")
    assert ds.meta.video_keys == ["observation.images.external", "observation.images.wrist"]
    frame = ds[10 + 6]["observation.images.external"]  # episode 1: the decoder seeks inside the shared file
    assert frame.shape == (3, 32, 32) and abs(float(frame.mean()) * 255 - 6) <= 2
    back = _other_store(store, "video")
    assert import_lerobot_dataset(back, report.root).stored == 2
    got = back.read_episode(eps[1].meta.episode_id)
    assert np.array_equal(got.state, eps[1].state)
    diff = np.abs(got.images["wrist"].astype(int) - eps[1].images["wrist"].astype(int))
    assert diff.max() <= 3  # lossy codec, flat frames


def test_export_refuses_an_existing_directory(store: ReplayStore, tmp_path: Path) -> None:
    ep = synthetic_episode("franka", steps=5)
    store.append(ep)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="new directory"):
        export_lerobot_dataset(store, tmp_path / "taken", [ep.meta.episode_id])
