"""EpisodeRecorder: actor episodes land in a real Redis-backed replay store with the right metadata; invalid
episodes are refused before they reach the spool; hardware outcomes come from the operator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.embodiments import EMBODIMENTS
from actors.policy_client import ScriptedPolicyClient
from actors.recorder import EpisodeRecorder
from actors.runtime import RobotActor
from actors.sim.env import FleetSimEnv
from fleet.config import ActorsConfig
from fleet.episode import EpisodeError
from fleet.replay import ReplayStore
from fleet.spool import Spool

FRANKA = EMBODIMENTS["franka"]


def test_episodes_arrive_in_the_store_with_correct_metadata(tmp_path: Path, store: ReplayStore) -> None:
    spool = Spool(tmp_path / "spool", store.append, chunk_steps=store.cfg.chunk_steps).start()
    recorder = EpisodeRecorder(
        spool, FRANKA.schema, robot_id="franka-07", task="reach", fps=FRANKA.control_hz, source="demo"
    )
    env = FleetSimEnv("franka", "reach", image_size=48)
    instructions: list[str] = []
    actor = RobotActor(
        "franka-07",
        FRANKA,
        "reach",
        env,
        ScriptedPolicyClient(env, FRANKA.chunk_horizon, version=4),
        ActorsConfig(max_episode_s=1.5, time_scale=3.0),
        recorder=recorder,
    )
    try:
        results = actor.run(episodes=2, seed=10, on_episode=lambda r: instructions.append(env.instruction))
        assert spool.drain(10)
    finally:
        actor.close()
        spool.stop()
        env.close()
    assert sorted(store.episode_ids()) == sorted(r.episode_id for r in results)
    for seed, res, instruction in zip((10, 11), results, instructions, strict=True):
        ep = store.read_episode(res.episode_id)
        m = ep.meta
        assert (m.robot_id, m.embodiment, m.task, m.source) == ("franka-07", "franka", "reach", "demo")
        assert m.instruction == instruction and instruction.startswith("touch the ")
        assert (m.seed, m.policy_version, m.fps, m.success) == (seed, 4, FRANKA.control_hz, res.success)
        assert m.interventions == 0 and not ep.intervention.any()
        # the duration is the recorded wall time (the loop's rate is tested in test_runtime.py)
        assert ep.num_steps == res.steps and m.duration_s == pytest.approx(
            ep.timestamp[-1] + 1.0 / FRANKA.control_hz
        )
        assert set(ep.images) == {"external", "wrist"} and ep.images["external"].shape == (
            res.steps,
            48,
            48,
            3,
        )
        assert ep.depth is not None and ep.depth.shape == (res.steps, 48, 48)
        assert ep.state.shape == ep.action.shape == (res.steps, 8)
        # timestamps are measured control time: ticks at 45 Hz wall clock are 1/15 s apart in robot time
        dt = np.diff(ep.timestamp)
        assert np.all(dt > 0) and np.median(dt) == pytest.approx(1 / FRANKA.control_hz, rel=0.1)
        assert 0 <= m.end_time - m.start_time < 5
    assert store.stats().pools["src:demo"].episodes == 2


def _one_step(recorder: EpisodeRecorder, state_dim: int = 8) -> None:
    obs = {
        "images": {c: np.zeros((16, 16, 3), np.uint8) for c in FRANKA.cameras},
        "state": np.zeros(state_dim, np.float32),
    }
    recorder.begin("touch the red cube", seed=1)
    recorder.record(obs, np.zeros(8, np.float32), intervention=False, t=0.0)


def test_an_invalid_episode_is_refused_before_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", deliver=lambda blob: None)
    recorder = EpisodeRecorder(spool, FRANKA.schema, robot_id="r", task="reach", fps=15.0)
    _one_step(recorder, state_dim=7)  # a driver that lost a joint
    with pytest.raises(EpisodeError, match="state: 7 dims"):
        recorder.finish(True, policy_version=0)
    assert spool.pending() == [] and recorder.recorded == 0


def test_hardware_outcome_comes_from_the_operator(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", deliver=lambda blob: None)
    asked: list[int] = []
    recorder = EpisodeRecorder(
        spool,
        FRANKA.schema,
        robot_id="r",
        task="reach",
        fps=15.0,
        label_outcome=lambda ep: asked.append(ep.num_steps) or True,
    )
    _one_step(recorder)
    assert recorder.finish(None, policy_version=2).meta.success and asked == [1]
    assert len(spool.pending()) == 1
    unlabelled = EpisodeRecorder(spool, FRANKA.schema, robot_id="r", task="reach", fps=15.0)
    _one_step(unlabelled)
    with pytest.raises(ValueError, match="operator label"):
        unlabelled.finish(None, policy_version=2)
