"""A policy server SIGKILLed under a running actor, then started again on the same port.

The actor is a real `fleet actor --policy tcp://...` process reaching a real `fleet policy-server` over CURVE,
both with the fleet's keys from config (``weights.curve_dir``), as a fleet off loopback runs them. While the
server is gone the actor must stay up and keep beating on the status board, record nothing it cannot finish
(an episode needs a first chunk) and lose nothing it announced; once the server is back it records
policy-driven episodes again on its own. Ends with an exact audit, recorded in the fault ledger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.status import STALE_AFTER_S, Heartbeat, StatusBoard, liveness
from tests.faults.conftest import Plan
from tests.faults.sim_fleet import ActorProcess, FaultRecord, SimFleet
from tests.faults.sim_policy_server import PolicyServerProcess, curve_keys, tiny_checkpoint

pytestmark = pytest.mark.faults

ROBOT = "franka-remote"
HEARTBEAT_S = 0.5  # sim_fleet.ACTOR_SETS
REMOTE_SETS = (
    "actors.interventions.max_per_episode=0",  # no supervisor: every step not starved is the policy's
    "actors.policy_timeout_s=2.0",  # a dead server shows within seconds (a busy box may take 1 s for a chunk)...
    "actors.policy_retries=0",
    "actors.first_chunk_timeout_s=3",  # ...and an episode that cannot start gives up (and retries) quickly
)


def _beat(board: StatusBoard) -> Heartbeat:
    (hb,) = [h for h in board.heartbeats() if h.robot_id == ROBOT]
    return hb


def _episodes(actor: ActorProcess, since: int = 0) -> list[dict[str, int]]:
    """The actor's announced episodes (its "episode ID success=.. steps=.. starved=.. version=.." lines)."""
    out = []
    for line in actor.output[since:]:
        if line.startswith("episode "):
            fields = dict(f.split("=", 1) for f in line.split()[2:])
            out.append({k: int(float(fields[k])) for k in ("steps", "starved", "interventions", "version")})
    return out


def _policy_driven(ep: dict[str, int], version: int) -> bool:
    return ep["version"] == version and ep["interventions"] == 0 and ep["steps"] > ep["starved"]


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[SimFleet, PolicyServerProcess]]:
    """Redis, and a CURVE policy server serving a tiny checkpoint (not started); both stopped even on failure."""
    server = PolicyServerProcess(
        tiny_checkpoint(tmp_path / "ckpt"), tmp_path / "server", keys=curve_keys(tmp_path / "keys")
    )
    fleet = SimFleet(tmp_path / "fleet")
    try:
        yield fleet, server
    finally:
        server.stop()
        fleet.close()


def test_policy_server_sigkill_then_restart(
    remote: tuple[SimFleet, PolicyServerProcess], plan: Plan, ledger: list[FaultRecord]
) -> None:
    fleet, server = remote
    server.start()
    sets = [*REMOTE_SETS, f"weights.curve_dir={server.keys}"]
    actor = fleet.start_actor(ROBOT, sets=sets, policy=server.address)  # starts beside the server
    server.wait_serving(timeout_s=120)
    fleet.wait_sent(ROBOT, 2, timeout_s=120)
    assert any(_policy_driven(e, server.version) for e in _episodes(actor)), actor.output[-5:]
    board = StatusBoard(fleet.store.r)
    before = _beat(board)

    fleet.wait_sent(ROBOT, 1, timeout_s=60)
    time.sleep(0.1)  # into the next episode (0.4 s of wall time), likely before its second chunk came back
    server.kill()
    killed = time.monotonic()
    # longer than a heartbeat may go missing before the dashboard shows the robot stale
    outage = max(plan.outage_s, STALE_AFTER_S + 1.0)
    beats: set[float] = set()
    while time.monotonic() - killed < outage:
        assert actor.alive(), f"{ROBOT} died without its policy server:\n{actor.log_text()[-3000:]}"
        hb = _beat(board)
        assert liveness(hb) == "live", f"heartbeats stopped {time.time() - hb.t:.1f} s ago"
        beats.add(hb.t)
        time.sleep(0.2)
    assert len(beats) >= outage / HEARTBEAT_S / 2, f"{len(beats)} heartbeats in {outage:.0f} s"
    log = actor.log_text()
    # the inference thread saw the timeouts and the loop retried its next episode, instead of crashing
    assert "PolicyTimeout" in log and "no first chunk" in log and "retrying in" in log, log[-3000:]
    during = _beat(board)
    starved = during.starved_ticks - before.starved_ticks  # an episode the kill cut short held the arm
    sent_down = fleet.sent()[ROBOT]
    time.sleep(1.0)
    assert fleet.sent()[ROBOT] == sent_down, "episodes recorded with no policy server"
    outage_audit = fleet.audit([ROBOT])
    assert outage_audit.exact, f"during the outage: {outage_audit}"

    since, lines = fleet.sent(), len(actor.output)
    in_flight = fleet.pending([ROBOT])
    t = time.monotonic()
    server.start()
    up = server.wait_serving(timeout_s=plan.recover_s)
    fleet.wait_recovered(plan.recover_s, since_sent=since, producing=[ROBOT])
    recovery = time.monotonic() - t
    deadline = time.monotonic() + 10
    while not _episodes(actor, lines):  # its line follows the spool write
        assert time.monotonic() < deadline, actor.output[-5:]
        time.sleep(0.05)
    fresh = _episodes(actor, lines)
    assert all(_policy_driven(e, server.version) for e in fresh), fresh
    assert actor.alive() and liveness(_beat(board)) == "live"
    assert server.stop() == 0 and '"served"' in server.log_text()
    ledger.append(
        FaultRecord.checked(
            fleet.audit([ROBOT]),
            "policy server SIGKILL + restart",
            [in_flight],
            [recovery],
            f"CURVE; {outage:.0f} s outage, actor up, {len(beats)} beats, {starved} starved; server up in "
            f"{up:.1f} s, actor back {recovery - up:.1f} s later",
        )
    )
