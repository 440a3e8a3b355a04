"""Prometheus ``/metrics``: a custom collector that reads the replay store and the status board on each scrape.

The figures are the page's figures (store, outcomes, robots, learner, rollout). Outcome counters are exported
per (embodiment, task), per (embodiment, version) for the newest versions only (``metrics_max_versions``, plus
the champion and canaries: a version label per training publish would grow without bound), and per robot.
The Grafana dashboard in grafana/fleet.json uses only these names; tests hold the two together.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dashboards.outcomes import INT, OK, N, OutcomeReader
from fleet.config import DashboardConfig
from fleet.replay import ReplayStore
from fleet.status import StatusBoard, liveness

STATES = ("live", "stale", "down")
DECISIONS = ("promote", "rollback", "wait")


def _g(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"molmofleet_{name}", doc, labels=labels)


def _c(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(f"molmofleet_{name}", doc, labels=labels)


class FleetCollector(Collector):
    def __init__(self, store: ReplayStore, board: StatusBoard, cfg: DashboardConfig, outcomes: OutcomeReader):
        self.store = store
        self.board = board
        self.cfg = cfg
        self.outcomes = outcomes

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration time (Redis may not be reachable yet)

    def collect(self) -> Iterator[Metric]:
        up = _g("up", "1 when the replay store and status board were readable for this scrape")
        try:
            metrics = [*self._store(), *self._outcomes(), *self._robots(), *self._learner(), *self._rollout()]
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _store(self) -> list[Metric]:
        st = self.store.stats()
        out = []
        for name, doc, value in (
            ("store_episodes", "episodes stored now", st.stored.episodes),
            ("store_steps", "steps stored now", st.stored.steps),
            ("store_bytes", "payload bytes stored now", st.stored.bytes),
            (
                "store_capacity_bytes",
                "payload bytes kept before the oldest episodes are evicted",
                st.capacity_bytes,
            ),
            (
                "store_reservoir_episodes",
                "episodes in the rehearsal reservoir (never evicted)",
                st.reservoir.episodes,
            ),
            ("store_reservoir_bytes", "payload bytes in the rehearsal reservoir", st.reservoir.bytes),
            ("store_deadletters", "rejected episodes in the dead-letter stream", st.deadletters),
        ):
            m = _g(name, doc)
            m.add_metric([], value)
            out.append(m)
        for name, doc, value in (
            ("store_ingested_episodes", "episodes accepted since the store began", st.ingested.episodes),
            ("store_ingested_bytes", "payload bytes accepted since the store began", st.ingested.bytes),
            ("store_evicted_episodes", "episodes evicted for capacity", st.evicted_episodes),
            ("store_evicted_bytes", "payload bytes evicted for capacity", st.evicted_bytes),
        ):
            m = _c(name, doc)
            m.add_metric([], value)
            out.append(m)
        pe = _g(
            "store_pool_episodes", "episodes stored per index pool (emb:*, task:*, ok:*, src:*)", ["pool"]
        )
        pb = _g("store_pool_bytes", "payload bytes stored per index pool", ["pool"])
        for pool, ps in sorted(st.pools.items()):
            if pool.startswith("ver:"):
                continue  # per-version storage is not a fleet figure and grows without bound
            pe.add_metric([pool], ps.episodes)
            pb.add_metric([pool], ps.bytes)
        return [*out, pe, pb]

    def _outcomes(self) -> list[Metric]:
        rows = self.store.outcome_totals()
        rollout = self.board.rollout_state()
        versions = sorted({int(r["version"]) for r in rows})  # type: ignore[call-overload]
        keep = set(versions[-self.cfg.metrics_max_versions :]) | {rollout.champion, rollout.canary}
        by_task: dict[tuple[str, str], list[int]] = {}
        by_ver: dict[tuple[str, str], list[int]] = {}
        by_robot: dict[tuple[str, str, str], list[int]] = {}
        for r in rows:
            vals = (int(r["episodes"]), int(r["successes"]), int(r["interventions"]))  # type: ignore[call-overload]
            emb, task, robot = str(r["embodiment"]), str(r["task"]), str(r["robot"])
            keys: list[tuple[dict, tuple]] = [(by_task, (emb, task)), (by_robot, (robot, emb, task))]
            if r["version"] in keep:
                keys.append((by_ver, (emb, str(r["version"]))))
            for table, key in keys:
                acc = table.setdefault(key, [0, 0, 0])
                for i, v in enumerate(vals):
                    acc[i] += v
        out: list[Metric] = []
        for prefix, table, labels in (
            ("", by_task, ["embodiment", "task"]),
            ("version_", by_ver, ["embodiment", "version"]),
            ("robot_", by_robot, ["robot", "embodiment", "task"]),
        ):
            fams = [
                _c(f"{prefix}episodes", "episodes recorded (all time)", labels),
                _c(f"{prefix}successes", "successful episodes (all time)", labels),
                _c(f"{prefix}interventions", "human interventions (all time)", labels),
            ]
            for key, acc in sorted(table.items()):
                for fam, v in zip(fams, acc, strict=True):
                    fam.add_metric(list(key), v)
            out += fams
        # the page's headline: last hour per embodiment, as gauges (no rate() history needed)
        now = time.time()
        hour = self.outcomes.window(
            self.store.cfg.stats_bucket_s, now - 3600 + self.store.cfg.stats_bucket_s, now
        )
        e = _g("episodes_last_hour", "episodes that ended in the last hour", ["embodiment"])
        s = _g(
            "success_rate_last_hour",
            "success rate of the episodes that ended in the last hour",
            ["embodiment"],
        )
        i = _g(
            "interventions_last_hour",
            "interventions in the episodes that ended in the last hour",
            ["embodiment"],
        )
        for emb, acc in sorted(hour.totals("embodiment").items()):
            e.add_metric([emb], acc[N])
            i.add_metric([emb], acc[INT])
            if acc[N]:
                s.add_metric([emb], acc[OK] / acc[N])
        return [*out, e, s, i]

    def _robots(self) -> list[Metric]:
        now = time.time()
        status = _g(
            "robot_status",
            "1 for the robot's heartbeat state (live/stale/down)",
            ["robot", "embodiment", "task", "status"],
        )
        counts = _g("robots", "robots per heartbeat state", ["status"])
        per_robot = {
            "heartbeat_age_seconds": _g(
                "robot_heartbeat_age_seconds", "seconds since the last heartbeat", ["robot"]
            ),
            "version": _g("robot_policy_version", "policy version the control loop runs", ["robot"]),
            "canary": _g("robot_canary", "1 when the robot is in the canary cohort", ["robot"]),
            "loop_hz": _g("robot_control_rate_hz", "achieved control rate", ["robot"]),
            "target_hz": _g("robot_target_rate_hz", "target control rate", ["robot"]),
            "jitter": _g("robot_jitter_p99_ms", "99th percentile control-loop jitter, ms", ["robot"]),
            "backlog": _g(
                "robot_spool_backlog_episodes", "episodes on the robot's disk not yet in the store", ["robot"]
            ),
            "starved": _c("robot_starved_ticks", "ticks where the action queue ran dry", ["robot"]),
            "swaps": _c("robot_swaps", "policy hot swaps performed", ["robot"]),
        }
        tally = dict.fromkeys(STATES, 0)
        for hb in self.board.heartbeats():
            state = liveness(hb, now)
            tally[state] += 1
            for s in STATES:
                status.add_metric([hb.robot_id, hb.embodiment, hb.task, s], float(s == state))
            for key, value in (
                ("heartbeat_age_seconds", now - hb.t),
                ("version", hb.policy_version),
                ("canary", float(hb.cohort == "canary")),
                ("loop_hz", hb.loop_hz),
                ("target_hz", hb.target_hz),
                ("jitter", hb.jitter_p99_ms),
                ("backlog", hb.spool_backlog),
                ("starved", hb.starved_ticks),
                ("swaps", hb.swaps),
            ):
                per_robot[key].add_metric([hb.robot_id], value)
        for s, n in tally.items():
            counts.add_metric([s], n)
        return [status, counts, *per_robot.values()]

    def _learner(self) -> list[Metric]:
        st = self.board.learner()
        fams = {
            k: _g(f"learner_{k}", doc)
            for k, doc in (
                ("step", "optimizer steps taken"),
                ("loss", "total training loss"),
                ("samples_per_second", "training throughput, samples/s"),
                ("lr", "learning rate"),
                ("episodes_seen", "episodes the learner has drawn from"),
                ("updated_timestamp_seconds", "unix time of the learner's latest report"),
            )
        }
        parts = _g("learner_loss_part", "loss components", ["part"])
        mixture = _g("learner_mixture_share", "realised share of each pool in recent batches", ["pool"])
        if st is not None:
            for k, v in (
                ("step", st.step),
                ("loss", st.loss),
                ("samples_per_second", st.samples_per_s),
                ("lr", st.lr),
                ("episodes_seen", st.episodes_seen),
                ("updated_timestamp_seconds", st.t),
            ):
                fams[k].add_metric([], v)
            for p, v in sorted(st.parts.items()):
                parts.add_metric([p], v)
            for p, v in sorted(st.mixture.items()):
                mixture.add_metric([p], v)
        events = self.board.version_events(count=1000)
        kinds = _g("version_events", "version events in the recorded history, per kind", ["kind"])
        for kind in ("published", "held_back", "canary", "promoted", "rolled_back", "rejected"):
            kinds.add_metric([kind], sum(e.kind == kind for e in events))
        latest = _g("latest_published_version", "newest version the learner published")
        published = [e.version for e in events if e.kind == "published"]
        if published:
            latest.add_metric([], max(published))
        return [*fams.values(), parts, mixture, kinds, latest]

    def _rollout(self) -> list[Metric]:
        state = self.board.rollout_state()
        champion = _g("rollout_champion_version", "fleet-wide champion version")
        champion.add_metric([], state.champion)
        canary = _g("rollout_canary_version", "version on trial in the canary cohort (absent: no trial)")
        robots = _g("rollout_canary_robots", "robots in the canary cohort")
        robots.add_metric([], len(state.canary_robots) if state.canary is not None else 0)
        if state.canary is not None:
            canary.add_metric([], state.canary)
        emb_l = ["embodiment"]
        stat = _g("rollout_gate_statistic", "the gate's statistic at its latest decision", emb_l)
        decision = _g("rollout_decision", "1 for the gate's latest decision", ["embodiment", "decision"])
        rates = {
            k: _g(f"rollout_{k}", doc, emb_l)
            for k, doc in (
                ("canary_success_rate", "canary success rate the gate saw"),
                ("champion_success_rate", "champion success rate the gate saw"),
                ("canary_episodes", "canary episodes the gate counted"),
                ("champion_episodes", "champion episodes the gate counted"),
            )
        }
        decisions = self.board.rollout_decisions(count=200)
        trial = state.canary if state.canary is not None else (decisions[-1].version if decisions else None)
        latest = {d.embodiment: d for d in decisions if d.embodiment != "*" and d.version == trial}
        for emb, d in sorted(latest.items()):
            stat.add_metric([emb], d.statistic)
            for k in DECISIONS:
                decision.add_metric([emb, k], float(d.decision == k))
            rates["canary_episodes"].add_metric([emb], d.canary_episodes)
            rates["champion_episodes"].add_metric([emb], d.champion_episodes)
            if d.canary_episodes:
                rates["canary_success_rate"].add_metric([emb], d.canary_successes / d.canary_episodes)
            if d.champion_episodes:
                rates["champion_success_rate"].add_metric([emb], d.champion_successes / d.champion_episodes)
        return [champion, canary, robots, stat, decision, *rates.values()]


def metrics_registry(collector: FleetCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
