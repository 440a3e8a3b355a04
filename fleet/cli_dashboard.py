"""``fleet dashboard``: config -> Redis -> dashboard app -> uvicorn, and a threaded server for the demo and tests.

Part of the composition root (with fleet/cli.py, which registers ``dashboard`` as a command). uvicorn handles
SIGINT/SIGTERM itself: it stops accepting, finishes open requests, and returns, so the Redis client (and an
embedded redis-server, when no URL is configured) are closed on the way out. Access logs are off: a
``?token=`` query would otherwise land in them.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from rich.console import Console

from dashboards.access import AccessError, check_binding, is_loopback
from dashboards.app import create_app
from fleet.config import DashboardConfig, FleetConfig
from fleet.redis_server import redis_for
from fleet.replay import ReplayStore
from fleet.status import StatusBoard

console = Console(stderr=True)


def _server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            lifespan="off",
        )
    )


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def run_until_signal(server: uvicorn.Server) -> None:
    """Run ``server`` in this (main) thread until SIGINT or SIGTERM, then return normally.

    uvicorn shuts down gracefully on either signal and then re-raises it against the handler that was there
    before; with the default one the process would die right there, skipping the caller's cleanup (closing
    Redis, stopping an embedded redis-server). Our handler turns the re-raised signal into a return.
    """
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class DashboardServer:
    """A dashboard served from a background thread. ``stop()`` shuts it down and waits for the thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str):
        self.server = server
        self.thread = thread
        self.host = host

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 15.0
) -> DashboardServer:
    """Serve ``app`` on ``host:port`` (0: a free port) from a daemon thread; returns once it accepts connections."""
    if not is_loopback(host) and not getattr(app.state, "remote_ok", False):
        raise AccessError(
            f"dashboard: refusing to serve on {host!r}: build the app with "
            "DashboardConfig(allow_remote=True) and a token to serve beyond loopback"
        )
    server = _server(app, host, port)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"dashboard server on {host}:{port} exited while starting (port in use?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"dashboard server on {host}:{port} not up after {timeout_s} s")
        time.sleep(0.02)
    return DashboardServer(server, thread, host)


def dashboard(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="fleet YAML config")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. --set dashboard.refresh_s=5")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="address to bind (default dashboard.host, 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default dashboard.port)")] = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="allow a non-loopback host; needs a token in the env")
    ] = False,
) -> None:
    """Serve the fleet dashboard (page, JSON API, /metrics). Loopback only unless --allow-remote and a token."""
    try:
        cfg = FleetConfig.load(config, set_)
        overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        if allow_remote:
            overrides["allow_remote"] = True
        dash = DashboardConfig.model_validate({**cfg.dashboard.model_dump(), **overrides})
        token = dash.token()
        check_binding(dash, token)
    except (ValidationError, AccessError, ValueError, OSError) as e:
        console.print(f"[red]fleet dashboard: {e}[/]")
        raise typer.Exit(2) from None
    with redis_for(cfg.redis, cfg.path("redis")) as (client, _):
        store = ReplayStore(client, cfg.replay, decode_workers=0)
        board = StatusBoard(client, prefix=cfg.replay.prefix)
        app = create_app(store, board, dash, token)
        shown = f"[{dash.host}]" if ":" in dash.host else dash.host
        console.print(
            f"[bold]molmofleet dashboard[/] on http://{shown}:{dash.port}/"
            + (" (token required)" if token else "")
            + "  metrics: /metrics  · Ctrl-C to stop"
        )
        try:
            run_until_signal(_server(app, dash.host, dash.port))
        finally:
            store.close()
