"""RobotActor's control loop on the real simulator: rate, asynchronous inference that outlasts a control period,
starvation only when the queue is truly dry, synchronous baseline, hot swap between chunks, heartbeats."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actors.embodiments import EMBODIMENTS
from actors.policy_client import InProcessPolicyClient, PolicyClient, ScriptedPolicyClient
from actors.recorder import EpisodeRecorder
from actors.runtime import RobotActor
from actors.runtime_inference import ChunkWorker
from actors.sim.env import FleetSimEnv
from fleet.config import ActorsConfig
from fleet.episode import decode_episode
from fleet.redis_server import EmbeddedRedis
from fleet.spool import Spool
from fleet.status import StatusBoard
from policy.processor import PolicySample

FRANKA = EMBODIMENTS["franka"]
PERIOD = 1.0 / FRANKA.control_hz


class DelayedClient(PolicyClient):
    """Another client whose chunks take ``delay_s`` longer: a slow model or a far-away server."""

    def __init__(self, inner: PolicyClient, delay_s: float, version: int = 0):
        self.inner, self.delay_s, self.version = inner, delay_s, version
        self.calls = 0

    def sample_from(self, obs, instruction, embodiment_tag):  # type: ignore[no-untyped-def]
        return self.inner.sample_from(obs, instruction, embodiment_tag)

    def infer(self, sample: PolicySample) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.inner.infer(sample)


@pytest.fixture
def env() -> Iterator[FleetSimEnv]:
    e = FleetSimEnv("franka", "reach", image_size=64)
    yield e
    e.close()


def actor_for(env: FleetSimEnv, client: PolicyClient, **cfg: object) -> RobotActor:
    return RobotActor("franka-test", FRANKA, "reach", env, client, ActorsConfig(**cfg))  # type: ignore[arg-type]


def test_loop_holds_its_rate_with_the_tiny_policy_in_process(env: FleetSimEnv) -> None:
    import torch

    torch.set_num_threads(1)
    actor = actor_for(env, InProcessPolicyClient.tiny(seed=0), max_episode_s=4.0)
    try:
        res = actor.run_episode(seed=0)
        st = actor.stats()
    finally:
        actor.close()
    assert res is not None and res.steps == 60
    assert st.clock.rate_hz == pytest.approx(FRANKA.control_hz, rel=0.05)
    assert st.clock.overruns <= 2
    assert res.chunks >= 60 // FRANKA.chunk_horizon  # chunks kept coming while the arm moved
    assert st.inference_errors == 0


def test_inference_slower_than_a_period_does_not_stall_the_loop(env: FleetSimEnv) -> None:
    slow = DelayedClient(ScriptedPolicyClient(env, FRANKA.chunk_horizon), delay_s=3.5 * PERIOD)
    actor = actor_for(env, slow, max_episode_s=2.5)
    try:
        res = actor.run_episode(seed=1)
        st = actor.stats()
    finally:
        actor.close()
    assert res is not None and res.steps == 37
    assert st.clock.rate_hz == pytest.approx(FRANKA.control_hz, rel=0.05)
    # each chunk took ~4 ticks, the queue asked for the next with 7 left: never dry, and the ~4 actions of
    # every chunk that were already in the past when it landed were dropped
    assert res.starved == 0 and st.starved_ticks == 0
    assert st.stale_actions >= 3 * (res.chunks - 1)


def test_starved_ticks_are_counted_only_when_the_queue_is_dry_and_the_arm_holds(
    env: FleetSimEnv, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", deliver=lambda blob: None)  # not started: the episode stays on disk
    recorder = EpisodeRecorder(
        spool, FRANKA.schema, robot_id="franka-test", task="reach", fps=FRANKA.control_hz
    )
    # a chunk takes 0.8 s; the queue asks when 7 actions (0.47 s) are left: it runs dry for ~5 ticks a chunk
    slow = DelayedClient(ScriptedPolicyClient(env, FRANKA.chunk_horizon), delay_s=12 * PERIOD)
    actor = RobotActor(
        "franka-test", FRANKA, "reach", env, slow, ActorsConfig(max_episode_s=3.0), recorder=recorder
    )
    try:
        res = actor.run_episode(seed=2)
    finally:
        actor.close()
    assert res is not None and res.starved > 0
    assert res.idle_s == pytest.approx(res.starved * PERIOD)
    (path,) = spool.pending()
    actions = decode_episode(path.read_bytes()).action  # (T, A) what the arm was sent
    holds = int(np.sum(np.all(actions[1:] == actions[:-1], axis=1)))  # the same target again: holding still
    assert holds == res.starved


def test_synchronous_inference_stops_the_arm_instead_of_starving(env: FleetSimEnv) -> None:
    slow = DelayedClient(ScriptedPolicyClient(env, FRANKA.chunk_horizon), delay_s=0.2)
    actor = actor_for(env, slow, max_episode_s=2.0, async_inference=False)
    try:
        res = actor.run_episode(seed=1)
    finally:
        actor.close()
    assert res is not None and res.steps == 30 and res.starved == 0
    waits = slow.calls - 1  # the first chunk is fetched before the clock starts
    assert waits == 1  # a chunk of 15 actions, executed to the end, then the next
    assert waits * 0.2 <= res.idle_s <= waits * 0.2 + 0.15  # the delay plus the expert's planning
    assert res.wall_s == pytest.approx(30 * PERIOD + res.idle_s, abs=0.1)


def test_hot_swap_applies_at_a_chunk_boundary_without_blocking_a_tick(env: FleetSimEnv) -> None:
    old = DelayedClient(ScriptedPolicyClient(env, FRANKA.chunk_horizon), delay_s=0.3, version=1)
    new = DelayedClient(ScriptedPolicyClient(env, FRANKA.chunk_horizon), delay_s=0.05, version=1)
    actor = actor_for(env, old, max_episode_s=3.0)
    done: dict[str, object] = {}

    def swap_soon() -> None:
        while old.calls < 2:  # the first chunk of the loop is being computed: the worker is busy
            time.sleep(0.005)
        t = time.perf_counter()
        fut = actor.swap_policy(new, version=2)
        done["call_s"] = time.perf_counter() - t
        done["previous"] = fut.result(timeout=5)

    swapper = threading.Thread(target=swap_soon)
    swapper.start()
    try:
        res = actor.run_episode(seed=4)
        st = actor.stats()
        hb = actor.heartbeat()
    finally:
        swapper.join(5)
        actor.close()
    assert done["call_s"] < 0.005 and done["previous"] is old
    assert res is not None and res.policy_version == 2  # most steps came from the new version
    assert st.swaps == 1 and st.policy_version == 2 and hb.swaps == 1 and hb.policy_version == 2
    assert st.clock.overruns == 0 and res.starved == 0
    assert new.calls >= 3


def test_swap_waits_for_the_chunk_in_flight_and_a_failed_load_keeps_the_old_version() -> None:
    class Constant(PolicyClient):
        def __init__(self, value: float, version: int, delay_s: float = 0.0):
            self.value, self.version, self.delay_s = value, version, delay_s

        def infer(self, sample: PolicySample) -> np.ndarray:
            time.sleep(self.delay_s)
            return np.full((4, 2), self.value, np.float32)

    sample = PolicySample({}, np.zeros(2, np.float32), "", "franka")
    worker = ChunkWorker(Constant(1.0, version=1, delay_s=0.2), action_dim=2)
    try:
        assert worker.submit(sample, 0, epoch=1)
        time.sleep(0.05)
        fut = worker.swap(Constant(2.0, version=9), version=2)
        first = worker.wait(2.0)
        assert first is not None and first.version == 1 and float(first.chunk[0, 0]) == 1.0  # the old weights
        assert fut.result(2.0).version == 1  # released the old client
        assert worker.submit(sample, 4, epoch=1)
        second = worker.wait(2.0)
        assert second is not None and second.version == 2 and float(second.chunk[0, 0]) == 2.0
        bad = worker.swap({"w": np.zeros(1)}, version=3)  # Constant cannot load weights
        with pytest.raises(NotImplementedError):
            bad.result(2.0)
        assert worker.version == 2
    finally:
        worker.close()


def test_heartbeats_reach_the_status_board(env: FleetSimEnv, redis_server: EmbeddedRedis) -> None:
    client = redis_server.client()
    board = StatusBoard(client)
    actor = RobotActor(
        "franka-hb",
        FRANKA,
        "reach",
        env,
        ScriptedPolicyClient(env, FRANKA.chunk_horizon, version=3),
        ActorsConfig(max_episode_s=1.0, heartbeat_s=0.2, time_scale=2.0),
        board=board,
    )
    try:
        actor.run(episodes=2)
    finally:
        actor.close()
        client.close()
    (hb,) = board.heartbeats()
    assert (hb.robot_id, hb.embodiment, hb.task, hb.policy_version) == ("franka-hb", "franka", "reach", 3)
    assert hb.target_hz == pytest.approx(30.0) and hb.loop_hz == pytest.approx(30.0, rel=0.1)
    assert hb.episodes_sent == 2 and hb.starved_ticks == 0 and time.time() - hb.t < 5


def test_a_malformed_chunk_is_refused_and_the_arm_holds(env: FleetSimEnv) -> None:
    class Corrupt(PolicyClient):
        """A good first chunk, then NaNs (a diverged model, a corrupted message)."""

        calls = 0

        def infer(self, sample: PolicySample) -> np.ndarray:
            self.calls += 1
            chunk = np.tile(np.asarray(sample.state, np.float32), (FRANKA.chunk_horizon, 1))
            return chunk if self.calls == 1 else chunk * np.nan

    actor = actor_for(env, Corrupt(), max_episode_s=2.0, time_scale=3.0)
    try:
        res = actor.run_episode(seed=0)
        st = actor.stats()
    finally:
        actor.close()
    assert res is not None and res.steps == 30 and res.chunks == 1
    assert st.inference_errors >= 1 and res.starved == 30 - FRANKA.chunk_horizon
    assert np.isfinite(env.scene.state()).all()


def test_configuration_errors_say_what_to_change(env: FleetSimEnv) -> None:
    client = ScriptedPolicyClient(env, FRANKA.chunk_horizon)
    with pytest.raises(ValueError, match=r"raise actors\.queue_threshold"):
        RobotActor("r", FRANKA, "reach", env, client, ActorsConfig(queue_threshold=0.05))
    with pytest.raises(ValueError, match="another embodiment"):
        RobotActor("r", EMBODIMENTS["so101"], "reach", env, client)
