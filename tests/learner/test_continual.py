"""The continual learner in-process on a real store, DeepSpeed engine, MLflow store and status board: held-out
loss falls, versions are published on step and episode triggers, and every report lands where it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import MlflowConfig
from fleet.replay import ReplayStore
from fleet.status import StatusBoard
from learner.continual import Learner
from learner.publish import DirectoryWeightSink
from learner.tracking import FleetRegistry, Tracker
from policy.checkpoint import load_trainable
from tests.factories import synthetic_episode
from tests.learner.conftest import fill_store, learner_config, micro_policy


@pytest.fixture
def learner(store: ReplayStore, tmp_path: Path, data_dir: Path):
    fill_store(store, fleet=12, rehearsal=6)
    cfg = learner_config(
        tmp_path,
        publish_every_steps=8,
        publish_every_episodes=3,
        log_every_steps=2,
        lr_expert=2e-3,
        eval_windows=8,
    )
    seen = []

    def rollout_eval(policy, step):  # the demo's hook: here it checks it got the candidate weights
        seen.append((step, policy))
        return {"rollout_success": 0.5}

    board = StatusBoard(store.r)
    tracker = Tracker(MlflowConfig(system_metrics=False, model_name="test-model"), data_dir)
    lrn = Learner(
        store,
        micro_policy("expert"),
        cfg,
        DirectoryWeightSink(tmp_path / "versions"),
        tracker=tracker,
        board=board,
        rollout_eval=rollout_eval,
    )
    lrn.seen = seen
    yield lrn
    lrn.close()


def test_trains_publishes_and_reports(
    learner: Learner, store: ReplayStore, tmp_path: Path, data_dir: Path
) -> None:
    before = learner.evaluate()
    assert before["eval_windows"] == 8 and before["eval_rehearsal_windows"] == 8

    summary = learner.run(max_steps=16)
    assert summary.steps == 16 and summary.versions == [1, 2] and summary.last_version == 2
    after = learner.evaluate()
    assert after["eval_flow_mse"] < 0.8 * before["eval_flow_mse"], (before, after)  # loss falls on fleet data

    sink = DirectoryWeightSink(tmp_path / "versions")
    m1, m2 = sink.manifest(1), sink.manifest(2)
    assert (m1.parent, m1.step, m2.parent, m2.step) == (None, 8, 1, 16)
    assert m2.figures["rollout_success"] == 0.5 and "eval_loss" in m2.figures
    step, policy = learner.seen[-1]
    assert step == 16
    payload, _ = sink.read(2)
    fresh = micro_policy("expert")  # the same base weights the learner started from, as actors have
    load_trainable(fresh, payload)  # what actors will do with it
    assert all((a == b).all() for a, b in zip(fresh.parameters(), policy.parameters(), strict=True))

    # new episodes trigger a cycle before the step trigger (publish_every_episodes=3)
    for i in range(3):
        store.append(synthetic_episode("franka", steps=24, seed=500 + i))
    summary = learner.run(max_steps=18)
    assert summary.versions == [3] and sink.manifest(3).step == 17 and learner.episodes_seen == 3

    ds = tmp_path / "learner" / "ds"
    stale = ds / "step000000999"  # left by an earlier run that got further than where this one resumed
    stale.mkdir()
    learner.run(max_steps=19)
    kept = sorted(p.name for p in ds.glob("step*"))
    assert kept == ["step000000018", "step000000019"] and (ds / "LATEST").read_text() == "step000000019"

    board = StatusBoard(store.r)
    status = board.learner()
    assert status.step == 18 and status.run_id == learner.tracker.run_id and status.episodes_seen == 3
    assert set(status.mixture) <= {"fresh", "history", "rehearsal"} and sum(
        status.mixture.values()
    ) == pytest.approx(1)
    assert [e.version for e in board.version_events() if e.kind == "published"] == [1, 2, 3]

    client = learner.tracker.client
    run = client.get_run(learner.tracker.run_id)
    assert run.data.params["learner.batch_size"] == "4" and run.data.params["learner.finetune"] == "expert"
    for key in (
        "train/loss",
        "train/flow_mse",
        "lr/expert",
        "throughput/samples_per_s",
        "mix/pool/fresh",
        "data/staleness_s",
        "eval_loss",
        "eval_rehearsal_loss",
    ):
        assert key in run.data.metrics, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(steps) and steps[-1] == 18
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "versions/v000002")}
    assert artifacts == {"versions/v000002/weights.safetensors", "versions/v000002/manifest.json"}
    assert client.list_artifacts(run.info.run_id, "checkpoints")  # DeepSpeed checkpoints as artifacts

    registry = FleetRegistry(MlflowConfig(model_name="test-model"), data_dir)
    assert registry.versions() == [1, 2, 3]
    mv = registry.model_version(2)
    assert mv.run_id == run.info.run_id and mv.tags["step"] == "16" and mv.tags["parent"] == "1"
    assert mv.source == f"runs:/{run.info.run_id}/versions/v000002"
    assert registry.set_alias(2, "champion") and registry.set_alias(3, "canary")
    assert (registry.alias("champion"), registry.alias("canary")) == (2, 3)
    registry.set_alias(3, "champion")
    assert registry.alias("champion") == 3
    assert not registry.set_alias(99, "canary") and registry.alias("canary") == 3


def test_waits_for_data_and_skips_unknown_embodiments(store: ReplayStore, tmp_path: Path) -> None:
    store.append(synthetic_episode("franka", steps=24, seed=1))
    lrn = Learner(
        store,
        micro_policy("expert"),
        learner_config(tmp_path, min_episodes=3, holdout_fraction=0.0),
        DirectoryWeightSink(tmp_path / "v"),
        norm_tags={"franka": "franka"},
    )
    assert not lrn.ready()
    # the second arrives through the event stream; an embodiment without norm stats is counted, never trained
    store.append(synthetic_episode("franka", steps=24, seed=2))
    store.append(synthetic_episode("franka", steps=24, seed=3))
    assert lrn.poll_events() == 2 and lrn.ready()
    lrn.policy.norm_stats.metadata_by_tag.pop("so101")
    store.append(synthetic_episode("so101", steps=24, seed=4))
    lrn.poll_events()
    assert lrn.sampler.skipped_embodiments == {"so101": 1}
