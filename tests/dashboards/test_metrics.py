"""Prometheus /metrics on a seeded store, and the Grafana dashboard that must use only what /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboards.conftest import expected

GRAFANA = Path(__file__).parents[2] / "dashboards" / "grafana" / "fleet.json"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m[(name, frozenset(labels.items()))]


def test_metrics_show_the_page_figures(api: TestClient) -> None:
    resp = api.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    m = samples(resp.text)
    assert value(m, "molmofleet_up") == 1
    total, hour = expected(False, "embodiment"), expected(True, "embodiment")
    for emb, (n, ok, interventions) in total.items():
        task = {"franka": "reach", "yam_bimanual": "fold", "so101": "pick"}[emb]
        assert value(m, "molmofleet_episodes_total", embodiment=emb, task=task) == n
        assert value(m, "molmofleet_successes_total", embodiment=emb, task=task) == ok
        assert value(m, "molmofleet_interventions_total", embodiment=emb, task=task) == interventions
    for emb, (n, ok, _) in hour.items():
        assert value(m, "molmofleet_episodes_last_hour", embodiment=emb) == n
        assert value(m, "molmofleet_success_rate_last_hour", embodiment=emb) == pytest.approx(ok / n)
    for robot, (n, ok, _) in expected(False, "robot").items():
        emb, task = {
            "franka-01": ("franka", "reach"),
            "franka-02": ("franka", "reach"),
            "yam-01": ("yam_bimanual", "fold"),
            "so101-01": ("so101", "pick"),
        }[robot]
        assert value(m, "molmofleet_robot_episodes_total", robot=robot, embodiment=emb, task=task) == n
        assert value(m, "molmofleet_robot_successes_total", robot=robot, embodiment=emb, task=task) == ok
    assert value(m, "molmofleet_version_episodes_total", embodiment="franka", version="2") == 4
    assert (
        value(m, "molmofleet_robots", status="live") == 2
        and value(m, "molmofleet_robots", status="down") == 1
    )
    assert (
        value(
            m, "molmofleet_robot_status", robot="franka-02", embodiment="franka", task="reach", status="stale"
        )
        == 1
    )
    assert value(m, "molmofleet_robot_spool_backlog_episodes", robot="so101-01") == 7
    assert value(m, "molmofleet_robot_canary", robot="franka-01") == 1
    assert (
        value(m, "molmofleet_rollout_champion_version") == 1
        and value(m, "molmofleet_rollout_canary_version") == 2
    )
    assert value(m, "molmofleet_rollout_gate_statistic", embodiment="franka") == pytest.approx(0.7312)
    assert value(m, "molmofleet_rollout_decision", embodiment="franka", decision="wait") == 1
    assert value(m, "molmofleet_rollout_canary_success_rate", embodiment="franka") == pytest.approx(0.75)
    assert value(m, "molmofleet_learner_step") == 450
    assert value(m, "molmofleet_learner_loss_part", part="flow_mse") == pytest.approx(0.08)
    assert value(m, "molmofleet_learner_mixture_share", pool="rehearsal") == pytest.approx(0.2)
    assert value(m, "molmofleet_version_events", kind="published") == 2
    assert value(m, "molmofleet_latest_published_version") == 2
    assert value(m, "molmofleet_store_episodes") == sum(v[0] for v in total.values())
    assert value(m, "molmofleet_store_pool_episodes", pool="emb:franka") == total["franka"][0]
    assert value(m, "molmofleet_store_capacity_bytes") == 2048 * 1024 * 1024
    assert "mlflow-pw" not in resp.text


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "expr" and isinstance(v, str)] + [
            e for v in node.values() for e in _exprs(v)
        ]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_grafana_dashboard_is_valid_and_uses_only_exported_metrics(api: TestClient) -> None:
    dash = json.loads(GRAFANA.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            assert p["datasource"]["uid"] == "${datasource}"
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "rolling"}

    exported = {s[0] for s in samples(api.get("/metrics").text)}
    used = {name for expr in _exprs(dash) for name in re.findall(r"\bmolmofleet_[a-z0-9_]+", expr)}
    assert used, "the dashboard queries nothing"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    # the figures an operator looks for first are on it
    for name in (
        "molmofleet_successes_total",
        "molmofleet_version_successes_total",
        "molmofleet_robot_status",
        "molmofleet_rollout_gate_statistic",
        "molmofleet_learner_loss",
        "molmofleet_store_bytes",
    ):
        assert name in used, name
    assert len(dash["annotations"]["list"]) >= 2  # version events on the time axis
