"""A simulated fleet of real processes for fault-injection and soak runs, and its exact bookkeeping.

- `FleetRedis`: a real redis-server with AOF and ``appendfsync always`` (an acknowledged write is on disk), that
  can be SIGKILLed and restarted on the same port, password and data directory, or paused with SIGSTOP.
- `ActorProcess`: one `python -m fleet.cli_actor` (scripted policy unless told otherwise, faster than real
  time), optionally inside a network namespace; its "episode ..." lines are collected, its log goes to a file.
- `SpoolWatch`: how many episodes an actor durably put into its spool, read from the kernel (inotify sees each
  ``*.episode`` rename), so "sent" is exact even for a process SIGKILLed right after a write, and never depends
  on what a dying process managed to print.
- `SimFleet`: the above together, and `audit`: sent vs stored per robot, duplicates, dead letters.

Sent and stored are compared exactly at an audit: the actors are frozen (SIGSTOP), whatever is still in their
spools is delivered by the test the way a restarted actor would (the store's append is idempotent), the counts
are read, and the actors resume. Nothing is estimated.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from fleet.config import ReplayConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.spool import SUFFIX
from tests.faults.spool_watch import SpoolWatch

REPO = Path(__file__).resolve().parents[2]
PREFIX = "mf"

# the actors' settings for fault runs: 3x real time, short episodes, small images, quick timeouts and retries
ACTOR_SETS = (
    "actors.time_scale=3",
    "actors.max_episode_s=1.2",
    "actors.image_size=48",
    "actors.heartbeat_s=0.5",
    "redis.socket_timeout_s=1.0",
    "spool.retry_initial_s=0.1",
    "spool.retry_max_s=1.0",
)
# robot id -> (embodiment, task); the fault suite's short run uses the first two
ROBOTS = {
    "franka-01": ("franka", "reach"),
    "so101-01": ("so101", "reach"),
    "yam-01": ("yam_bimanual", "reach"),
}


# ---------------------------------------------------------------------------------------------- processes


class FleetRedis:
    """The fleet's redis-server, restartable on the same port, password and data (AOF, fsync per write)."""

    def __init__(self, data_dir: Path, maxmemory_mb: int = 0):
        self.server = EmbeddedRedis(data_dir, appendfsync="always", maxmemory_mb=maxmemory_mb)
        self.paused = False

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def password(self) -> str:
        return self.server.password

    @property
    def pid(self) -> int:
        assert self.server.pid is not None, "redis-server is not running"
        return self.server.pid

    def start(self) -> FleetRedis:
        self.server.start()
        return self

    def kill(self) -> None:
        self.resume()
        self.server.kill()

    def restart(self) -> None:
        s = self.server
        self.server = EmbeddedRedis(
            s.data_dir, password=s.password, port=s.port, appendfsync="always", maxmemory_mb=s.maxmemory_mb
        ).start()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.server.pid is not None:
            os.kill(self.server.pid, signal.SIGCONT)
        self.paused = False

    def client(self, **kw: object) -> redis.Redis:
        return self.server.client(**kw)

    def stop(self) -> None:
        self.resume()
        self.server.stop()


class ActorProcess:
    """`python -m fleet.cli_actor` for one robot; ``netns``: run it inside that network namespace; ``policy``:
    its ``--policy`` (e.g. tcp://host:port of a policy server)."""

    def __init__(
        self,
        robot: str,
        embodiment: str,
        task: str,
        data: Path,
        redis_url: str,
        password: str,
        sets: Iterable[str] = (),
        netns: str | None = None,
        seed: int = 0,
        policy: str = "scripted",
    ):
        self.robot = robot
        self.log_path = data / "logs" / f"{robot}.{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MOLMOFLEET_REDIS_PASSWORD": password,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
        env.setdefault("MUJOCO_GL", "egl")
        cmd = [
            *(["ip", "netns", "exec", netns] if netns else []),
            sys.executable,
            "-m",
            "fleet.cli_actor",
            "--robot",
            robot,
            "--embodiment",
            embodiment,
            "--task",
            task,
            "--policy",
            policy,
            "--episodes",
            "0",
            "--seed",
            str(seed),
        ]
        for item in (
            f"data_dir={data}",
            f"spool.dir={data / 'spool'}",
            f"redis.url={redis_url}",
            *ACTOR_SETS,
            *sets,
        ):
            cmd += ["--set", item]
        self._log = self.log_path.open("wb")
        # ip netns exec execs the command: the pid is the actor's either way
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self.printed: list[str] = []  # ids of the episodes it announced
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"read-{robot}")
        self._reader.start()
        self.paused = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith("episode "):
                self.printed.append(line.split()[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.alive():
            os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, as a power cut or OOM killer would."""
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (clean stop: the spool gets a few seconds to deliver); the exit status."""
        self.resume()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reader.join(5)
        return self.proc.returncode

    def wait_exit(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.resume()
        if self.alive():
            self.kill()
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


# ---------------------------------------------------------------------------------------------- the fleet


@dataclass
class Audit:
    """Sent vs stored at one instant, with every spool emptied."""

    sent: dict[str, int]  # episodes each robot put into its spool (inotify)
    stored: dict[str, int]  # distinct stored episodes per robot
    lost: int  # sent but not stored
    duplicated: int  # stored more than once: count beyond sent, or the same (robot, seed, start) twice
    deadletters: int
    # announced ids (the actors' "episode ..." lines) the store never took
    unlisted: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (
            self.sent == self.stored
            and not self.lost
            and not self.duplicated
            and not self.deadletters
            and not self.unlisted
        )

    def __str__(self) -> str:
        return (
            f"sent={self.sent} stored={self.stored} lost={self.lost} duplicated={self.duplicated} "
            f"deadletters={self.deadletters} unlisted={self.unlisted[:3]}"
        )


@dataclass
class FaultRecord:
    """One injected fault, for the report."""

    fault: str
    injected: int  # faults of this kind injected
    in_flight: int  # episodes spooled but not yet stored when the fault was lifted (max over injections)
    lost: int
    duplicated: int
    recovery_s: float  # fault lifted -> everything in flight stored and every actor spooling again (max)
    detail: str = ""

    @classmethod
    def checked(
        cls, audit: Audit, fault: str, flight: list[int], recovery: list[float], detail: str
    ) -> FaultRecord:
        """The record of ``fault`` (injected once per ``recovery`` entry), once its audit is exact."""
        assert audit.exact, f"{fault}: {audit}"
        return cls(fault, len(recovery), max(flight), audit.lost, audit.duplicated, max(recovery), detail)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SimFleet:
    """Redis + actor processes under ``root``; every process is stopped by `close`, also after a failure."""

    def __init__(self, root: Path, redis_url: str | None = None, password: str | None = None):
        self.root = root
        self.redis: FleetRedis | None = None
        if redis_url is None:
            self.redis = FleetRedis(root / "redis").start()
            redis_url, password = self.redis.url, self.redis.password
        assert password is not None
        self.redis_url, self.password = redis_url, password
        self.actors: dict[str, ActorProcess] = {}
        self.watches: dict[str, SpoolWatch] = {}
        self.printed: dict[str, set[str]] = {}  # robot -> ids announced by any of its processes
        self._client: redis.Redis | None = None
        self._store: ReplayStore | None = None

    # ------------------------------------------------------------------------------------------ processes

    def spool_dir(self, robot: str) -> Path:
        return self.root / "spool" / robot

    def watch(self, robot: str) -> SpoolWatch:
        if robot not in self.watches:
            self.watches[robot] = SpoolWatch(self.spool_dir(robot))
        return self.watches[robot]

    def start_actor(
        self,
        robot: str,
        sets: Iterable[str] = (),
        netns: str | None = None,
        redis_url: str | None = None,
        policy: str = "scripted",
    ) -> ActorProcess:
        """Start (or restart, over the same spool) the actor of ``robot``."""
        emb, task = ROBOTS[_base(robot)]
        self.watch(robot)
        old = self.actors.get(robot)
        if old is not None:
            self._collect(old)
            old.close()
        seed = 1000 * len(self.printed.get(robot, ())) + 17 * len(self.actors)  # fresh seeds after a restart
        a = ActorProcess(
            robot,
            emb,
            task,
            self.root,
            redis_url or self.redis_url,
            self.password,
            sets,
            netns,
            seed=seed,
            policy=policy,
        )
        self.actors[robot] = a
        return a

    def _collect(self, a: ActorProcess) -> None:
        self.printed.setdefault(a.robot, set()).update(a.printed)

    def stop_actor(self, robot: str) -> int:
        a = self.actors.pop(robot)
        rc = a.terminate()
        self._collect(a)
        a.close()
        return rc

    def live_actors(self) -> list[ActorProcess]:
        return [a for a in self.actors.values() if a.alive()]

    def close(self) -> None:
        for a in list(self.actors.values()):
            self._collect(a)
            a.close()
        self.actors.clear()
        for w in self.watches.values():
            w.close()
        if self._store is not None:
            self._store.close()
        if self._client is not None:
            self._client.close()
        if self.redis is not None:
            self.redis.stop()

    # ------------------------------------------------------------------------------------------ counting

    @property
    def store(self) -> ReplayStore:
        if self._store is None:
            if self.redis is not None:
                self._client = self.redis.client(socket_timeout=10)
            else:
                self._client = redis.Redis.from_url(self.redis_url, password=self.password, socket_timeout=10)
            self._store = ReplayStore(self._client, ReplayConfig(prefix=PREFIX), decode_workers=0)
        return self._store

    def sent(self) -> dict[str, int]:
        return {robot: w.count() for robot, w in self.watches.items()}

    def stored(self) -> dict[str, int]:
        """Distinct stored episodes per robot (the store's all-time outcome counts: eviction does not lower them)."""
        got: Counter[str] = Counter()
        for row in self.store.outcome_totals():
            got[str(row["robot"])] += int(row["episodes"])  # type: ignore[call-overload]
        return {robot: got.get(robot, 0) for robot in self.watches} | {
            r: n for r, n in got.items() if r not in self.watches
        }

    def pending(self, robots: Iterable[str] | None = None) -> int:
        """Episodes on disk in the spools (not yet acknowledged by the store)."""
        return sum(len(list(self.spool_dir(r).glob(f"*{SUFFIX}"))) for r in (robots or self.watches))

    def wait_recovered(
        self, timeout_s: float, since_sent: dict[str, int] | None = None, producing: Iterable[str] = ()
    ) -> float:
        """Seconds until every episode spooled so far is stored (the fleet's own delivery, no help) and every
        robot in ``producing`` spooled a new episode since ``since_sent``. Raises TimeoutError."""
        t0 = time.monotonic()
        target = self.sent()
        base = since_sent or target
        while True:
            stored, now = self.stored(), self.sent()
            delivered = all(stored.get(r, 0) >= n for r, n in target.items())
            fresh = all(now.get(r, 0) > base.get(r, 0) for r in producing)
            if delivered and fresh:
                return time.monotonic() - t0
            dead = [a.robot for a in self.actors.values() if not a.alive() and a.robot in producing]
            if dead:
                raise RuntimeError(
                    f"actors {dead} died:\n" + "\n".join(self.actors[r].log_text()[-3000:] for r in dead)
                )
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(
                    f"not recovered after {timeout_s} s: sent {self.sent()} stored {self.stored()}"
                )
            time.sleep(0.1)

    def wait_sent(self, robot: str, n: int, timeout_s: float) -> None:
        """Until ``robot`` spooled ``n`` more episodes than now."""
        goal = self.watch(robot).count() + n
        deadline = time.monotonic() + timeout_s
        while self.watch(robot).count() < goal:
            a = self.actors.get(robot)
            if a is not None and not a.alive():
                raise RuntimeError(f"{robot} exited with {a.proc.returncode}:\n{a.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{robot} spooled {self.watch(robot).count()} of {goal} in {timeout_s} s")
            time.sleep(0.05)

    def audit(self, robots: Iterable[str] | None = None) -> Audit:
        """Freeze the actors, deliver what their spools hold (as a restarted actor would), count, resume."""
        frozen = [a for a in self.actors.values() if a.alive() and not a.paused]
        for a in frozen:
            a.pause()
        try:
            for robot in self.watches:
                self.deliver_spool(robot)
            return self.count(robots)
        finally:
            for a in frozen:
                a.resume()

    def deliver_spool(self, robot: str) -> int:
        """Deliver what ``robot``'s spool holds, as a restarted actor would (not with a `Spool`: its constructor
        removes ``*.tmp`` files, which a paused actor may be about to rename)."""
        n = 0
        for path in sorted(self.spool_dir(robot).glob(f"*{SUFFIX}")):
            try:
                blob = path.read_bytes()
            except FileNotFoundError:  # its actor delivered it meanwhile
                continue
            self.store.append(blob)
            path.unlink(missing_ok=True)
            n += 1
        return n

    def count(self, robots: Iterable[str] | None = None) -> Audit:
        """Compare sent and stored now (spools must be empty for this to be exact: see `audit`)."""
        for a in self.actors.values():
            self.printed.setdefault(a.robot, set()).update(a.printed)
        stored, sent = self.stored(), self.sent()
        keep = set(robots) if robots is not None else set(sent)
        sent = {r: n for r, n in sent.items() if r in keep}
        stored = {r: stored.get(r, 0) for r in keep}
        ids = self.store.episode_ids()
        metas = [m for m in self.store.metas(ids) if m is not None and m.robot_id in keep]
        # a resend under a new id would be the same recording twice: same robot, seed and start time
        twice = len(metas) - len({(m.robot_id, m.seed, m.start_time) for m in metas})
        announced = sorted(i for r in keep for i in self.printed.get(r, ()))
        # every id the store ever accepted is in its seen set, also after the episode was evicted
        accepted = self.store.r.smismember(f"{PREFIX}:seen", announced) if announced else []
        unlisted = [i for i, ok in zip(announced, accepted, strict=True) if not ok]
        return Audit(
            sent=sent,
            stored=stored,
            lost=sum(max(0, n - stored[r]) for r, n in sent.items()),
            duplicated=max(twice, sum(max(0, stored[r] - n) for r, n in sent.items())),
            deadletters=self.store.stats().deadletters,
            unlisted=unlisted,
        )


def _base(robot: str) -> str:
    """``franka-07`` -> the ROBOTS entry of the same embodiment (extra robots reuse its task)."""
    for name in ROBOTS:
        if robot.split("-")[0] == name.split("-")[0]:
            return name
    raise KeyError(f"no embodiment for robot id {robot!r}: use one of the prefixes of {sorted(ROBOTS)}")
