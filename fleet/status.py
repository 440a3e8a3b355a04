"""The fleet's status board in Redis: what every long-running part reports and the dashboards read.

- heartbeats: one hash per robot with a TTL-free timestamp (status live/stale/down is derived from its age)
- learner progress: the latest figures plus a bounded history stream
- version events: published / promoted / rolled back / rejected, with their figures
- rollout: the current champion and canary per embodiment, and every gate decision

Writers: actors (heartbeats), learner (progress, published), rollout (decisions, promoted, rolled back).
Readers: dashboards, `fleet rollout status`, tests. One schema here, so writer and reader cannot drift.
"""

from __future__ import annotations

import time
from typing import Literal

import redis
from pydantic import BaseModel, Field

STALE_AFTER_S = 5.0  # a heartbeat older than this shows as stale
DOWN_AFTER_S = 30.0  # older than this: down


class Heartbeat(BaseModel):
    robot_id: str
    embodiment: str
    task: str
    policy_version: int  # version the control loop is running now
    cohort: Literal["champion", "canary"] = "champion"
    loop_hz: float = 0.0  # achieved control rate
    target_hz: float = 0.0
    jitter_p99_ms: float = 0.0
    queue_depth: int = 0  # actions left in the chunk queue
    starved_ticks: int = 0  # ticks where the queue ran dry and the arm held position
    episodes_sent: int = 0
    spool_backlog: int = 0  # episodes on disk not yet acknowledged by the store
    swaps: int = 0  # hot swaps performed
    rejected_versions: int = 0  # versions that failed verification
    t: float = Field(default_factory=time.time)


class LearnerStatus(BaseModel):
    step: int
    loss: float
    parts: dict[str, float] = Field(default_factory=dict)  # flow_mse, token_ce, ...
    samples_per_s: float = 0.0
    lr: float = 0.0
    mixture: dict[str, float] = Field(default_factory=dict)  # realised share of each pool in recent batches
    episodes_seen: int = 0
    run_id: str = ""  # MLflow run
    tracking_uri: str = ""
    t: float = Field(default_factory=time.time)


class VersionEvent(BaseModel):
    version: int
    kind: Literal["published", "held_back", "promoted", "rolled_back", "rejected", "canary"]  # held_back: the
    # simulated held-out evaluation screened it out before any robot ran it (fleet/rollout.py)
    embodiment: str = ""  # empty: fleet-wide
    robot: str = ""  # the robot that reported it (rejected), else empty
    detail: str = ""
    figures: dict[str, float] = Field(default_factory=dict)
    t: float = Field(default_factory=time.time)


class RolloutDecision(BaseModel):
    version: int
    champion: int
    embodiment: str
    decision: Literal["promote", "rollback", "wait"]
    canary_episodes: int
    canary_successes: int
    champion_episodes: int
    champion_successes: int
    statistic: float  # e.g. P(canary >= champion - margin) or a z score
    test: str
    t: float = Field(default_factory=time.time)


class RolloutState(BaseModel):
    champion: int = 0  # version every robot outside a canary cohort runs (0: the seed policy)
    canary: int | None = None  # version under test, if any
    canary_robots: list[str] = Field(default_factory=list)  # the canary cohort (some robots of each embodiment)
    canary_embodiments: list[str] = Field(default_factory=list)  # each must give a verdict before promotion
    canary_since: float = 0.0  # when the canary started: the comparison period
    verdicts: dict[str, str] = Field(default_factory=dict)  # embodiment -> promote | rollback | undecided (so far);
    # "fleet": the fleet-wide judgement of the undecided (fleet/rollout.py)

    def target_version(self, robot_id: str) -> int:
        return self.canary if self.canary is not None and robot_id in self.canary_robots else self.champion


def liveness(hb: Heartbeat, now: float | None = None) -> str:
    age = (now or time.time()) - hb.t
    return "live" if age < STALE_AFTER_S else "stale" if age < DOWN_AFTER_S else "down"


class StatusBoard:
    def __init__(self, client: redis.Redis, prefix: str = "mf", history: int = 10_000):
        self.r = client
        self.p = prefix
        self.history = history

    # heartbeats
    def beat(self, hb: Heartbeat) -> None:
        self.r.hset(f"{self.p}:hb", hb.robot_id, hb.model_dump_json())

    def heartbeats(self) -> list[Heartbeat]:
        return sorted((Heartbeat.model_validate_json(v) for v in self.r.hgetall(f"{self.p}:hb").values()),
                      key=lambda h: h.robot_id)

    # learner
    def learner_update(self, st: LearnerStatus) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(f"{self.p}:learner:status", st.model_dump_json())
        pipe.xadd(f"{self.p}:learner:history", {"j": st.model_dump_json()}, maxlen=self.history, approximate=True)
        pipe.execute()

    def learner(self) -> LearnerStatus | None:
        raw = self.r.get(f"{self.p}:learner:status")
        return LearnerStatus.model_validate_json(raw) if raw else None

    def learner_history(self, count: int = 500) -> list[LearnerStatus]:
        entries = self.r.xrevrange(f"{self.p}:learner:history", count=count)
        return [LearnerStatus.model_validate_json(f[b"j"]) for _, f in reversed(entries)]

    # versions and rollout
    def version_event(self, ev: VersionEvent) -> None:
        self.r.xadd(f"{self.p}:versions:events", {"j": ev.model_dump_json()}, maxlen=self.history, approximate=True)

    def version_events(self, count: int = 1000) -> list[VersionEvent]:
        entries = self.r.xrevrange(f"{self.p}:versions:events", count=count)
        return [VersionEvent.model_validate_json(f[b"j"]) for _, f in reversed(entries)]

    def rollout_decision(self, d: RolloutDecision) -> None:
        self.r.xadd(f"{self.p}:rollout:decisions", {"j": d.model_dump_json()}, maxlen=self.history, approximate=True)

    def rollout_decisions(self, count: int = 200) -> list[RolloutDecision]:
        entries = self.r.xrevrange(f"{self.p}:rollout:decisions", count=count)
        return [RolloutDecision.model_validate_json(f[b"j"]) for _, f in reversed(entries)]

    def set_rollout_state(self, st: RolloutState) -> None:
        self.r.set(f"{self.p}:rollout:state", st.model_dump_json())

    def rollout_state(self) -> RolloutState:
        raw = self.r.get(f"{self.p}:rollout:state")
        return RolloutState.model_validate_json(raw) if raw else RolloutState()
