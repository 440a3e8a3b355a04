"""Spool: durable outbox that re-sends after an outage, never duplicates, survives a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.config import ReplayConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.spool import Spool, SpoolFull
from tests.factories import SCHEMAS, synthetic_episode


def test_spool_resends_after_redis_outage(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendfsync="always").start()
    store = ReplayStore(server.client(socket_timeout=1), ReplayConfig(chunk_steps=8), SCHEMAS)
    spool = Spool(tmp_path / "spool", store.append, retry_initial_s=0.05, retry_max_s=0.2).start()
    try:
        eps = [synthetic_episode(seed=i) for i in range(12)]
        for ep in eps[:4]:
            spool.put(ep)
        assert spool.drain(10)
        server.kill()
        for ep in eps[4:]:
            spool.put(ep)  # the actor keeps recording while the store is down
        deadline = time.monotonic() + 15
        while spool.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(spool.pending()) == 8 and spool.failures > 0
        server = EmbeddedRedis(tmp_path / "r", password=server.password, port=server.port).start()
        assert spool.drain(20)
        assert sorted(store.episode_ids()) == sorted(e.meta.episode_id for e in eps)
        assert store.stats().ingested.episodes == 12
    finally:
        spool.stop()
        server.stop()


def test_restart_resends_leftovers_without_duplicates(tmp_path: Path, store: ReplayStore) -> None:
    calls: list[bytes] = []

    def flaky(blob: bytes) -> None:
        store.append(blob)  # stored, but the ack is "lost" on the way back
        calls.append(blob)
        raise TimeoutError("ack lost")

    first = Spool(tmp_path / "s", flaky)
    for i in range(3):
        first.put(synthetic_episode(seed=i))
    with pytest.raises(TimeoutError):
        first.flush_once()
    # a new process over the same directory: sends all three again, the store keeps one copy each
    second = Spool(tmp_path / "s", store.append)
    assert second.flush_once() == 3 and second.pending() == []
    assert store.stats().stored.episodes == 3 and store.stats().ingested.episodes == 3


def test_spool_full_is_a_clear_error_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", lambda b: None, max_bytes=12_000)
    spool.put(synthetic_episode(seed=0))
    with pytest.raises(SpoolFull, match="replay store has been unreachable"):
        for i in range(1, 10):
            spool.put(synthetic_episode(seed=i))
    assert 1 <= len(spool.pending()) < 10


def test_partial_write_is_discarded_on_restart(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "000-1-1.tmp").write_bytes(b"half an episode")
    spool = Spool(tmp_path / "s", lambda b: None)
    assert spool.pending() == [] and not list((tmp_path / "s").glob("*.tmp"))
