"""Soak: the simulated fleet running for a long stretch, watching for what only time shows (leaks, a store that
outgrows its capacity, episodes that go missing).

    .venv/bin/python -m bench.soak                   # 30 minutes, three scripted actors
    .venv/bin/python -m bench.soak --minutes 3       # the short run (what CI would use)
    .venv/bin/python -m bench.soak --learner         # plus a `fleet learner` training and publishing

Real processes (tests/faults/sim_fleet.py): a redis-server (AOF, fsync always) and one `fleet actor` per robot
(franka, yam_bimanual, so101; scripted policy, 3x real time), optionally the learner. After a warm-up, every
``--sample-s`` it records each process's RSS, Redis ``used_memory`` and the store's counts. At the end the actors
stop cleanly, whatever their spools still hold is delivered, and the report gives

- episodes/hour stored, per robot and in all;
- RSS per process (with its children): first, last, the least-squares slope in MB/hour and the growth it
  gives over the run; "flat" while that growth stays under ``--max-growth-mb`` (so a longer run catches a
  slower leak: 8 MB over 30 minutes is 16 MB/hour, while a 3-minute run only sees the allocator's noise);
- Redis ``used_memory`` against the store's capacity (``--capacity-mb``, small by default so that even a short
  run reaches eviction and its steady state) and the evictions;
- episodes sent (spool writes, counted by the kernel) against stored, lost and duplicated.

Redis is expected to grow until the store reaches its capacity; it is judged on the samples taken at
capacity (once evictions began). Exits 1 when an episode was lost or duplicated, a process died, or a
process's memory grew.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import psutil

from tests.faults.sim_fleet import SimFleet

ROBOTS = ("franka-01", "yam-01", "so101-01")


@dataclass
class Sample:
    t_s: float  # since the warm-up ended
    rss_mb: dict[str, float]  # process name -> RSS (with children), MB
    used_memory_mb: float  # Redis INFO used_memory
    stored_payload_mb: float  # the store's own payload accounting (what capacity_mb bounds)
    stored: int  # episodes stored (all time)
    evicted: int


@dataclass
class ProcessMemory:
    name: str
    first_mb: float
    last_mb: float
    slope_mb_h: float  # least-squares RSS slope over the samples
    growth_mb: float  # that slope over the measured run
    flat: bool


@dataclass
class SoakReport:
    minutes: float
    robots: list[str]
    learner: bool
    episodes_per_hour: float
    per_robot_per_hour: dict[str, float]
    memory: list[ProcessMemory]
    redis_used_mb: float
    redis_peak_mb: float
    capacity_mb: float
    stored_payload_mb: float
    evicted_episodes: int
    sent: int
    stored: int
    lost: int
    duplicated: int
    deadletters: int
    died: list[str] = field(default_factory=list)
    versions: int = 0  # published by the learner during the run
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        grew = [m.name for m in self.memory if not m.flat]
        return not (self.lost or self.duplicated or self.deadletters or self.died or grew)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, MB (0 once it is gone)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def slope_mb_h(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(ts) / 3600.0, np.asarray(ys), 1)[0])


def soak(args: argparse.Namespace, root: Path) -> SoakReport:
    fleet = SimFleet(root)
    learner = None
    weights = None
    try:
        sets = [f"replay.capacity_mb={args.capacity_mb}"]
        for robot in ROBOTS:
            fleet.start_actor(robot, sets=sets)
        for robot in ROBOTS:
            fleet.wait_sent(robot, 1, timeout_s=180)
        if args.learner:
            from fleet.weights import WeightStore
            from tests.faults.sim_learner import SECRET, LearnerProcess, init_checkpoint, learner_config

            config = learner_config(
                fleet, root, init_checkpoint(fleet, root / "init"), publish_every_steps=20
            )
            learner = LearnerProcess(config, fleet.password, root / "learner.log")
            weights = WeightStore(str(root / "weights"), SECRET, fleet.store.r)
            learner.wait_for(lambda: weights.latest() is not None, timeout_s=300)
        print(f"warm-up {args.warmup_s:.0f} s ...", flush=True)
        time.sleep(args.warmup_s)
        assert fleet.redis is not None
        procs = {a.robot: a.pid for a in fleet.actors.values()} | {"redis-server": fleet.redis.pid}
        if learner is not None:
            procs["learner"] = learner.pid
        admin = fleet.redis.client(socket_timeout=10)
        t0 = time.monotonic()
        start = fleet.stored()
        versions0 = len(weights.versions()) if weights is not None else 0
        samples: list[Sample] = []
        died: list[str] = []
        end = t0 + args.minutes * 60
        while True:
            st = fleet.store.stats()
            s = Sample(
                t_s=time.monotonic() - t0,
                rss_mb={n: rss_mb(pid) for n, pid in procs.items()},
                used_memory_mb=int(admin.info("memory")["used_memory"]) / 2**20,
                stored_payload_mb=st.stored.bytes / 2**20,
                stored=sum(fleet.stored().values()),
                evicted=st.evicted_episodes,
            )
            samples.append(s)
            rss = " ".join(f"{n}={v:.0f}" for n, v in s.rss_mb.items())
            print(
                f"t={s.t_s / 60:5.1f} min stored={s.stored} evicted={s.evicted} redis used="
                f"{s.used_memory_mb:.1f} MB payload={s.stored_payload_mb:.1f} MB | RSS MB {rss}",
                flush=True,
            )
            died = [a.robot for a in fleet.actors.values() if not a.alive()]
            if learner is not None and learner.proc.poll() is not None:
                died.append("learner")
            if died or time.monotonic() >= end:
                break
            time.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
        elapsed_h = (time.monotonic() - t0) / 3600
        done = fleet.stored()
        per_robot = {r: (done.get(r, 0) - start.get(r, 0)) / elapsed_h for r in ROBOTS}
        info = admin.info("memory")
        versions = (len(weights.versions()) - versions0) if weights is not None else 0
        admin.close()
        if learner is not None:
            learner.stop()
        for robot in ROBOTS:  # SIGTERM: each stops at its next tick and gives its spool time to deliver
            if robot in fleet.actors:
                fleet.stop_actor(robot)
        audit = fleet.audit()
        st = fleet.store.stats()
        ts = [s.t_s for s in samples]
        memory = []
        for name in procs:
            ys = [s.rss_mb[name] for s in samples]
            k = slope_mb_h(ts, ys)
            growth = k * elapsed_h
            flat = growth <= args.max_growth_mb
            full = [s for s in samples if s.evicted > 0]
            if name == "redis-server" and not flat and len(full) >= 2:
                # Redis grows with the store until capacity: judge it from the samples taken at capacity
                k_full = slope_mb_h([s.t_s for s in full], [s.rss_mb[name] for s in full])
                flat = k_full * (full[-1].t_s - full[0].t_s) / 3600 <= args.max_growth_mb
            memory.append(ProcessMemory(name, ys[0], ys[-1], k, growth, flat))
        return SoakReport(
            minutes=elapsed_h * 60,
            robots=list(ROBOTS),
            learner=learner is not None,
            episodes_per_hour=sum(per_robot.values()),
            per_robot_per_hour=per_robot,
            memory=memory,
            redis_used_mb=int(info["used_memory"]) / 2**20,
            redis_peak_mb=int(info["used_memory_peak"]) / 2**20,
            capacity_mb=args.capacity_mb,
            stored_payload_mb=st.stored.bytes / 2**20,
            evicted_episodes=st.evicted_episodes,
            sent=sum(audit.sent.values()),
            stored=sum(audit.stored.values()),
            lost=audit.lost,
            duplicated=audit.duplicated,
            deadletters=audit.deadletters,
            died=died,
            versions=versions,
            samples=samples,
        )
    finally:
        if learner is not None:
            learner.kill()
        fleet.close()


def print_report(r: SoakReport, max_growth: float) -> None:
    print(f"\nsoak: {r.minutes:.1f} min, robots {', '.join(r.robots)}{', learner' if r.learner else ''}")
    print(
        f"episodes/hour: {r.episodes_per_hour:,.0f}  ("
        + ", ".join(f"{k} {v:,.0f}" for k, v in r.per_robot_per_hour.items())
        + ")"
    )
    print(
        f"{'process':<14} {'RSS first MB':>12} {'last MB':>8} {'slope MB/h':>10} {'fit growth MB':>13}  verdict"
    )
    for m in r.memory:
        verdict = (
            "flat" if m.flat and m.growth_mb <= max_growth else "flat at capacity" if m.flat else "GROWING"
        )
        print(
            f"{m.name:<14} {m.first_mb:>12.1f} {m.last_mb:>8.1f} {m.slope_mb_h:>10.1f} {m.growth_mb:>13.1f}  {verdict}"
        )
    print(
        f"redis used_memory {r.redis_used_mb:.1f} MB (peak {r.redis_peak_mb:.1f}) for {r.stored_payload_mb:.1f} MB "
        f"of payload; store capacity {r.capacity_mb:.0f} MB; {r.evicted_episodes} episodes evicted"
    )
    if r.learner:
        print(f"learner: {r.versions} versions published during the run")
    print(
        f"sent {r.sent}  stored {r.stored}  lost {r.lost}  duplicated {r.duplicated}  "
        f"dead letters {r.deadletters}" + (f"  DIED: {r.died}" if r.died else "")
    )
    print("OK" if r.ok else "FAILED")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="measured run length after the warm-up")
    ap.add_argument("--learner", action="store_true", help="also run `fleet learner` (micro policy)")
    ap.add_argument("--sample-s", type=float, default=60.0, help="sampling period, s")
    ap.add_argument("--warmup-s", type=float, default=30.0, help="run this long before the first sample, s")
    ap.add_argument("--capacity-mb", type=float, default=32.0, help="replay.capacity_mb (eviction beyond it)")
    ap.add_argument(
        "--max-growth-mb",
        type=float,
        default=8.0,
        help="a process's fitted RSS growth over the run (Redis: once at capacity) above this, MB, fails it",
    )
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--root", type=Path, help="data directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    if args.root is not None:
        args.root.mkdir(parents=True, exist_ok=True)
        report = soak(args, args.root)
    else:
        with tempfile.TemporaryDirectory(prefix="molmofleet-soak-") as tmp:
            report = soak(args, Path(tmp))
    print_report(report, args.max_growth_mb)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
