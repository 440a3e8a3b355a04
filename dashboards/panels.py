"""What each dashboard panel shows, as JSON-ready dicts built from the replay store and the status board.

Read-only: nothing here writes to Redis. Every query is bounded (a fixed number of stream entries, the fleet's
robots, or time windows rolled up by ``OutcomeReader``). No configuration value is echoed back except the
harmless display settings, so no secret can leak through a panel.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from dashboards.outcomes import BYTES, INT, OK, N, OutcomeReader, Window
from dashboards.series import bucket_width, parse_window, rate_with_band, rolling_series
from fleet.config import DashboardConfig
from fleet.replay import ReplayStore
from fleet.status import RolloutState, StatusBoard, liveness

GROUPS = ("embodiment", "version", "robot", "task")
MAX_SERIES = 12  # lines per chart; the rest are counted in "omitted"
DAY = 86400.0


def mlflow_run_url(tracking_uri: str, run_id: str) -> str | None:
    """A browser link to an MLflow run, only for an http(s) tracking server; credentials in the URI are dropped."""
    if not run_id or not tracking_uri:
        return None
    u = urlsplit(tracking_uri)
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    netloc = f"{host}:{u.port}" if u.port else host
    return f"{u.scheme}://{netloc}{u.path.rstrip('/')}/#/runs/{run_id}"


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.lstrip("-").isdigit() else (1 << 62, v)


class FleetPanels:
    """Builds each panel's payload. ``now`` is passed in so tests can pin time."""

    def __init__(
        self,
        store: ReplayStore,
        board: StatusBoard,
        cfg: DashboardConfig,
        outcomes: OutcomeReader | None = None,
    ):
        self.store = store
        self.board = board
        self.cfg = cfg
        self.outcomes = outcomes or OutcomeReader(store, cfg)
        self.base = store.cfg.stats_bucket_s

    def _last_hour(self, now: float) -> Window:
        # raw-width intervals covering the last hour (to the store's bucket granularity)
        return self.outcomes.window(self.base, now - 3600 + self.base, now)

    # ------------------------------------------------------------------------------------------ summary

    def summary(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        st = self.store.stats()
        hbs = self.board.heartbeats()
        states = [liveness(h, now) for h in hbs]
        hour = self._last_hour(now).totals("all").get("all", [0, 0, 0, 0, 0])
        all_n = all_ok = 0
        for row in self.store.outcome_totals():
            all_n += int(row["episodes"])  # type: ignore[call-overload]
            all_ok += int(row["successes"])  # type: ignore[call-overload]
        rollout = self.board.rollout_state()
        learner = self.board.learner()
        return {
            "now": now,
            "refresh_s": self.cfg.refresh_s,
            "bucket_s": self.base,
            "empty": st.ingested.episodes == 0 and not hbs,
            "robots": {"total": len(hbs), **{s: states.count(s) for s in ("live", "stale", "down")}},
            "episodes": {
                "stored": st.stored.episodes,
                "ingested": st.ingested.episodes,
                "last_hour": hour[N],
            },
            "success": {"last_hour": rate_with_band(hour[OK], hour[N]), "all": rate_with_band(all_ok, all_n)},
            "interventions_last_hour": hour[INT],
            "champion": rollout.champion,
            "canary": rollout.canary,
            "canary_robots": len(rollout.canary_robots),
            "learner": None
            if learner is None
            else {"step": learner.step, "loss": learner.loss, "age_s": now - learner.t},
            "store": {
                "stored_bytes": st.stored.bytes,
                "capacity_bytes": st.capacity_bytes,
                "fill": st.stored.bytes / st.capacity_bytes if st.capacity_bytes else 0.0,
            },
        }

    # ------------------------------------------------------------------------------------------ success

    def success(
        self,
        group_by: str = "embodiment",
        window: str | float = "6h",
        rolling: str | float | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        if group_by not in GROUPS:
            raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
        now = now or time.time()
        window_s = parse_window(window, self.cfg.max_window_s)
        width = bucket_width(window_s, self.cfg.max_points, self.base)
        # the rolling window is at most the window itself: it sets how much history is read before the window
        rolling_s = min(window_s, parse_window(rolling, window_s)) if rolling is not None else window_s / 6
        rolling_s = max(width, rolling_s)
        k = max(1, round(rolling_s / width))
        # read k-1 intervals before the window so the first points have a full rolling window behind them
        win = self.outcomes.window(width, now - window_s - (k - 1) * width, now)
        skip = k - 1  # those extra intervals feed the rolling sums but are not drawn
        ts = [min(t0 + width, now) for t0 in win.starts][skip:]
        totals = win.totals(group_by)
        values = sorted(totals, key=_version_key if group_by == "version" else lambda v: (-totals[v][N], v))
        if group_by == "version":
            values = values[-MAX_SERIES:]  # the newest versions
        else:
            values = values[:MAX_SERIES]  # the busiest embodiments / robots / tasks
        series = [self._series(win, group_by, v, k, skip) for v in values]
        overall = self._series(win, "all", "all", k, skip)
        events = [
            e.model_dump() for e in self.board.version_events(count=1000) if now - window_s <= e.t <= now
        ]
        return {
            "group_by": group_by,
            "window_s": window_s,
            "width_s": width,
            "rolling_s": k * width,
            "now": now,
            "partial": win.partial,
            "empty": not any(s["episodes"] for s in series),
            "t": ts,
            "series": series,
            "overall": overall,
            "omitted": max(0, len(totals) - len(values)),
            "events": events,
        }

    @staticmethod
    def _series(win: Window, dim: str, value: str, k: int, skip: int) -> dict[str, Any]:
        counts = [(0, 0) if c is None else (c[N], c[OK]) for c in win.counts(dim, value)]
        cols = rolling_series(counts, k)
        shown = counts[skip:]
        n, ok = sum(c[0] for c in shown), sum(c[1] for c in shown)
        label = f"v{value}" if dim == "version" else value
        return {
            "key": value,
            "label": label,
            **{c: v[skip:] for c, v in cols.items()},
            "episodes": n,
            "successes": ok,
            "total": rate_with_band(ok, n),
        }

    # ------------------------------------------------------------------------------------------ fleet

    def fleet(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        hour = self._last_hour(now).totals("robot")
        seen: dict[str, dict[str, Any]] = {}
        for row in self.store.outcome_totals():
            r = seen.setdefault(
                str(row["robot"]),
                {
                    "n": 0,
                    "ok": 0,
                    "int": 0,
                    "embodiment": row["embodiment"],
                    "task": row["task"],
                    "version": -1,
                },
            )
            r["n"] += row["episodes"]
            r["ok"] += row["successes"]
            r["int"] += row["interventions"]
            r["version"] = max(r["version"], row["version"])
        rows = []
        beats = {h.robot_id: h for h in self.board.heartbeats()}
        for robot in sorted(set(beats) | set(seen)):
            hb, tot, h = beats.get(robot), seen.get(robot, {}), hour.get(robot, [0, 0, 0, 0, 0])
            rows.append(
                {
                    "robot": robot,
                    "embodiment": hb.embodiment if hb else tot.get("embodiment"),
                    "task": hb.task if hb else tot.get("task"),
                    "status": liveness(hb, now) if hb else "unknown",
                    "heartbeat_age_s": now - hb.t if hb else None,
                    "cohort": hb.cohort if hb else None,
                    "version": hb.policy_version if hb else tot.get("version"),
                    "loop_hz": hb.loop_hz if hb else None,
                    "target_hz": hb.target_hz if hb else None,
                    "jitter_p99_ms": hb.jitter_p99_ms if hb else None,
                    "spool_backlog": hb.spool_backlog if hb else None,
                    "swaps": hb.swaps if hb else None,
                    "starved_ticks": hb.starved_ticks if hb else None,
                    "success_hour": rate_with_band(h[OK], h[N]),
                    "success_all": rate_with_band(tot.get("ok", 0), tot.get("n", 0)),
                    "interventions_per_hour": h[INT],
                    "episodes_hour": h[N],
                }
            )
        return {"now": now, "robots": rows}

    # ------------------------------------------------------------------------------------------ rollout

    def rollout(self, now: float | None = None) -> dict[str, Any]:
        """The trial running now (or the last one): per embodiment, the gate's latest decision and the canary and
        champion success since the canary started."""
        now = now or time.time()
        state = self.board.rollout_state()
        decisions = self.board.rollout_decisions(count=200)
        final = [d for d in decisions if d.embodiment == "*"]  # the controller's fleet-wide verdicts
        trial = state.canary if state.canary is not None else (decisions[-1].version if decisions else None)
        latest = {d.embodiment: d for d in decisions if d.embodiment != "*" and d.version == trial}
        embodiments = state.canary_embodiments if state.canary is not None else sorted(latest)
        live = self._live_counts(state, now) if state.canary is not None else {}
        gates = []
        for emb in embodiments:
            d = latest.get(emb)
            c = live.get(emb, {"canary": [0, 0], "champion": [0, 0]})
            gates.append(
                {
                    "embodiment": emb,
                    "version": trial,
                    "champion": d.champion if d else state.champion,
                    "verdict": state.verdicts.get(emb),
                    "decision": d.decision if d else None,
                    "statistic": d.statistic if d else None,
                    "test": d.test if d else None,
                    "t": d.t if d else None,
                    "canary_success": rate_with_band(d.canary_successes, d.canary_episodes) if d else None,
                    "champion_success": rate_with_band(d.champion_successes, d.champion_episodes)
                    if d
                    else None,
                    "live_canary": rate_with_band(c["canary"][1], c["canary"][0])
                    if state.canary is not None
                    else None,
                    "live_champion": rate_with_band(c["champion"][1], c["champion"][0])
                    if state.canary is not None
                    else None,
                }
            )
        outcome = None
        if state.canary is None and final and final[-1].version == trial:
            outcome = {"decision": final[-1].decision, "t": final[-1].t}
        cohorts: dict[tuple[str, str, int], int] = {}
        for hb in self.board.heartbeats():
            key = (hb.embodiment, hb.cohort, hb.policy_version)
            cohorts[key] = cohorts.get(key, 0) + 1
        return {
            "now": now,
            "champion": state.champion,
            "canary": state.canary,
            "canary_robots": state.canary_robots,
            "canary_since": state.canary_since if state.canary is not None else None,
            "trial": trial,
            "outcome": outcome,
            "gates": gates,
            "cohorts": [
                {"embodiment": e, "cohort": c, "version": v, "robots": n}
                for (e, c, v), n in sorted(cohorts.items())
            ],
            "recent": [d.model_dump() for d in reversed(decisions[-20:])],
        }

    def _live_counts(self, state: RolloutState, now: float) -> dict[str, dict[str, list[int]]]:
        """embodiment -> {"canary"|"champion": [episodes, successes]} since the canary started (to the interval:
        the same rolled-up, cached reads as the charts, so a trial of days costs no more than one of minutes)."""
        since = min(state.canary_since, now - self.base)
        win = self.outcomes.window(bucket_width(now - since, self.cfg.max_points, self.base), since, now)
        out: dict[str, dict[str, list[int]]] = {}
        for key, acc in win.totals("embodiment_version").items():
            emb, _, ver = key.rpartition("|")
            role = (
                "canary" if ver == str(state.canary) else "champion" if ver == str(state.champion) else None
            )
            if role is not None:
                c = out.setdefault(emb, {"canary": [0, 0], "champion": [0, 0]})[role]
                c[0] += acc[N]
                c[1] += acc[OK]
        return out

    # ------------------------------------------------------------------------------------------ learner

    def learner(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        st = self.board.learner()
        hist = self.board.learner_history(count=2000)
        stride = max(1, len(hist) // self.cfg.max_points)
        hist = hist[::stride]
        parts = sorted({p for h in hist for p in h.parts})
        events = self.board.version_events(count=1000)
        published = [e for e in events if e.kind == "published"]
        return {
            "now": now,
            "status": None
            if st is None
            else {**st.model_dump(exclude={"tracking_uri"}), "age_s": now - st.t},
            "mlflow_url": mlflow_run_url(st.tracking_uri, st.run_id) if st else None,
            "history": {
                "step": [h.step for h in hist],
                "t": [h.t for h in hist],
                "loss": [h.loss for h in hist],
                "samples_per_s": [h.samples_per_s for h in hist],
                "parts": {p: [h.parts.get(p) for h in hist] for p in parts},
            },
            "versions": {
                "published": len(published),
                "latest": published[-1].version if published else None,
                "recent": [e.model_dump() for e in reversed(events[-12:])],
            },
        }

    # ------------------------------------------------------------------------------------------ ingest

    def ingest(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        st = self.store.stats()
        day = self.outcomes.window(3600, now - DAY + 3600, now)
        hour = self._last_hour(now).totals("embodiment")
        day_tot = day.totals("embodiment")
        embs = sorted(set(day_tot) | {p[4:] for p in st.pools if p.startswith("emb:")})
        by_emb = []
        for emb in embs:
            h, d = hour.get(emb, [0, 0, 0, 0, 0]), day_tot.get(emb, [0, 0, 0, 0, 0])
            pool = st.pools.get(f"emb:{emb}")
            by_emb.append(
                {
                    "embodiment": emb,
                    "episodes_hour": h[N],
                    "bytes_hour": h[BYTES],
                    "episodes_24h": d[N],
                    "bytes_24h": d[BYTES],
                    "stored_episodes": pool.episodes if pool else 0,
                    "stored_bytes": pool.bytes if pool else 0,
                }
            )
        per_hour = {emb: [c[N] if c else 0 for c in day.counts("embodiment", emb)] for emb in embs}
        return {
            "now": now,
            "by_embodiment": by_emb,
            "hourly": {
                "t": day.starts,
                "episodes": per_hour,
                "bytes": {emb: [c[BYTES] if c else 0 for c in day.counts("embodiment", emb)] for emb in embs},
            },
            "store": {
                "stored": st.stored.model_dump(),
                "ingested": st.ingested.model_dump(),
                "evicted_episodes": st.evicted_episodes,
                "evicted_bytes": st.evicted_bytes,
                "reservoir": st.reservoir.model_dump(),
                "capacity_bytes": st.capacity_bytes,
                "fill": st.stored.bytes / st.capacity_bytes if st.capacity_bytes else 0.0,
                "deadletters": st.deadletters,
                "events": st.events,
            },
        }
