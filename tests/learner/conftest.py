"""Learner test fixtures: a micro MolmoAct2 (2M parameters: the tiny preset with fewer, narrower layers and
32 px images, so a DeepSpeed step takes ~0.2 s on one core), norm stats for the synthetic embodiments, a store
filled with synthetic fleet and rehearsal episodes, and an initialised MLflow sqlite store copied per test
(creating one runs MLflow's migrations, ~5 s; a copy is instant)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fleet.config import LearnerConfig, MlflowConfig
from fleet.replay import ReplayStore
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from tests.factories import synthetic_episode

HORIZONS = {"franka": 15, "so101": 30, "yam_bimanual": 30}


def micro_config(mode: str = "expert") -> MolmoAct2Config:
    d = MolmoAct2Config.tiny().model_dump()
    d["vit_config"].update(
        num_hidden_layers=2,
        image_default_input_size=(32, 32),
        image_num_pos=16,
        hidden_size=64,
        num_attention_heads=2,
        head_dim=32,
        intermediate_size=128,
    )
    d["adapter_config"].update(
        vit_layers=(-1, -2),
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=128,
        text_hidden_size=128,
    )
    d["text_config"].update(
        num_hidden_layers=2,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        intermediate_size=256,
    )
    d["action_expert_config"].update(num_layers=2, hidden_size=128, num_heads=2)
    d["finetune"].update(mode=mode)
    d.update(max_action_tokens=48, num_flow_timesteps=2)
    return MolmoAct2Config.model_validate(d)


def synthetic_stats() -> NormStats:
    """Statistics matching tests.factories episodes (state/action ramp with the step index, 0..60)."""
    stats = NormStats()
    for tag, dim in (("franka", 8), ("so101", 6), ("yam_bimanual", 14)):
        x = np.linspace(0, 60, 200, dtype=np.float32)[:, None].repeat(dim, 1) + np.arange(dim) / 100
        stats.add(tag, x, x, action_horizon=HORIZONS[tag])
    return stats


def micro_policy(mode: str = "expert", seed: int = 0) -> MolmoAct2Policy:
    return MolmoAct2Policy.from_config(micro_config(mode), synthetic_stats(), seed=seed)


def learner_config(tmp_path: Path, **kw: object) -> LearnerConfig:
    base = dict(
        batch_size=4,
        warmup_steps=2,
        lr_expert=1e-3,
        log_every_steps=2,
        publish_every_steps=1000,
        checkpoint_dir=str(tmp_path / "learner"),
        holdout_fraction=0.2,
        eval_windows=4,
        refresh_s=0.5,
    )
    return LearnerConfig(**{**base, **kw})


def fill_store(
    store: ReplayStore, fleet: int = 10, rehearsal: int = 4, steps: int = 24, size: int = 16
) -> list[str]:
    """Fleet franka episodes (a third failed, a quarter with interventions) + so101 rehearsal episodes."""
    ids = []
    for i in range(fleet):
        ep = synthetic_episode(
            "franka", steps=steps, size=size, seed=i, success=i % 3 != 0, interventions=4 if i % 4 == 0 else 0
        )
        store.append(ep)
        ids.append(ep.meta.episode_id)
    for i in range(rehearsal):
        ep = synthetic_episode("so101", steps=steps, size=size, seed=1000 + i, source="rehearsal")
        store.append(ep)
        ids.append(ep.meta.episode_id)
    return ids


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the 2 cores are shared with other suites, and oversubscription is slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learner.tracking import Tracker

    root = tmp_path_factory.mktemp("mlflow-template")
    Tracker(MlflowConfig(system_metrics=False), root).client.search_experiments()  # runs the migrations
    return root / "mlflow.db"


@pytest.fixture
def data_dir(tmp_path: Path, mlflow_template: Path) -> Path:
    """A data dir whose default MLflow store (sqlite:///<data_dir>/mlflow.db) already exists."""
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(mlflow_template, d / "mlflow.db")
    return d
