"""The policy server's Prometheus metrics and its HTTP endpoint (`/metrics`, `/healthz`).

Metrics live in the server's own registry (several servers in one process never collide), named
`molmofleet_policy_server_*`:

    queue_depth              gauge      requests waiting for a batch
    batch_size               histogram  requests per model call
    stage_seconds{stage}     histogram  queue (arrival -> batch), collate, prefix, depth, expert, total
    requests_total{outcome}  counter    answered requests: ok or the error code
    chunks_total{version}    counter    chunks served per weights version
    depth_cells_total{kind}  counter    depth cells repredicted (decoded) or replayed (teacher-forced)
    duplicates_total{kind}   counter    retried ids answered once, replayed messages refused
    versions_loaded, champion_version, robots   gauges
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

PREFIX = "molmofleet_policy_server"
STAGES = ("queue", "collate", "prefix", "depth", "expert", "total")
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    """Every metric the server updates, in a private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "requests waiting for a batch", registry=r)
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "requests per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_seconds",
            "seconds per request and stage",
            ["stage"],
            buckets=_SECONDS,
            registry=r,
        )
        self.requests = Counter(f"{PREFIX}_requests", "answered requests by outcome", ["outcome"], registry=r)
        self.chunks = Counter(f"{PREFIX}_chunks", "chunks served by weights version", ["version"], registry=r)
        self.depth_cells = Counter(
            f"{PREFIX}_depth_cells",
            "depth cells decoded (repredicted) or teacher-forced (replayed)",
            ["kind"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicates",
            "repeated request ids: retry (answered once) or replay (refused)",
            ["kind"],
            registry=r,
        )
        self.versions_loaded = Gauge(f"{PREFIX}_versions_loaded", "weights versions held", registry=r)
        self.champion_version = Gauge(f"{PREFIX}_champion_version", "version served by default", registry=r)
        self.robots = Gauge(f"{PREFIX}_robots", "robots with a MolmoThink cache", registry=r)

    def observe_stages(self, timings: dict[str, float], rows: int = 1) -> None:
        """Per-request stage seconds (a batch stage counts once per request it served)."""
        for stage, seconds in timings.items():
            hist = self.stage_seconds.labels(stage)
            for _ in range(rows):
                hist.observe(seconds)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample by its full name (tests and health)."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds must not fill the log


class _ThreadingServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: object, client_address: object) -> None:
        # one thread per connection: a slow scraper never blocks the health probe
        threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()

    def _handle(self, request: object, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class MetricsEndpoint:
    """`/healthz` (JSON from `health()`, 503 when it says not ok) and Prometheus text on every other path."""

    def __init__(self, metrics: ServingMetrics, health: Callable[[], dict], host: str, port: int) -> None:
        prometheus = make_wsgi_app(metrics.registry)

        def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                report = health()
                status = "200 OK" if report.get("status") == "ok" else "503 Service Unavailable"
                start_response(status, [("Content-Type", "application/json")])
                return [json.dumps(report).encode()]
            return prometheus(environ, start_response)

        self._httpd = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_Quiet)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="policy-metrics", daemon=True
        )  # 0.1 s poll: close() returns quickly
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
