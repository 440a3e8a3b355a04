"""The replay store's ingest under bad input, against a real redis-server: junk is rejected with a dead-letter
entry carrying its reason, whatever is stored can be read back by a learner (no poison episode), replays are
acknowledged as duplicates, and the store keeps storing valid episodes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.config import ReplayConfig
from fleet.episode import EpisodeError, encode_episode
from fleet.redis_server import EmbeddedRedis
from fleet.replay import EpisodeRef, ReplayStore
from tests.factories import SCHEMAS, synthetic_episode
from tests.fuzz.strategies import VALUES, budget, mutated_episode, pack


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayStore]:
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("ingest"))) as server:
        store = ReplayStore(
            server.client(), ReplayConfig(chunk_steps=2, deadletter_max_bytes=512), SCHEMAS, 0
        )
        yield store
        store.close()


def check_append(store: ReplayStore, blob: object) -> str:
    before = store.stats()
    res = store.append(blob)  # type: ignore[arg-type]
    after = store.stats()
    if res.status == "rejected":
        assert res.reason and after.deadletters == before.deadletters + 1
        assert after.stored.episodes == before.stored.episodes
        newest = store.deadletters(count=1)[0]
        raw = bytes(blob) if isinstance(blob, bytes | bytearray | memoryview) else repr(blob).encode()
        assert newest["reason"] == res.reason and newest["size"] == len(raw)
        assert newest["payload"] == raw[:512]  # truncated to deadletter_max_bytes
        return "rejected"
    if res.status == "duplicate":  # an id stored by an earlier example (hypothesis reuses small ids)
        assert ingest_seen(store, res.episode_id) and after.stored.episodes == before.stored.episodes
        return "duplicate"
    assert res.status == "stored", res
    assert after.stored.episodes == before.stored.episodes + 1 and after.deadletters == before.deadletters
    # whatever was accepted must be readable by the learner and the dashboards: metadata, low-dim arrays, stats
    assert store.metas([res.episode_id])[0] is not None
    assert len(store.read_windows([EpisodeRef(res.episode_id, 0)], window=4, image_steps=0)) == 1
    store.outcome_totals()
    try:  # frames are decoded only when read (not at ingest): corrupt frame bytes surface here, as EpisodeError
        store.read_episode(res.episode_id)
    except EpisodeError as e:
        assert "frame" in str(e), e
    assert store.append(blob).status == "duplicate"  # a replay of the same message
    assert store.stats().stored.episodes == after.stored.episodes
    return "stored"


def ingest_seen(store: ReplayStore, episode_id: str | None) -> bool:
    return bool(episode_id) and bool(store.r.sismember(f"{store.p}:seen", episode_id))


@budget(150)
@given(st.binary(max_size=1024) | VALUES.map(pack))
def test_junk_is_dead_lettered(ingest: ReplayStore, blob: bytes) -> None:
    assert check_append(ingest, blob) == "rejected"


@budget(200)
@given(mutated_episode())
def test_mutated_episodes_are_stored_readable_or_dead_lettered(ingest: ReplayStore, blob: bytes) -> None:
    check_append(ingest, blob)


@pytest.mark.parametrize("junk", [None, "text", 42, 3.5, [b"x"], {"v": 1}, bytearray(b"\x93")])
def test_non_bytes_are_dead_lettered(ingest: ReplayStore, junk: object) -> None:
    assert check_append(ingest, junk) == "rejected"


def test_store_keeps_working_after_junk(ingest: ReplayStore) -> None:
    for i in range(20):
        ingest.append(random.Random(i).randbytes(100))
    ep = synthetic_episode(seed=12345)
    assert check_append(ingest, encode_episode(ep, 2)) == "stored"


def test_replayed_messages_are_duplicates_exactly_once(ingest: ReplayStore) -> None:
    ep = synthetic_episode(seed=777, steps=6)
    blob = encode_episode(ep, 2)
    before = ingest.stats()
    assert [ingest.append(blob).status for _ in range(4)] == ["stored", "duplicate", "duplicate", "duplicate"]
    # the same episode id with other content (a replay with tampering) is not stored a second time either
    ep.action[:] += 1
    assert ingest.append(encode_episode(ep, 2)).status == "duplicate"
    after = ingest.stats()
    assert after.stored.episodes == before.stored.episodes + 1
    assert after.ingested.episodes == before.ingested.episodes + 1 and after.events == before.events + 1
