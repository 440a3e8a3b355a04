"""Store faults while the fleet runs: redis-server SIGKILLed and restarted on its AOF, paused (SIGSTOP) past
the clients' socket timeouts, and refusing writes (maxmemory below what it holds). The actors keep recording
into their spools meanwhile; once the fault is lifted they deliver by themselves, and an audit then finds
every spooled episode stored exactly once."""

from __future__ import annotations

import time

import pytest
import redis

from tests.faults.conftest import Plan
from tests.faults.sim_fleet import FaultRecord, SimFleet

pytestmark = pytest.mark.faults


def test_redis_sigkill_then_restart_on_its_aof(
    fleet: SimFleet, plan: Plan, ledger: list[FaultRecord]
) -> None:
    assert fleet.redis is not None
    flight, recovery = [], []
    for _ in range(plan.repeats):
        fleet.redis.kill()
        # from here nothing is acknowledged: a spool file already removed was acknowledged before the kill
        acknowledged = sum(fleet.sent().values()) - fleet.pending()
        time.sleep(plan.outage_s)  # the actors go on recording, into their spools only
        assert all(a.alive() for a in fleet.actors.values())
        fleet.redis.restart()
        # appendfsync always: every acknowledged append survived the SIGKILL (more may have: an append can
        # be on disk with its reply lost)
        assert sum(fleet.stored().values()) >= acknowledged
        flight.append(fleet.pending())
        recovery.append(fleet.wait_recovered(plan.recover_s, producing=plan.robots))
    ledger.append(
        FaultRecord.checked(
            fleet.audit(),
            "redis-server SIGKILL + restart",
            flight,
            recovery,
            f"down {plan.outage_s:.0f} s, AOF fsync always",
        )
    )


def test_redis_paused_past_client_timeouts(fleet: SimFleet, plan: Plan, ledger: list[FaultRecord]) -> None:
    assert fleet.redis is not None
    flight, recovery = [], []
    for _ in range(plan.repeats):
        before = fleet.sent()
        fleet.redis.pause()
        try:
            time.sleep(plan.outage_s)  # > the 1 s socket timeout: appends time out, spools back up
            # appends the actors gave up on are still queued in the paused server's sockets: it runs them
            # once resumed, and the retries that follow must be no-ops
            assert any(n > before.get(r, 0) for r, n in fleet.sent().items())
        finally:
            fleet.redis.resume()
        flight.append(fleet.pending())
        recovery.append(fleet.wait_recovered(plan.recover_s, producing=plan.robots))
    ledger.append(
        FaultRecord.checked(
            fleet.audit(),
            "redis-server SIGSTOP/SIGCONT",
            flight,
            recovery,
            f"paused {plan.outage_s:.0f} s, socket timeout 1 s",
        )
    )


def test_redis_refusing_writes_at_maxmemory(fleet: SimFleet, plan: Plan, ledger: list[FaultRecord]) -> None:
    assert fleet.redis is not None
    admin = fleet.redis.client(socket_timeout=10)
    flight, recovery = [], []
    try:
        for _ in range(plan.repeats):
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", str(used // 2))  # below what it holds: every write is refused
            try:
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    admin.set("mf:probe", b"x")
                stuck = fleet.pending()
                time.sleep(plan.outage_s)
                assert fleet.pending() > stuck, (
                    "episodes should pile up in the spools while Redis refuses them"
                )
            finally:
                admin.config_set("maxmemory", "0")
            flight.append(fleet.pending())
            recovery.append(fleet.wait_recovered(plan.recover_s, producing=plan.robots))
        logs = "".join(a.log_text() for a in fleet.actors.values())
        assert "OutOfMemoryError" in logs  # the spools saw (and logged) the refusal, then retried
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
    ledger.append(
        FaultRecord.checked(
            fleet.audit(),
            "redis maxmemory (OOM on writes)",
            flight,
            recovery,
            f"refusing {plan.outage_s:.0f} s",
        )
    )
