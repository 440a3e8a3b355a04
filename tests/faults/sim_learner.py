"""The fleet's learner as a real `fleet learner` process, for fault and soak runs: a micro policy (tests/learner's,
~0.2 s a step on one core) with statistics fitted on the fleet's own episodes, a config that publishes a signed
version every few steps, and the process in its own group so a SIGKILL takes any child with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from fleet.redis_server import free_port
from tests.faults.sim_fleet import REPO, SimFleet

SECRET = "sim-fleet-secret"  # the fleet secret that signs versions (a test value)
RUN = "import typer; from fleet.cli_learner import learner; typer.run(learner)"
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_checkpoint(fleet: SimFleet, where: Path) -> Path:
    """A micro policy with normalisation statistics of the fleet's stored episodes, saved to ``where``."""
    from fleet.cli_learner import embodiment_tables
    from learner.bootstrap import fit_norm_stats
    from policy.checkpoint import save_checkpoint
    from policy.modeling_molmoact2 import MolmoAct2Policy
    from tests.learner.conftest import micro_config

    tags, horizons, _ = embodiment_tables()
    stats = fit_norm_stats(fleet.store, horizons, tags)
    return save_checkpoint(where, MolmoAct2Policy.from_config(micro_config("expert"), stats, seed=0))


def learner_config(fleet: SimFleet, root: Path, init: Path, publish_every_steps: int = 3) -> Path:
    """YAML for `fleet learner` on the fleet's Redis; versions go to ``root/weights``."""
    config = root / "learner.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(root / "data"),
                "redis": {"url": fleet.redis_url},
                "weights": {"store_url": str(root / "weights"), "pub_port": free_port()},
                "mlflow": {"system_metrics": False, "log_checkpoints": False},
                "learner": {
                    "batch_size": 2,
                    "warmup_steps": 1,
                    "publish_every_steps": publish_every_steps,
                    "log_every_steps": 1,
                    "checkpoint_dir": str(root / "learner"),
                    "init_checkpoint": str(init),
                    "refresh_s": 0.5,
                    "holdout_fraction": 0.2,
                    "eval_windows": 2,
                    "keep_checkpoints": 2,
                    # the actors' short scripted episodes all fail: train on them anyway
                    "failures": "keep",
                },
            }
        )
    )
    return config


class LearnerProcess:
    """`fleet learner --config CONFIG`, logging to ``log``."""

    def __init__(self, config: Path, password: str, log: Path):
        env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
        env.update(
            PYTHONPATH=str(REPO),
            MOLMOFLEET_REDIS_PASSWORD=password,
            MOLMOFLEET_FLEET_SECRET=SECRET,
            OMP_NUM_THREADS="1",
        )
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUN, "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, pred: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"learner exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"learner: timed out:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        """SIGTERM: it finishes its step, checkpoints and exits; the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
