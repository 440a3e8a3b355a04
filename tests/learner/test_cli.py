"""``fleet export`` and ``fleet rehearsal`` as commands (fleet/cli_learner.py) against a real Redis; ``fleet
learner`` itself runs as a process in test_resume.py."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from fleet.cli_learner import export, rehearsal
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from learner.lerobot_compat import load_lerobot
from tests.factories import synthetic_episode


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(export)
    app.command()(rehearsal)
    return app


def test_export_then_import_as_rehearsal(
    store: ReplayStore, redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch
) -> None:
    for i in range(2):
        store.append(synthetic_episode("franka", steps=8, seed=i))
    store.append(synthetic_episode("so101", steps=8, seed=9, success=False))
    config = tmp_path / "fleet.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data_dir": str(tmp_path), "redis": {"url": redis_server.url}, "replay": {"chunk_steps": 8}}
        )
    )
    monkeypatch.setenv("MOLMOFLEET_REDIS_PASSWORD", redis_server.password)
    runner = CliRunner()

    result = runner.invoke(
        _app(), ["export", str(tmp_path / "out"), "--config", str(config), "--success-only"]
    )
    assert result.exit_code == 0, result.output
    assert "franka: 2 episodes, 16 frames" in result.output and "so101" not in result.output
    assert len(load_lerobot().LeRobotDataset("x/franka", root=tmp_path / "out" / "franka")) == 16

    other = tmp_path / "other.yaml"  # the same Redis, another fleet prefix: an empty store to import into
    other.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path),
                "redis": {"url": redis_server.url},
                "replay": {"chunk_steps": 8, "prefix": "other"},
            }
        )
    )
    result = runner.invoke(
        _app(), ["rehearsal", str(tmp_path / "out" / "franka"), "--config", str(other), "--task", "reach"]
    )
    assert result.exit_code == 0, result.output
    assert '"stored": 2' in result.output
    imported = ReplayStore(store.r, store.cfg.model_copy(update={"prefix": "other"}))
    metas = imported.metas(imported.episode_ids("src:rehearsal"))
    assert (
        len(metas) == 2 and {m.embodiment for m in metas} == {"franka"} and imported.count("src:fleet") == 0
    )
