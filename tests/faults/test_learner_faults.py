"""The learner SIGKILLed mid-training while the fleet runs: the actors never notice (they keep recording and
delivering), and the restarted `fleet learner` resumes from its checkpoint and publishes versions numbered
after every version published before the kill. (tests/learner/test_resume.py covers the resume itself: step
count, optimizer state, consumer position.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fleet.redis_server import free_port
from fleet.status import StatusBoard
from fleet.weights import WeightStore
from tests.faults.conftest import Plan
from tests.faults.sim_fleet import PREFIX, REPO, FaultRecord, SimFleet

pytestmark = pytest.mark.faults

SECRET = "faults-learner-secret"
RUN = "import typer; from fleet.cli_learner import learner; typer.run(learner)"
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _init_checkpoint(fleet: SimFleet, where: Path) -> Path:
    """A micro policy (tests/learner's, ~0.2 s a step) with statistics fitted on the fleet's episodes."""
    from fleet.cli_learner import embodiment_tables
    from learner.bootstrap import fit_norm_stats
    from policy.checkpoint import save_checkpoint
    from policy.modeling_molmoact2 import MolmoAct2Policy
    from tests.learner.conftest import micro_config

    tags, horizons, _ = embodiment_tables()
    stats = fit_norm_stats(fleet.store, horizons, tags)
    return save_checkpoint(where, MolmoAct2Policy.from_config(micro_config("expert"), stats, seed=0))


def _config(fleet: SimFleet, tmp_path: Path, init: Path) -> Path:
    config = tmp_path / "learner.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "redis": {"url": fleet.redis_url},
        "weights": {"store_url": str(tmp_path / "weights"), "pub_port": free_port()},
        "mlflow": {"system_metrics": False, "log_checkpoints": False},
        "learner": {"batch_size": 2, "warmup_steps": 1, "publish_every_steps": 3, "log_every_steps": 1,
                    "checkpoint_dir": str(tmp_path / "learner"), "init_checkpoint": str(init),
                    "refresh_s": 0.5, "holdout_fraction": 0.2, "eval_windows": 2, "keep_checkpoints": 2},
    }))
    return config


class LearnerProcess:
    """`fleet learner` in its own process group (SIGKILL takes any child with it)."""

    def __init__(self, config: Path, password: str, log: Path):
        env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
        env.update(PYTHONPATH=str(REPO), MOLMOFLEET_REDIS_PASSWORD=password, MOLMOFLEET_FLEET_SECRET=SECRET,
                   OMP_NUM_THREADS="1")
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", RUN, "--config", str(config)], cwd=REPO, env=env,
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for(self, pred: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if self.proc.poll() is not None:
                raise AssertionError(f"learner exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"learner: timed out:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def test_learner_sigkill_fleet_keeps_running_versions_keep_increasing(
    fleet: SimFleet, plan: Plan, ledger: list[FaultRecord], tmp_path: Path
) -> None:
    config = _config(fleet, tmp_path, _init_checkpoint(fleet, tmp_path / "init"))
    weights = WeightStore(str(tmp_path / "weights"), SECRET, fleet.store.r, prefix=PREFIX)
    board = StatusBoard(fleet.store.r, PREFIX)
    log = tmp_path / "learner.log"
    published: list[int] = []
    recovery = []
    learner = LearnerProcess(config, fleet.password, log)
    try:
        learner.wait_for(lambda: weights.latest() is not None, timeout_s=240)
        for _ in range(plan.repeats):
            # a version out, training on: kill it without warning
            learner.wait_for(lambda: (st := board.learner()) is not None and st.step % 3 == 1, timeout_s=120)
            learner.kill()
            before = weights.versions()
            published += [v for v in before if v not in published]
            # the fleet does not depend on the learner: every actor keeps recording and delivering
            since = fleet.sent()
            fleet.wait_recovered(plan.recover_s, since_sent=since, producing=plan.robots)
            t = time.monotonic()
            learner = LearnerProcess(config, fleet.password, log)
            learner.wait_for(lambda: weights.latest() is not None and weights.latest() > max(before),
                             timeout_s=240)
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
    audit = fleet.audit()
    assert audit.exact, str(audit)
    ledger.append(FaultRecord("learner SIGKILL + restart", len(recovery), 0, audit.lost, audit.duplicated,
                              max(recovery), f"versions {versions[0]}..{versions[-1]}, none reused; "
                              "recovery = restart to next version"))
