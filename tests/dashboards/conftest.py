"""A seeded fleet for dashboard tests: episodes in a real replay store plus status-board entries, with the exact
figures the tests expect kept beside the data that produces them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from dashboards.app import create_app
from fleet.config import DashboardConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.status import Heartbeat, LearnerStatus, RolloutDecision, RolloutState, StatusBoard, VersionEvent
from tests.factories import synthetic_episode

MLFLOW_URI = "http://ops:mlflow-pw-XYZ@mlflow.internal:5000"  # credentials that must never reach a response

# robot -> (embodiment, task, [(minutes ago, version, success, interventions), ...])
EPISODES: dict[str, tuple[str, str, list[tuple[float, int, bool, int]]]] = {
    "franka-01": (
        "franka",
        "reach",
        [
            (10, 2, True, 0),
            (20, 2, True, 1),
            (30, 2, False, 1),
            (40, 2, True, 0),
            *[(180 + m, 1, m < 2, 0) for m in range(6)],
        ],
    ),
    "franka-02": ("franka", "reach", [(15, 1, True, 0), (25, 1, True, 0)]),
    "yam-01": (
        "yam_bimanual",
        "fold",
        [(12, 1, True, 2), (22, 1, False, 1), (32, 1, False, 0), *[(200 + m, 1, True, 0) for m in range(4)]],
    ),
    "so101-01": ("so101", "pick", [(240 + m, 1, False, 0) for m in range(5)]),
}


@dataclass
class Seeded:
    store: ReplayStore
    board: StatusBoard
    now: float
    server: EmbeddedRedis
    beats: list[Heartbeat] = field(default_factory=list)  # as seeded (ages relative to ``now``)


def expected(hour_only: bool, key: str) -> dict[str, list[int]]:
    """[episodes, successes, interventions] per value of ``key`` (robot | embodiment | version)."""
    out: dict[str, list[int]] = {}
    for robot, (emb, _task, eps) in EPISODES.items():
        for minutes, ver, ok, interventions in eps:
            if hour_only and minutes >= 55:
                continue
            k = {"robot": robot, "embodiment": emb, "version": str(ver)}[key]
            acc = out.setdefault(k, [0, 0, 0])
            acc[0] += 1
            acc[1] += int(ok)
            acc[2] += interventions
    return out


def seed(store: ReplayStore, board: StatusBoard, now: float) -> list[Heartbeat]:
    seed_no = 0
    for robot, (emb, task, eps) in EPISODES.items():
        for minutes, ver, ok, interventions in eps:
            seed_no += 1
            ep = synthetic_episode(
                emb,
                steps=10,
                size=8,
                seed=seed_no,
                success=ok,
                task=task,
                version=ver,
                robot=robot,
                end_time=now - minutes * 60,
                interventions=interventions,
            )
            assert store.append(ep).status == "stored"
    beats = [
        Heartbeat(
            robot_id="franka-01",
            embodiment="franka",
            task="reach",
            policy_version=2,
            cohort="canary",
            loop_hz=14.8,
            target_hz=15,
            spool_backlog=0,
            t=now,
        ),
        Heartbeat(
            robot_id="franka-02",
            embodiment="franka",
            task="reach",
            policy_version=1,
            loop_hz=15.0,
            target_hz=15,
            spool_backlog=1,
            t=now - 10,
        ),
        Heartbeat(
            robot_id="yam-01",
            embodiment="yam_bimanual",
            task="fold",
            policy_version=1,
            loop_hz=29.5,
            target_hz=30,
            spool_backlog=3,
            t=now,
        ),
        Heartbeat(
            robot_id="so101-01",
            embodiment="so101",
            task="pick",
            policy_version=1,
            loop_hz=0.0,
            target_hz=30,
            spool_backlog=7,
            t=now - 600,
        ),
    ]
    for hb in beats:
        board.beat(hb)
    for i, step in enumerate(range(0, 500, 50)):
        board.learner_update(
            LearnerStatus(
                step=step,
                loss=1.0 / (i + 1),
                parts={"flow_mse": 0.8 / (i + 1), "token_ce": 0.2 / (i + 1)},
                samples_per_s=42.5,
                lr=3e-4,
                mixture={"fresh": 0.5, "history": 0.3, "rehearsal": 0.2},
                episodes_seen=30,
                run_id="0123abcd",
                tracking_uri=MLFLOW_URI,
                t=now - 100 + i,
            )
        )
    for ev in (
        VersionEvent(version=1, kind="published", t=now - 5 * 3600),
        VersionEvent(version=1, kind="promoted", t=now - 5 * 3600 + 120),
        VersionEvent(version=2, kind="published", t=now - 50 * 60),
        VersionEvent(version=2, kind="canary", embodiment="franka", t=now - 48 * 60),
    ):
        board.version_event(ev)
    board.set_rollout_state(
        RolloutState(
            champion=1,
            canary=2,
            canary_robots=["franka-01"],
            canary_embodiments=["franka"],
            canary_since=now - 48 * 60,
        )
    )
    board.rollout_decision(
        RolloutDecision(
            version=2,
            champion=1,
            embodiment="franka",
            decision="wait",
            canary_episodes=4,
            canary_successes=3,
            champion_episodes=6,
            champion_successes=2,
            statistic=0.7312,
            test="beta_binomial",
            t=now - 60,
        )
    )
    return beats


@pytest.fixture
def seeded(store: ReplayStore, redis_server: EmbeddedRedis) -> Seeded:
    board = StatusBoard(store.r, prefix=store.p)
    now = time.time()
    beats = seed(store, board, now)
    return Seeded(store, board, now, redis_server, beats)


@pytest.fixture
def api(seeded: Seeded) -> Iterator[TestClient]:
    with TestClient(create_app(seeded.store, seeded.board, DashboardConfig())) as client:
        yield client
