"""The learner SIGKILLed mid-training while the fleet runs: the actors never notice (they keep recording and
delivering), and the restarted `fleet learner` resumes from its checkpoint and publishes versions numbered
after every version published before the kill. (tests/learner/test_resume.py covers the resume itself: step
count, optimizer state, consumer position.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.status import StatusBoard
from fleet.weights import WeightStore
from tests.faults.conftest import Plan
from tests.faults.sim_fleet import PREFIX, FaultRecord, SimFleet
from tests.faults.sim_learner import SECRET, LearnerProcess, init_checkpoint, learner_config

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # ~1 min: two learner starts


def test_learner_sigkill_fleet_keeps_running_versions_keep_increasing(
    fleet: SimFleet, plan: Plan, ledger: list[FaultRecord], tmp_path: Path
) -> None:
    config = learner_config(fleet, tmp_path, init_checkpoint(fleet, tmp_path / "init"))
    weights = WeightStore(str(tmp_path / "weights"), SECRET, fleet.store.r, prefix=PREFIX)
    board = StatusBoard(fleet.store.r, PREFIX)
    log = tmp_path / "learner.log"
    recovery = []
    learner = LearnerProcess(config, fleet.password, log)
    try:
        learner.wait_for(lambda: weights.latest() is not None, timeout_s=240)
        for _ in range(plan.repeats):
            # a version out, training on: kill it without warning
            learner.wait_for(lambda: (st := board.learner()) is not None and st.step % 3 == 1, timeout_s=120)
            learner.kill()
            before = weights.versions()
            # the fleet does not depend on the learner: every actor keeps recording and delivering
            since = fleet.sent()
            fleet.wait_recovered(plan.recover_s, since_sent=since, producing=plan.robots)
            t = time.monotonic()
            learner = LearnerProcess(config, fleet.password, log)
            last = max(before)
            learner.wait_for(lambda last=last: (weights.latest() or 0) > last, timeout_s=240)
            recovery.append(time.monotonic() - t)
            new = [v for v in weights.versions() if v not in before]
            assert min(new) > max(before)  # numbers continue, never reused
        assert learner.stop() == 0, log.read_text()[-4000:]
    finally:
        learner.kill()
    versions = weights.versions()
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for v in versions:  # every version verifies: signed, sha256 intact
        weights.fetch(v)
    ledger.append(
        FaultRecord.checked(
            fleet.audit(),  # the actors never depended on the learner: nothing of theirs went missing
            "learner SIGKILL + restart",
            [0],
            recovery,
            f"versions {versions[0]}..{versions[-1]}, none reused; recovery = restart to next version",
        )
    )
