"""The dashboard web app: JSON API, Prometheus ``/metrics`` and the page, over one replay store and status board.

``create_app(store, board, cfg, token)`` is all a caller needs (the ``fleet dashboard`` command, the demo, tests).
The app only reads Redis. Routes run in the server's thread pool (redis-py is blocking); a Redis outage answers
503 and the page keeps polling until the store is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from dashboards.access import TokenGate, check_binding
from dashboards.metrics import FleetCollector, metrics_registry, render
from dashboards.outcomes import OutcomeReader
from dashboards.panels import FleetPanels
from fleet.config import DashboardConfig
from fleet.replay import ReplayStore
from fleet.status import StatusBoard

STATIC = Path(__file__).parent / "static"
# the page loads nothing from elsewhere (offline sites); inline styles only because the chart library sets them
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


def _json(payload: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def create_app(
    store: ReplayStore, board: StatusBoard, cfg: DashboardConfig | None = None, token: str | None = None
) -> FastAPI:
    """The app for ``store`` and ``board``. ``token`` (None: open, loopback only) gates every route but /healthz."""
    cfg = cfg or DashboardConfig()
    check_binding(cfg, token)
    outcomes = OutcomeReader(store, cfg)
    panels = FleetPanels(store, board, cfg, outcomes)
    registry = metrics_registry(FleetCollector(store, board, cfg, outcomes))

    app = FastAPI(title="molmofleet dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TokenGate, token=token)
    app.state.panels = panels
    # serve_in_thread checks it before binding beyond loopback
    app.state.remote_ok = cfg.allow_remote and token is not None

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(redis.RedisError)
    async def _store_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        # the class name only: redis-py messages can carry host names, never worth showing
        return _json({"error": f"replay store unreachable ({type(exc).__name__}); retrying"}, 503)

    @app.exception_handler(ValueError)
    async def _bad_request(_: Request, exc: ValueError) -> JSONResponse:
        return _json({"error": str(exc)}, 400)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            store.r.ping()
        except redis.RedisError:
            return _json({"status": "store unreachable"}, 503)
        return _json({"status": "ok"})

    @app.get("/api/summary")
    def summary() -> JSONResponse:
        return _json(panels.summary())

    @app.get("/api/success")
    def success(
        group_by: str = Query("embodiment", description="embodiment | version | robot | task"),
        window: str = Query("6h", description="time window: 30m, 6h, 7d, ..."),
        rolling: str | None = Query(None, description="rolling window for the rate (default window/6)"),
    ) -> JSONResponse:
        return _json(panels.success(group_by, window, rolling))

    @app.get("/api/fleet")
    def fleet() -> JSONResponse:
        return _json(panels.fleet())

    @app.get("/api/rollout")
    def rollout() -> JSONResponse:
        return _json(panels.rollout())

    @app.get("/api/learner")
    def learner() -> JSONResponse:
        return _json(panels.learner())

    @app.get("/api/ingest")
    def ingest() -> JSONResponse:
        return _json(panels.ingest())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
