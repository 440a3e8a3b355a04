"""Supervisor takeover: the rule (stalled progress, random hazard, grace, limits) and, on the real simulator,
interventions recorded with the right flags while the episode keeps both the policy's and the expert's steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.embodiments import EMBODIMENTS
from actors.interventions import TASK_DISTANCE, ScriptedSupervisor, TakeoverRule
from actors.policy_client import PolicyClient
from actors.recorder import EpisodeRecorder
from actors.runtime import RobotActor
from actors.sim.env import FleetSimEnv
from fleet.config import ActorsConfig, InterventionConfig
from fleet.episode import decode_episode
from fleet.spool import Spool
from policy.processor import PolicySample

FRANKA = EMBODIMENTS["franka"]


def run_rule(rule: TakeoverRule, seconds: float, dt: float = 0.05) -> list[bool]:
    return [rule.update(i * dt) for i in range(round(seconds / dt))]


def test_stalled_progress_triggers_a_takeover_of_fixed_length_then_hands_back() -> None:
    cfg = InterventionConfig(stall_s=1.0, takeover_s=0.5, grace_s=0.3, max_per_episode=2)
    rule = TakeoverRule(cfg, distance=lambda: 0.3, rng=np.random.default_rng(0))  # never gets closer
    control = run_rule(rule, 4.0)
    starts = [i for i in range(1, len(control)) if control[i] and not control[i - 1]]
    assert [round(i * 0.05, 2) for i in starts] == [
        1.0,
        2.5,
    ]  # stall 1 s; then 0.5 s takeover + 1 s stall again
    assert sum(control) == 2 * 10  # two takeovers of 0.5 s
    assert rule.takeovers == 2 and rule.reason == "stalled"  # and no third: max_per_episode


def test_progress_keeps_the_supervisor_away() -> None:
    t = {"i": 0}

    def closing_in() -> float:
        t["i"] += 1
        return 1.0 - 0.002 * t["i"]  # 2 cm a second at 20 Hz

    rule = TakeoverRule(
        InterventionConfig(stall_s=1.0, min_progress_m=0.01), closing_in, np.random.default_rng(0)
    )
    assert not any(run_rule(rule, 10.0))


def test_random_takeovers_follow_their_rate() -> None:
    cfg = InterventionConfig(stall_s=0, random_per_s=0.05, takeover_s=0.1, grace_s=0, max_per_episode=10_000)
    rule = TakeoverRule(cfg, distance=lambda: 0.0, rng=np.random.default_rng(7))
    run_rule(rule, 2000.0)
    assert rule.takeovers == pytest.approx(0.05 * 2000, rel=0.25) and rule.reason == "random"


def test_every_task_has_a_progress_measure_on_the_real_scene() -> None:
    for emb, task in (("franka", "reach"), ("franka", "pick_place"), ("yam_bimanual", "lift")):
        env = FleetSimEnv(emb, task, render=False)
        try:
            env.reset(seed=0)
            d = TASK_DISTANCE[task](env.scene, env.task)
            assert 0.0 < d < 3.0
        finally:
            env.close()


class HoldStill(PolicyClient):
    """A policy that never moves: chunks of the observed pose. Progress stalls, the supervisor steps in."""

    def infer(self, sample: PolicySample) -> np.ndarray:
        return np.tile(np.asarray(sample.state, np.float32), (FRANKA.chunk_horizon, 1))


def test_interventions_are_recorded_with_the_right_flags(tmp_path: Path) -> None:
    env = FleetSimEnv("franka", "reach", image_size=48)
    spool = Spool(tmp_path / "spool", deliver=lambda blob: None)  # not started: read the episode from disk
    recorder = EpisodeRecorder(
        spool, FRANKA.schema, robot_id="franka-02", task="reach", fps=FRANKA.control_hz
    )
    rule = InterventionConfig(stall_s=0.5, takeover_s=1.0, grace_s=0.2, max_per_episode=1)
    supervisor = ScriptedSupervisor.for_env(env, rule, seed=0)
    actor = RobotActor(
        "franka-02",
        FRANKA,
        "reach",
        env,
        HoldStill(),
        ActorsConfig(max_episode_s=3.0, time_scale=3.0),
        recorder=recorder,
        supervisor=supervisor,
    )
    try:
        res = actor.run_episode(seed=5)
    finally:
        actor.close()
        env.close()
    assert res is not None and res.takeovers == 1
    (path,) = spool.pending()
    ep = decode_episode(path.read_bytes())
    flags = ep.intervention
    assert ep.meta.interventions == int(flags.sum()) == res.interventions
    idx = np.flatnonzero(flags)
    first, last = int(idx[0]), int(idx[-1])
    assert np.all(flags[first : last + 1])  # one contiguous takeover
    assert first == pytest.approx(0.5 * FRANKA.control_hz, abs=2)  # after 0.5 s without progress
    # 1 s of takeover, then the expert keeps the arm until the policy's fresh chunk lands (a tick or two)
    assert 15 <= last - first + 1 <= 15 + 4
    # the episode keeps both parts: the policy held still before and after, the expert moved the arm
    home = ep.state[0]
    np.testing.assert_allclose(ep.action[:first], np.tile(home, (first, 1)), atol=1e-3)
    assert np.abs(ep.action[first : last + 1] - home).max() > 0.05
    after = slice(last + 1, ep.num_steps)
    assert ep.num_steps - last - 1 > 5 and not flags[after].any()
    np.testing.assert_allclose(
        ep.action[after], ep.state[after], atol=0.05
    )  # holding where the expert left it
