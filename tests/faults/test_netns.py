"""Network faults between an actor and the store: redis-server in one network namespace, a `fleet actor`
process (and its spool) in another, joined by a veth pair (tests/faults/netns.py). Faults: a partition (the
store's link down), a slow link whose small queue drops packets (tbf), and packet loss with delay (netem,
where the kernel has it). After each heals the actor delivers its backlog by itself, and an exact audit finds
every spooled episode stored once. Skipped, with the reason, where namespaces cannot be made."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fleet.redis_server import EmbeddedRedis
from tests.faults.conftest import Plan
from tests.faults.netns import STORE_IP, NetnsPair
from tests.faults.sim_fleet import FaultRecord, SimFleet

pytestmark = pytest.mark.faults

ROBOT = "franka-net"

Net = tuple[NetnsPair, SimFleet]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, plan: Plan) -> Iterator[Net]:
    why = NetnsPair.unavailable()
    if why is not None:
        pytest.skip(f"network faults need network namespaces: {why}")
    root = tmp_path_factory.mktemp("netfleet")
    with NetnsPair() as pair:
        # listening on the store namespace's loopback (its launcher checks readiness there) and its veth end
        server = EmbeddedRedis(
            root / "redis", appendfsync="always", extra_args=["--bind", "127.0.0.1", STORE_IP]
        )
        pair.call(server.start)
        fleet = SimFleet(root, redis_url=f"redis://{STORE_IP}:{server.port}/0", password=server.password)
        try:
            fleet.start_actor(ROBOT, netns=pair.actor_ns)
            fleet.wait_sent(ROBOT, 2, timeout_s=120)
            assert pair.call(fleet.wait_recovered, 60.0) >= 0  # delivered across the veth
            yield pair, fleet
            final = pair.call(fleet.audit)
            assert final.exact, f"network faults, whole run: {final}"
        finally:
            fleet.close()
            pair.call(server.stop)


def _heal_and_audit(net: Net, plan: Plan, flight: list[int], recovery: list[float]) -> None:
    pair, fleet = net
    flight.append(fleet.pending())
    recovery.append(pair.call(fleet.wait_recovered, plan.recover_s, producing=[ROBOT]))


def _record(net: Net, ledger: list[FaultRecord], fault: str, flight: list[int], recovery: list[float],
            detail: str) -> None:
    """The fault's row in the suite's table, after an exact audit of everything the actor sent."""
    pair, fleet = net
    ledger.append(FaultRecord.checked(pair.call(fleet.audit), fault, flight, recovery, detail))


def test_partition_then_heal(net: Net, plan: Plan, ledger: list[FaultRecord]) -> None:
    pair, fleet = net
    flight: list[int] = []
    recovery: list[float] = []
    for _ in range(plan.repeats):
        backlog = fleet.pending()
        pair.link(up=False)
        try:
            time.sleep(plan.outage_s + 1.0)
            assert fleet.pending() > backlog, "the actor should spool while partitioned"
        finally:
            pair.link(up=True)
        _heal_and_audit(net, plan, flight, recovery)
    _record(net, ledger, "network partition (veth down)", flight, recovery,
            f"{plan.outage_s + 1:.0f} s, actor and store in separate netns")


def test_slow_link_dropping_packets(net: Net, plan: Plan, ledger: list[FaultRecord]) -> None:
    pair, fleet = net
    flight: list[int] = []
    recovery: list[float] = []
    dropped = 0
    for _ in range(plan.repeats):
        # 1 Mbit/s (below what the actor records) and an 8 KiB queue: TCP's first window already overflows it
        pair.tc(
            "qdisc", "add", "dev", "{dev}", "root", "tbf", "rate", "1mbit", "burst", "4kb", "limit", "8kb"
        )
        try:
            fleet.wait_sent(ROBOT, 4, timeout_s=60)
            time.sleep(plan.outage_s)
            dropped += pair.dropped()
        finally:
            pair.tc("qdisc", "del", "dev", "{dev}", "root", check=False)
        _heal_and_audit(net, plan, flight, recovery)
    assert dropped > 0, "tbf should have dropped packets"
    _record(net, ledger, "slow lossy link (tbf 1 Mbit/s)", flight, recovery,
            f"{dropped} packets dropped; netem-free shaping")


def test_packet_loss_and_delay(net: Net, plan: Plan, ledger: list[FaultRecord]) -> None:
    pair, fleet = net
    why = pair.netem_missing()
    if why is not None:
        pytest.skip(f"loss and delay need netem: {why}; the tbf test drops packets instead")
    flight: list[int] = []
    recovery: list[float] = []
    for _ in range(plan.repeats):
        pair.tc("qdisc", "add", "dev", "{dev}", "root", "netem", "loss", "10%", "delay", "50ms", "10ms")
        try:
            fleet.wait_sent(ROBOT, 4, timeout_s=90)
        finally:
            pair.tc("qdisc", "del", "dev", "{dev}", "root", check=False)
        _heal_and_audit(net, plan, flight, recovery)
    _record(net, ledger, "packet loss 10% + delay 50 ms (netem)", flight, recovery, "both directions")
