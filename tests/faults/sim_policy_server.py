"""The fleet's policy server as a real `fleet policy-server` process, for fault runs: a tiny MolmoAct2 checkpoint
that knows every embodiment, and a process that can be SIGKILLed and started again on the same port and keys,
as a supervisor (systemd, Kubernetes) would restart a crashed server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from actors.policy_client import PolicyTimeout, RemotePolicyClient
from fleet import curve
from fleet.redis_server import free_port
from tests.faults.sim_fleet import REPO

RUN = "import typer; from fleet.cli_policy_server import policy_server; typer.run(policy_server)"


def tiny_checkpoint(where: Path) -> Path:
    """A randomly initialised tiny policy normalised by every embodiment's joint limits, saved to ``where``."""
    from actors.policy_client import InProcessPolicyClient
    from policy.checkpoint import save_checkpoint

    return save_checkpoint(where, InProcessPolicyClient.tiny(seed=0).policy)


def curve_keys(where: Path) -> Path:
    """A fleet key directory as `fleet keys generate` writes it: the server and the shared client keypair."""
    for name in (curve.SERVER, curve.CLIENT):
        curve.write_keypair(where, name, curve.generate_keypair())
    return where


class PolicyServerProcess:
    """`fleet policy-server` serving ``checkpoint`` as ``version`` on 127.0.0.1, CURVE when ``keys`` is set;
    ``args``: more options for the command (``--config``, ``--set``)."""

    def __init__(
        self,
        checkpoint: Path,
        logs: Path,
        version: int = 1,
        keys: Path | None = None,
        args: Sequence[str] = (),
    ):
        self.checkpoint, self.version, self.keys, self.args = checkpoint, version, keys, list(args)
        self.port = free_port()
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> PolicyServerProcess:
        """Start (or start again, on the same port and keys) without waiting for it to serve."""
        assert self.proc is None or self.proc.poll() is not None, "policy server already running"
        self.starts += 1
        self.log = self.logs / f"policy-server.{self.starts}.log"
        cmd = [sys.executable, "-c", RUN, "--checkpoint", str(self.checkpoint), "--port", str(self.port),
               "--version", str(self.version), "--depth-mode", "none", "--torch-threads", "1",
               *(["--curve-dir", str(self.keys)] if self.keys else []), *self.args]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait_serving(self, timeout_s: float) -> float:
        """Seconds until it answers a ping (as a fleet client: with the fleet's CURVE keys if it has any)."""
        assert self.proc is not None
        t0 = time.monotonic()
        keys = curve.load_client_keys(self.keys) if self.keys else None
        client = RemotePolicyClient(self.address, "probe", timeout_s=1.0, retries=0, curve=keys)
        try:
            while True:  # torch and transformers take a while to import on a busy box
                try:
                    assert client.ping() == self.version
                    return time.monotonic() - t0
                except PolicyTimeout:
                    if self.proc.poll() is not None or time.monotonic() - t0 > timeout_s:
                        raise AssertionError(
                            f"policy server not serving (exit {self.proc.poll()}):\n{self.log_text()[-3000:]}"
                        ) from None
        finally:
            client.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would: no drain, no goodbye to its clients."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (it serves what is queued, then prints its health); the exit status. Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""
