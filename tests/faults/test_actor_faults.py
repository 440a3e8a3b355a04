"""Actor faults while the fleet runs: an actor process SIGKILLed with episodes still in its spool (the restarted
one re-sends them), paused with SIGSTOP past the heartbeat timeouts, and a spool that fills up: by its byte
limit (spool.max_mb) and by a full disk (a tiny tmpfs), each a clear error that loses nothing already spooled.
Every test ends with an exact audit: every spooled episode stored once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.redis_server import free_port
from fleet.status import STALE_AFTER_S, Heartbeat, StatusBoard, liveness
from tests.faults.conftest import Plan
from tests.faults.sim_fleet import FaultRecord, SimFleet

pytestmark = pytest.mark.faults


def _beat(fleet: SimFleet, robot: str) -> Heartbeat:
    (hb,) = [h for h in StatusBoard(fleet.store.r).heartbeats() if h.robot_id == robot]
    return hb


def test_actor_sigkill_then_restart_resends_its_spool(
    fleet: SimFleet, plan: Plan, ledger: list[FaultRecord]
) -> None:
    assert fleet.redis is not None
    flight, recovery = [], []
    for i in range(plan.repeats):
        victim = plan.robots[i % len(plan.robots)]
        fleet.redis.pause()  # the store stops answering: what the victim records now stays in its spool
        try:
            fleet.wait_sent(victim, 2, timeout_s=60)
            time.sleep(0.3)  # into its next episode: that one has no outcome yet and is not recorded
            fleet.actors[victim].kill()
            on_disk = fleet.pending([victim])
            assert on_disk >= 2
        finally:
            fleet.redis.resume()
        t = time.monotonic()
        fleet.start_actor(victim)  # over the same spool directory
        fleet.wait_recovered(plan.recover_s, producing=[victim])
        flight.append(on_disk)
        recovery.append(time.monotonic() - t)
    ledger.append(
        FaultRecord.checked(
            fleet.audit(),
            "actor SIGKILL + restart",
            flight,
            recovery,
            "store paused meanwhile; recovery includes the process start",
        )
    )


def test_actor_paused_past_heartbeat_timeouts(fleet: SimFleet, plan: Plan, ledger: list[FaultRecord]) -> None:
    flight, recovery = [], []
    for i in range(plan.repeats):
        victim = plan.robots[-1 - i % len(plan.robots)]
        actor = fleet.actors[victim]
        actor.pause()
        try:
            time.sleep(max(plan.outage_s, STALE_AFTER_S + 1.0))
            assert liveness(_beat(fleet, victim)) != "live"  # the dashboard sees it stop beating
        finally:
            actor.resume()
        flight.append(fleet.pending([victim]))
        t = time.monotonic()
        fleet.wait_recovered(plan.recover_s, producing=[victim])
        while liveness(_beat(fleet, victim)) != "live":
            assert time.monotonic() - t < plan.recover_s, f"{victim} never beat again"
            time.sleep(0.1)
        recovery.append(time.monotonic() - t)
    ledger.append(
        FaultRecord.checked(
            fleet.audit(),
            "actor SIGSTOP/SIGCONT",
            flight,
            recovery,
            f"paused {max(plan.outage_s, STALE_AFTER_S + 1.0):.0f} s > stale after {STALE_AFTER_S:.0f} s",
        )
    )


def _fill_until_refused(fleet: SimFleet, robot: str, sets: list[str]) -> tuple[int, str]:
    """Run ``robot`` against an unreachable store until its spool refuses an episode; (spooled, log)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    actor = fleet.start_actor(robot, sets=sets, redis_url=dead)
    rc = actor.wait_exit(timeout_s=120)
    log = actor.log_text()
    assert rc not in (None, 0), f"{robot} still running or exited cleanly ({rc}):\n{log[-3000:]}"
    spooled = fleet.sent()[robot]
    assert spooled >= 1 and fleet.pending([robot]) == spooled  # everything spooled is still on disk
    return spooled, log


def _deliver_with_restart(fleet: SimFleet, robot: str, plan: Plan) -> float:
    """The store is reachable again: the next actor over the directory delivers the backlog."""
    t = time.monotonic()
    fleet.start_actor(robot)
    fleet.wait_recovered(plan.recover_s, producing=[robot])
    took = time.monotonic() - t
    assert fleet.stop_actor(robot) == 0
    return took


def test_spool_full_is_a_clear_error_and_keeps_what_it_holds(
    fleet: SimFleet, plan: Plan, ledger: list[FaultRecord]
) -> None:
    robot = "franka-spoolcap"
    spooled, log = _fill_until_refused(fleet, robot, ["spool.max_mb=0.3"])
    # the error names the spool, its limit and why it filled
    assert "SpoolFull" in log and "limit 0 MB" not in log and "the replay store has been unreachable" in log
    recovery = _deliver_with_restart(fleet, robot, plan)
    ledger.append(
        FaultRecord.checked(
            fleet.audit([robot]),
            "spool full (spool.max_mb)",
            [spooled],
            [recovery],
            "0.3 MB limit, store unreachable",
        )
    )


@pytest.fixture
def tiny_disk(fleet: SimFleet) -> Iterator[Path]:
    """The spool directory of robot ``so101-diskfull`` on a 512 KiB tmpfs (skipped where mount is refused)."""
    where = fleet.spool_dir("so101-diskfull")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs for the spool here ({done.stderr.strip()}); "
            "the spool.max_mb test covers a full spool"
        )
    try:
        yield where
    finally:
        a = fleet.actors.pop("so101-diskfull", None)
        if a is not None:
            a.close()
        if "so101-diskfull" in fleet.watches:
            fleet.watches.pop("so101-diskfull").close()
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_is_a_clear_error_and_keeps_what_it_holds(
    fleet: SimFleet, plan: Plan, tiny_disk: Path, ledger: list[FaultRecord]
) -> None:
    robot = "so101-diskfull"
    spooled, log = _fill_until_refused(fleet, robot, [])
    assert "SpoolFull" in log and "disk is full" in log
    assert list(tiny_disk.glob("*.tmp")) == []  # the episode that did not fit left no partial file behind
    recovery = _deliver_with_restart(fleet, robot, plan)
    ledger.append(
        FaultRecord.checked(
            fleet.audit([robot]),
            "spool disk full (512 KiB tmpfs)",
            [spooled],
            [recovery],
            "ENOSPC, store unreachable",
        )
    )
