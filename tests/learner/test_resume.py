"""SIGKILL the learner (``fleet learner``, a real process) mid-training and restart it: it resumes at its last
checkpoint's step with its optimizer state and consumer position, and publishes no version number twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fleet.redis_server import EmbeddedRedis, free_port
from fleet.replay import ReplayStore
from fleet.status import StatusBoard
from fleet.weights import WeightStore
from policy.checkpoint import save_checkpoint
from tests.factories import synthetic_episode
from tests.learner.conftest import fill_store, micro_policy

REPO = Path(__file__).resolve().parents[2]
SECRET = "resume-test-secret"
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
RUN = "import typer; from fleet.cli_learner import learner; typer.run(learner)"


def _start(config: Path, redis_server: EmbeddedRedis, max_steps: int, log: Path) -> subprocess.Popen:
    # without the process-group variables an in-process engine test left in this process's environment
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(
        PYTHONPATH=str(REPO),
        MOLMOFLEET_REDIS_PASSWORD=redis_server.password,
        MOLMOFLEET_FLEET_SECRET=SECRET,
        OMP_NUM_THREADS="1",
    )
    return subprocess.Popen(
        [sys.executable, "-c", RUN, "--config", str(config), "--max-steps", str(max_steps)],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(pred, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"learner exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def test_sigkill_then_resume(
    store: ReplayStore, redis_server: EmbeddedRedis, tmp_path: Path, data_dir: Path
) -> None:
    fill_store(store, fleet=10, rehearsal=4)
    init = save_checkpoint(tmp_path / "init", micro_policy("expert"))
    ckpt = tmp_path / "learner"
    config = tmp_path / "fleet.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data_dir),
                "redis": {"url": redis_server.url},
                "replay": {"chunk_steps": 8},
                "weights": {"store_url": str(tmp_path / "weights"), "pub_port": free_port()},
                "mlflow": {"system_metrics": False, "log_checkpoints": False},
                "learner": {
                    "batch_size": 2,
                    "warmup_steps": 1,
                    "publish_every_steps": 3,
                    "log_every_steps": 1,
                    "checkpoint_dir": str(ckpt),
                    "init_checkpoint": str(init),
                    "refresh_s": 0.5,
                    "holdout_fraction": 0.2,
                    "eval_windows": 2,
                    "keep_checkpoints": 2,
                },
            }
        )
    )
    board = StatusBoard(store.r)
    weights = WeightStore(str(tmp_path / "weights"), SECRET, store.r)
    latest = ckpt / "ds" / "LATEST"
    log = tmp_path / "learner.log"

    proc = _start(config, redis_server, 1000, log)
    try:
        _wait(lambda: weights.latest() is not None and weights.latest() >= 2, proc, log)
        # an episode arrives and is consumed, then the process dies without a clean shutdown
        store.append(synthetic_episode("franka", steps=24, seed=900))
        _wait(lambda: (st := board.learner()) is not None and st.episodes_seen >= 1, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = board.learner().step
    resume_step = int(latest.read_text().removeprefix("step"))
    versions_before = weights.versions()
    reports_before = len(board.learner_history())
    assert 6 <= resume_step <= killed_at and versions_before[:2] == [1, 2]

    proc = _start(config, redis_server, resume_step + 4, log)
    try:
        assert proc.wait(timeout=150) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    history = [s.step for s in board.learner_history()][reports_before:]  # the second run's reports
    assert history == list(range(resume_step + 1, resume_step + 5))  # the step count continued
    new = [v for v in weights.versions() if v not in versions_before]
    assert new and min(new) > max(versions_before)  # no number reused
    first = weights.manifest(min(new))
    # its parent is the version the checkpoint recorded (a version published after the checkpoint is orphaned)
    assert first.parent is not None and first.parent <= max(versions_before) and first.step == resume_step + 3
    # the episode consumed before the kill was counted once: re-read from the pending list if the checkpoint
    # had not covered it, acknowledged if it had
    assert board.learner().episodes_seen == 1
    assert store.r.xpending(f"{store.p}:events", "learner")["pending"] == 0
