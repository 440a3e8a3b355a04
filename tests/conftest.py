"""Fixtures that start real services: a redis-server on a free loopback port, stopped even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fleet.config import ReplayConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from tests.factories import SCHEMAS


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[ReplayStore]:
    client = redis_server.client()
    s = ReplayStore(client, ReplayConfig(chunk_steps=8), schemas=SCHEMAS)
    yield s
    s.close()
    client.close()
