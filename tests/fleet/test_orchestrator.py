"""The orchestrator on a real local Ray: a robot process that dies is brought back and loses nothing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from fleet.config import ActorSpec, FleetConfig
from fleet.orchestrator import Orchestrator
from fleet.replay import ReplayStore

pytestmark = pytest.mark.slow

ROBOT = "so101-crash"


def wait_for(orch: Orchestrator, ok: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = orch.statuses(timeout_s=5.0)[ROBOT]
        if status.get("alive") and ok(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"no status of {ROBOT} met the condition in {timeout_s} s: {status}")


def test_a_killed_robot_process_is_restarted_and_counts_on_with_nothing_lost(tmp_path: Path) -> None:
    """SIGKILL (the way a segfault in a native library or the OOM killer ends it) the process of a running
    robot: Ray restarts it, its episode count goes on from where it was (not from 0), and every episode the
    actor counted is in the store once the fleet stops."""
    cfg = FleetConfig(data_dir=str(tmp_path))
    cfg.actors.robots = [ActorSpec(robot_id=ROBOT, embodiment="so101", task="reach")]
    cfg.actors.time_scale = 4.0  # a scripted arm needs no real-time pacing: episodes come faster
    password_before = os.environ.get(cfg.redis.password_env)
    with Orchestrator(cfg, policy="scripted", learner=False) as orch:
        before = wait_for(orch, lambda s: s["episodes"] >= 2, 180)
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(orch, lambda s: s["pid"] != before["pid"] and s["episodes"] > before["episodes"], 180)
        assert after["restarts"] == 1, after
        final = ray.get(orch.handles.actors[ROBOT].stop.remote(), timeout=120)  # drains its spool
        stored = sum(int(r["episodes"]) for r in ReplayStore(orch.client, cfg.replay).outcome_totals()
                     if r["robot"] == ROBOT)
    assert final["restarts"] == 1 and final["episodes"] >= after["episodes"], final
    assert stored == final["episodes"], (stored, final)
    assert os.environ.get(cfg.redis.password_env) == password_before  # the embedded server's went with it
