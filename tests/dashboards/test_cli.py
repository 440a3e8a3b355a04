"""``fleet dashboard``: refuses unsafe bindings with a clear message, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from fleet.cli_dashboard import dashboard
from fleet.redis_server import free_port

ROOT = Path(__file__).parents[2]


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(dashboard)
    return app


def test_refuses_remote_binding_without_flag_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.delenv("MOLMOFLEET_DASHBOARD_TOKEN", raising=False)
    res = runner.invoke(_cli(), ["--host", "0.0.0.0"])
    assert res.exit_code == 2 and "allow_remote" in res.output
    res = runner.invoke(_cli(), ["--host", "0.0.0.0", "--allow-remote"])
    assert res.exit_code == 2 and "needs a token" in res.output


def test_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """With no redis.url the command starts its own redis-server; SIGTERM must stop both, cleanly."""
    port = free_port()
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "dashboard": {"port": port}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLMOFLEET_")}
    code = "import typer; from fleet.cli_dashboard import dashboard; typer.run(dashboard)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "dashboard did not come up"
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/api/summary").json()["empty"] is True
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}/" in out
        # the embedded redis-server was shut down by the command on its way out, not orphaned
        assert "ready to exit" in (tmp_path / "data" / "redis" / "redis.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
