"""Fault-suite fixtures: the run's plan (short by default, long with MOLMOFLEET_FAULTS_LONG=1), one running
simulated fleet shared by the fault tests, and the ledger of injected faults printed as a table at the end of
the run and written as JSON (``faults-report.json`` in the run's pytest tmp dir)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.sim_fleet import FaultRecord, SimFleet

LONG = os.environ.get("MOLMOFLEET_FAULTS_LONG") == "1"


@dataclass(frozen=True)
class Plan:
    long: bool
    robots: tuple[str, ...]  # the fleet's actors (sim_fleet.ROBOTS)
    repeats: int  # injections of each fault kind
    outage_s: float  # how long an outage or a pause lasts (socket timeouts are 1 s)
    recover_s: float  # the fleet must have recovered within this long after the fault is lifted


SHORT = Plan(long=False, robots=("franka-01", "so101-01"), repeats=1, outage_s=3.0, recover_s=60.0)
FULL = Plan(long=True, robots=("franka-01", "so101-01", "yam-01"), repeats=3, outage_s=8.0, recover_s=120.0)

_LEDGER = pytest.StashKey[list[FaultRecord]]()
_REPORT = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def plan() -> Plan:
    return FULL if LONG else SHORT


@pytest.fixture(scope="session")
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[FaultRecord]]:
    records: list[FaultRecord] = []
    request.config.stash[_LEDGER] = records
    yield records
    path = tmp_path_factory.getbasetemp() / "faults-report.json"
    path.write_text(json.dumps({"long": LONG, "faults": [r.as_dict() for r in records]}, indent=2))
    request.config.stash[_REPORT] = path


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, plan: Plan) -> Iterator[SimFleet]:
    """Redis (AOF, fsync always) and one scripted actor process per robot of the plan, all producing."""
    f = SimFleet(tmp_path_factory.mktemp("fleet"))
    try:
        for robot in plan.robots:
            f.start_actor(robot)
        for robot in plan.robots:
            f.wait_sent(robot, 1, timeout_s=120)
        yield f
        # the whole run, exactly: every episode any actor process spooled is stored once
        final = f.audit()
        assert final.exact, f"after all faults: {final}"
    finally:
        f.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    records = config.stash.get(_LEDGER, [])
    if not records:
        return
    tr = terminalreporter
    tr.section(f"fault injection ({'long' if LONG else 'short'} run)")
    tr.write_line(
        f"{'fault':<34} {'injected':>8} {'in flight':>9} {'lost':>5} {'dup':>4} {'recovery s':>10}  detail"
    )
    for r in records:
        tr.write_line(
            f"{r.fault:<34} {r.injected:>8} {r.in_flight:>9} {r.lost:>5} {r.duplicated:>4} "
            f"{r.recovery_s:>10.2f}  {r.detail}"
        )
    tr.write_line(
        f"{'total':<34} {sum(r.injected for r in records):>8} {sum(r.in_flight for r in records):>9} "
        f"{sum(r.lost for r in records):>5} {sum(r.duplicated for r in records):>4}"
    )
    if _REPORT in config.stash:
        tr.write_line(f"report: {config.stash[_REPORT]}")
