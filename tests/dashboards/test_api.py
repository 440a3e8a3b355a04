"""Dashboard JSON API against a real replay store and status board, seeded with known figures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from dashboards.app import create_app
from fleet.config import DashboardConfig, ReplayConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.status import StatusBoard
from tests.dashboards.conftest import EPISODES, Seeded, expected, seed
from tests.factories import SCHEMAS, synthetic_episode


def test_summary_headline_figures(api: TestClient) -> None:
    s = api.get("/api/summary").json()
    hour = expected(True, "embodiment")
    n_hour = sum(v[0] for v in hour.values())
    ok_hour = sum(v[1] for v in hour.values())
    total = expected(False, "embodiment")
    assert s["empty"] is False
    assert s["robots"] == {"total": 4, "live": 2, "stale": 1, "down": 1}
    assert s["episodes"]["last_hour"] == n_hour == 9
    assert s["success"]["last_hour"]["n"] == n_hour and s["success"]["last_hour"]["ok"] == ok_hour
    lo, hi = s["success"]["last_hour"]["lo"], s["success"]["last_hour"]["hi"]
    assert lo < ok_hour / n_hour < hi
    assert s["success"]["all"]["n"] == sum(v[0] for v in total.values())
    assert s["interventions_last_hour"] == sum(v[2] for v in hour.values())
    assert s["champion"] == 1 and s["canary"] == 2 and s["canary_robots"] == 1
    assert s["learner"]["step"] == 450
    assert s["episodes"]["stored"] == sum(len(e[2]) for e in EPISODES.values())


def test_success_by_embodiment_and_version(api: TestClient, seeded: Seeded) -> None:
    body = api.get("/api/success", params={"group_by": "embodiment", "window": "6h"}).json()
    assert body["width_s"] == 120 and len(body["t"]) <= 240 and body["partial"] is False
    totals = expected(False, "embodiment")
    got = {s["key"]: (s["episodes"], s["successes"]) for s in body["series"]}
    assert got == {k: (v[0], v[1]) for k, v in totals.items()}
    # the newest point's rolling window (window/6 = 1 h by default: 30 intervals of 2 min ending with the
    # current one) holds the episodes of the last 40 minutes
    franka, yam = (next(s for s in body["series"] if s["key"] == k) for k in ("franka", "yam_bimanual"))
    assert body["rolling_s"] == 3600
    assert franka["n"][-1] == 6 and franka["rate"][-1] == pytest.approx(5 / 6)
    assert (
        yam["n"][-1] == 3
        and yam["rate"][-1] == pytest.approx(1 / 3)
        and yam["lo"][-1] < 1 / 3 < yam["hi"][-1]
    )
    # a 30 min rolling window (15 intervals) holds those of 10-25 minutes ago, not the one of 30 minutes ago
    short = api.get("/api/success", params={"window": "6h", "rolling": "30m"}).json()
    franka, yam = (next(s for s in short["series"] if s["key"] == k) for k in ("franka", "yam_bimanual"))
    assert short["rolling_s"] == 1800
    assert franka["n"][-1] == 4 and franka["rate"][-1] == 1.0
    assert yam["n"][-1] == 2 and yam["rate"][-1] == 0.5 and yam["lo"][-1] < 0.5 < yam["hi"][-1]
    assert all(len(s["rate"]) == len(body["t"]) for s in body["series"])
    assert body["overall"]["episodes"] == sum(v[0] for v in totals.values())
    kinds = [(e["version"], e["kind"]) for e in body["events"]]
    assert kinds == [(1, "published"), (1, "promoted"), (2, "published"), (2, "canary")]

    by_ver = api.get("/api/success", params={"group_by": "version", "window": "1h"}).json()
    hour = expected(True, "version")
    assert {s["label"]: s["episodes"] for s in by_ver["series"]} == {f"v{k}": v[0] for k, v in hour.items()}
    assert [e["kind"] for e in by_ver["events"]] == ["published", "canary"]  # only the window's events

    robots = api.get("/api/success", params={"group_by": "robot", "window": "24h"}).json()
    assert {s["key"] for s in robots["series"]} == set(EPISODES)
    huge = api.get("/api/success", params={"window": "1h", "rolling": "90d"}).json()
    assert huge["rolling_s"] == 3600 and len(huge["t"]) <= 61  # bounded by the window, not by the request
    assert api.get("/api/success", params={"group_by": "colour"}).status_code == 400
    assert api.get("/api/success", params={"window": "soon"}).status_code == 400


def test_fleet_table(api: TestClient) -> None:
    rows = {r["robot"]: r for r in api.get("/api/fleet").json()["robots"]}
    hour, total = expected(True, "robot"), expected(False, "robot")
    assert [rows[r]["status"] for r in ("franka-01", "franka-02", "yam-01", "so101-01")] == [
        "live",
        "stale",
        "live",
        "down",
    ]
    f1 = rows["franka-01"]
    assert (f1["embodiment"], f1["task"], f1["version"], f1["cohort"]) == ("franka", "reach", 2, "canary")
    assert f1["loop_hz"] == 14.8 and f1["target_hz"] == 15
    for robot, r in rows.items():
        h, t = hour.get(robot, [0, 0, 0]), total[robot]
        assert (r["success_hour"]["n"], r["success_hour"]["ok"]) == (h[0], h[1]), robot
        assert (r["success_all"]["n"], r["success_all"]["ok"]) == (t[0], t[1]), robot
        assert r["interventions_per_hour"] == h[2], robot
    assert rows["so101-01"]["success_hour"]["rate"] is None and rows["so101-01"]["spool_backlog"] == 7


def test_rollout_learner_ingest(api: TestClient) -> None:
    r = api.get("/api/rollout").json()
    gate = r["gates"][0]
    assert (r["champion"], r["canary"], gate["embodiment"], gate["version"], gate["decision"]) == (
        1,
        2,
        "franka",
        2,
        "wait",
    )
    assert gate["statistic"] == pytest.approx(0.7312) and gate["test"] == "beta_binomial"
    assert gate["canary_success"]["rate"] == pytest.approx(0.75) and gate["champion_success"]["n"] == 6
    # live since the canary started (48 min ago): franka-01 on v2 3/4, franka-02 on the champion v1 2/2
    assert (gate["live_canary"]["ok"], gate["live_canary"]["n"]) == (3, 4)
    assert (gate["live_champion"]["ok"], gate["live_champion"]["n"]) == (2, 2)
    assert {"embodiment": "franka", "cohort": "canary", "version": 2, "robots": 1} in r["cohorts"]

    lr = api.get("/api/learner").json()
    assert lr["status"]["step"] == 450 and lr["status"]["parts"]["flow_mse"] == pytest.approx(0.08)
    assert lr["history"]["step"] == list(range(0, 500, 50)) and set(lr["history"]["parts"]) == {
        "flow_mse",
        "token_ce",
    }
    assert lr["versions"]["published"] == 2 and lr["versions"]["latest"] == 2
    assert lr["mlflow_url"] == "http://mlflow.internal:5000/#/runs/0123abcd"  # credentials dropped

    ing = api.get("/api/ingest").json()
    emb = {e["embodiment"]: e for e in ing["by_embodiment"]}
    hour = expected(True, "embodiment")
    assert {k: v["episodes_hour"] for k, v in emb.items()} == {k: hour.get(k, [0])[0] for k in emb}
    assert {k: v["episodes_24h"] for k, v in emb.items()} == {
        k: v[0] for k, v in expected(False, "embodiment").items()
    }
    assert sum(sum(v) for v in ing["hourly"]["episodes"].values()) == sum(
        len(e[2]) for e in EPISODES.values()
    )
    assert emb["franka"]["bytes_hour"] > 0 and ing["store"]["capacity_bytes"] == 2048 * 1024 * 1024
    assert (
        ing["store"]["reservoir"]["episodes"] == ing["store"]["stored"]["episodes"]
    )  # all fit the reservoir


def test_empty_store_says_so(store: ReplayStore) -> None:
    with TestClient(create_app(store, StatusBoard(store.r, store.p))) as api:
        s = api.get("/api/summary").json()
        assert s["empty"] is True and s["success"]["all"]["rate"] is None and s["learner"] is None
        body = api.get("/api/success").json()
        assert body["empty"] is True and body["series"] == [] and body["overall"]["rate"][-1] is None
        assert api.get("/api/fleet").json()["robots"] == []
        assert api.get("/api/rollout").json()["gates"] == []
        assert api.get("/api/learner").json()["status"] is None
        assert api.get("/api/ingest").json()["by_embodiment"] == []
        assert api.get("/healthz").json() == {"status": "ok"}


def test_months_of_data_bounded_and_cached(store: ReplayStore) -> None:
    """90 days of outcomes draw as <= max_points points; reads are capped per request; late episodes show up."""
    now = time.time()
    board = StatusBoard(store.r, store.p)
    for i in range(90 * 4):  # one episode every 6 h for 90 days
        ep = synthetic_episode(
            "so101",
            steps=4,
            size=4,
            seed=i,
            success=i % 3 == 0,
            robot="so101-01",
            end_time=now - i * 6 * 3600 - 30,
        )
        store.append(ep)
    cfg = DashboardConfig(max_points=120, max_raw_buckets=100)
    with TestClient(create_app(store, board, cfg)) as api:
        first = api.get("/api/success", params={"window": "90d", "group_by": "robot"}).json()
        assert first["partial"] is True and len(first["t"]) <= 121 and first["width_s"] == 86400
        seen = first["series"][0]["episodes"]
        for _ in range(10):  # each poll reads at most 100 raw buckets, newest first
            body = api.get("/api/success", params={"window": "90d", "group_by": "robot"}).json()
            assert body["series"][0]["episodes"] >= seen
            seen = body["series"][0]["episodes"]
            if not body["partial"]:
                break
        assert body["partial"] is False
        in_window = sum(1 for i in range(360) if i * 6 * 3600 + 30 <= body["window_s"])
        assert body["series"][0]["episodes"] == in_window
        assert body["series"][0]["successes"] == sum(1 for i in range(in_window) if i % 3 == 0)
        # a late episode (a spool backlog flushed after an outage) lands in an old, cached interval
        store.append(
            synthetic_episode(
                "so101", steps=4, size=4, seed=9999, robot="so101-01", end_time=now - 40 * 86400
            )
        )
        again = api.get("/api/success", params={"window": "90d", "group_by": "robot"}).json()
        assert again["series"][0]["episodes"] == in_window + 1


def test_store_outage_answers_503_and_recovers(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        # no retries: redis-py's default (10, with backoff) would make each failing request take seconds
        client = server.client(socket_timeout=1, retry=Retry(NoBackoff(), 0))
        store = ReplayStore(client, ReplayConfig(chunk_steps=8), SCHEMAS, 0)
        board = StatusBoard(store.r, store.p)
        seed(store, board, time.time())
        with TestClient(create_app(store, board)) as api:
            assert api.get("/api/summary").status_code == 200
            server.kill()
            for path in ("/api/summary", "/api/fleet", "/api/success", "/metrics", "/healthz"):
                resp = api.get(path)
                assert resp.status_code in (503, 200), path
                assert server.password not in resp.text
                assert str(server.port) not in resp.text or path == "/metrics"
            assert api.get("/api/summary").status_code == 503
            assert "molmofleet_up 0.0" in api.get("/metrics").text
            server = EmbeddedRedis(tmp_path / "r", password=server.password, port=server.port).start()
            assert api.get("/api/summary").json()["episodes"]["stored"] == sum(
                len(e[2]) for e in EPISODES.values()
            )
    finally:
        server.stop()


def test_reads_with_the_read_only_dashboard_user(tmp_path: Path) -> None:
    """Every route works with the ``dashboard`` ACL role, which may write nothing."""
    with EmbeddedRedis(tmp_path / "r", users={"dashboard": "dash-pw-0123456789"}) as server:
        admin = ReplayStore(server.client(), ReplayConfig(chunk_steps=8), SCHEMAS, 0)
        seed(admin, StatusBoard(admin.r, admin.p), time.time())
        ro = server.client(role="dashboard")
        store = ReplayStore(ro, ReplayConfig(chunk_steps=8), SCHEMAS, 0)
        with TestClient(create_app(store, StatusBoard(ro, store.p))) as api:
            for path in (
                "/api/summary",
                "/api/fleet",
                "/api/rollout",
                "/api/learner",
                "/api/ingest",
                "/metrics",
                "/api/success?group_by=version&window=24h",
                "/healthz",
            ):
                assert api.get(path).status_code == 200, path
