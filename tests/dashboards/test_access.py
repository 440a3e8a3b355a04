"""Who may read the dashboard: loopback by default, a token beyond it; no secret ever reaches a response."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from dashboards.access import COOKIE, AccessError, check_binding
from dashboards.app import create_app
from fleet.cli_dashboard import serve_in_thread
from fleet.config import DashboardConfig, FleetConfig
from tests.dashboards.conftest import MLFLOW_URI, Seeded

TOKEN = "tok-0123456789abcdef-XYZ"
ROUTES = (
    "/",
    "/api/summary",
    "/api/fleet",
    "/api/rollout",
    "/api/learner",
    "/api/ingest",
    "/metrics",
    "/api/success?group_by=version&window=24h",
    "/static/dashboard.js",
)


def test_binding_rules() -> None:
    with pytest.raises(ValidationError, match="allow_remote"):
        DashboardConfig(host="0.0.0.0")
    with pytest.raises(ValidationError, match="allow_remote"):
        FleetConfig.load(overrides=["dashboard.host=dash.example.org"])
    remote = DashboardConfig(host="0.0.0.0", allow_remote=True)
    with pytest.raises(AccessError, match="MOLMOFLEET_DASHBOARD_TOKEN"):
        check_binding(remote, None)
    with pytest.raises(AccessError, match="shorter"):
        check_binding(remote, "short")
    check_binding(remote, TOKEN)
    check_binding(DashboardConfig(host="::1"), None)  # loopback needs nothing
    check_binding(DashboardConfig(host="localhost"), None)


def test_token_gate(seeded: Seeded) -> None:
    app = create_app(seeded.store, seeded.board, DashboardConfig(), token=TOKEN)
    with TestClient(app, follow_redirects=False) as c:
        assert c.get("/healthz").status_code == 200  # probes need no token and learn nothing
        denied = c.get("/api/summary")
        assert denied.status_code == 401 and "token" in denied.json()["error"]
        page = c.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "?token=" in page.text
        assert c.get("/metrics").status_code == 401
        assert (
            c.get("/api/summary", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code
            == 401
        )
        assert c.get("/api/summary", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/?token=nope").status_code == 401
        assert not c.cookies

        # the cookie flow: the token once in the URL, then a redirect without it and a session cookie
        go = c.get(f"/api/success?group_by=robot&token={TOKEN}")
        assert go.status_code == 303 and go.headers["location"] == "/api/success?group_by=robot"
        set_cookie = go.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert TOKEN not in go.headers["set-cookie"]  # the browser keeps an HMAC of it, not the token
        assert c.cookies.get(COOKIE)
        assert c.get("/api/success?group_by=robot").json()["group_by"] == "robot"
        assert c.get("/").status_code == 200
    # a crafted path cannot turn the redirect into one to another site
    with TestClient(app, follow_redirects=False) as fresh:
        off = fresh.get(f"/%2F%2Fevil.example/x?token={TOKEN}")
        assert off.status_code == 303 and off.headers["location"].startswith("/")
        assert not off.headers["location"].startswith("//")


def test_no_secret_reaches_any_response(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "redis-password-XYZ-123",
        "fleet-hmac-secret-XYZ-456",
        TOKEN,
        seeded.server.password,
        "mlflow-pw-XYZ",
    }
    monkeypatch.setenv("MOLMOFLEET_REDIS_PASSWORD", "redis-password-XYZ-123")
    monkeypatch.setenv("MOLMOFLEET_FLEET_SECRET", "fleet-hmac-secret-XYZ-456")
    monkeypatch.setenv("MOLMOFLEET_DASHBOARD_TOKEN", TOKEN)
    cfg = FleetConfig.load()
    app = create_app(seeded.store, seeded.board, cfg.dashboard, token=cfg.dashboard.token())
    assert MLFLOW_URI.split("@")[0].endswith("mlflow-pw-XYZ")  # the seeded tracking URI holds a password
    with TestClient(app) as c:
        for path in ROUTES:
            resp = c.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert resp.status_code == 200, path
            blob = resp.text + str(resp.headers)
            for secret in secrets:
                assert secret not in blob, (path, secret)


def test_remote_binding_over_real_http(seeded: Seeded) -> None:
    local = create_app(seeded.store, seeded.board, DashboardConfig())
    with pytest.raises(AccessError, match="allow_remote"):
        serve_in_thread(local, "0.0.0.0", 0)
    remote = create_app(seeded.store, seeded.board, DashboardConfig(host="0.0.0.0", allow_remote=True), TOKEN)
    server = serve_in_thread(remote, "0.0.0.0", 0)
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{url}/api/summary").status_code == 401
        ok = httpx.get(f"{url}/api/summary", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["robots"]["total"] == 4
        assert ok.headers["content-security-policy"].startswith("default-src 'self'")
    finally:
        server.stop()
    assert not server.thread.is_alive()
