"""An actor process in trouble: SIGKILLed mid-run while the replay store is unreachable, it loses no finished
episode; sent SIGTERM, it stops cleanly and delivers what it recorded. The real `fleet actor` command runs in a
subprocess against a real redis-server (paused with SIGSTOP for the outage)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from actors.embodiments import schemas
from fleet.config import ReplayConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.spool import Spool
from fleet.status import StatusBoard

REPO = Path(__file__).resolve().parents[2]


class ActorProcess:
    """`python -m fleet.cli_actor` for a scripted franka doing reach, 3x faster than real time."""

    def __init__(self, data: Path, server: EmbeddedRedis, robot: str):
        env = {**os.environ, "MOLMOFLEET_REDIS_PASSWORD": server.password, "PYTHONUNBUFFERED": "1"}
        env.setdefault("MUJOCO_GL", "egl")
        sets = [
            f"data_dir={data}",
            f"spool.dir={data / 'spool'}",
            f"redis.url={server.url}",
            "actors.time_scale=3",
            "actors.max_episode_s=1.2",
            "actors.image_size=48",
        ]
        cmd = [
            sys.executable,
            "-m",
            "fleet.cli_actor",
            "--robot",
            robot,
            "--embodiment",
            "franka",
            "--task",
            "reach",
            "--policy",
            "scripted",
            "--episodes",
            "0",
        ]
        for item in sets:
            cmd += ["--set", item]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def episodes(self, want: int, timeout_s: float) -> list[str]:
        """The next ``want`` "episode ..." lines (fewer if the process dies or time runs out)."""
        got: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < want and (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if line.startswith("episode "):
                got.append(line)
        return got

    def finish(self, timeout_s: float = 30) -> list[str]:
        """Wait for the exit; the rest of its output."""
        self.proc.wait(timeout_s)
        self._reader.join(5)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        self.output += rest
        return rest

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def episode_ids(lines: list[str]) -> set[str]:
    return {line.split()[1] for line in lines if line.startswith("episode ")}


def test_sigkill_mid_run_loses_no_finished_episode(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    data = tmp_path / "fleet"
    actor = ActorProcess(data, redis_server, "franka-09")
    paused = False
    try:
        lines = actor.episodes(2, timeout_s=90)
        assert len(lines) == 2, f"actor exited with {actor.proc.poll()} before recording 2 episodes"
        # the store stops answering: the next episodes can only be in the spool when the actor dies
        os.kill(redis_server.pid, signal.SIGSTOP)
        paused = True
        lines += actor.episodes(2, timeout_s=60)
        assert len(lines) == 4
        time.sleep(0.2)  # somewhere in the fifth episode
        actor.proc.send_signal(signal.SIGKILL)
        lines += actor.finish()  # anything printed before it died
    finally:
        if paused:
            os.kill(redis_server.pid, signal.SIGCONT)
        actor.close()
    recorded = episode_ids(lines)
    assert actor.proc.returncode == -signal.SIGKILL and len(recorded) >= 4

    client = redis_server.client()
    store = ReplayStore(client, ReplayConfig(), schemas=schemas(), decode_workers=0)
    try:
        # the next actor over the same spool directory re-sends whatever the killed one had not delivered
        restarted = Spool(data / "spool" / "franka-09", store.append)
        assert len(restarted.pending()) >= 2  # recorded while the store was down: on disk only
        restarted.flush_once()
        assert restarted.pending() == [] and list(restarted.dir.glob("*.tmp")) == []
        stored = set(store.episode_ids())
        assert recorded <= stored, f"lost: {recorded - stored}"
        assert store.deadletters() == []  # nothing half-written
        assert len(stored - recorded) <= 1  # at most one spooled in the instant before it was announced
        for meta in store.metas(sorted(stored)):
            assert meta is not None and meta.robot_id == "franka-09" and meta.source == "demo"
    finally:
        store.close()
        client.close()


def test_sigterm_stops_cleanly_and_delivers_what_was_recorded(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    actor = ActorProcess(tmp_path / "fleet", redis_server, "franka-10")
    try:
        lines = actor.episodes(2, timeout_s=90)
        assert len(lines) == 2
        t = time.monotonic()
        actor.proc.send_signal(signal.SIGTERM)
        lines += actor.finish(timeout_s=30)
        stopped_s = time.monotonic() - t
    finally:
        actor.close()
    assert actor.proc.returncode == 0 and stopped_s < 10
    done = [line for line in actor.output if line.startswith("done:")]
    assert len(done) == 1 and "0 episodes left in the spool" in done[0]
    client = redis_server.client()
    store = ReplayStore(client, ReplayConfig(), schemas=schemas(), decode_workers=0)
    try:
        assert set(store.episode_ids()) == episode_ids(
            lines
        )  # the unfinished episode was dropped, not stored
        (hb,) = [h for h in StatusBoard(client).heartbeats() if h.robot_id == "franka-10"]  # the final beat
        assert hb.episodes_sent == len(episode_ids(lines)) and hb.spool_backlog == 0
    finally:
        store.close()
        client.close()
