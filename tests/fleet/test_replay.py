"""Replay store against a real redis-server: round trips, idempotency, atomicity, sampling, eviction."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading

import numpy as np
import pytest
from scipy import stats as sps

from fleet.config import ReplayConfig
from fleet.episode import encode_episode
from fleet.redis_server import EmbeddedRedis
from fleet.replay import EpisodeRef, ReplayStore
from tests.factories import SCHEMAS, synthetic_episode


def test_round_trip_and_index(store: ReplayStore) -> None:
    ep = synthetic_episode("so101", steps=30, depth=True, interventions=2, version=3)
    assert store.append(ep).status == "stored"
    back = store.read_episode(ep.meta.episode_id)
    np.testing.assert_array_equal(back.images["front"], ep.images["front"])
    np.testing.assert_array_equal(back.action, ep.action)
    for pool in ("all", "emb:so101", "task:reach", "ok:1", "ver:3", "src:fleet"):
        assert store.episode_ids(pool) == [ep.meta.episode_id], pool
    assert store.episode_ids("ok:0") == []
    st = store.stats()
    assert st.stored.episodes == 1 and st.stored.steps == 30
    assert st.pools["emb:so101"].episodes == 1 and st.events == 1


def test_retry_is_idempotent(store: ReplayStore) -> None:
    ep = synthetic_episode()
    blob = encode_episode(ep, 8)
    assert [store.append(blob).status for _ in range(3)] == ["stored", "duplicate", "duplicate"]
    st = store.stats()
    assert st.stored.episodes == 1 and st.ingested.episodes == 1 and st.events == 1


def _writer(port: int, password: str, seeds: list[int]) -> None:
    import redis

    s = ReplayStore(redis.Redis(port=port, password=password), ReplayConfig(chunk_steps=8), SCHEMAS, 0)
    for seed in seeds:
        blob = encode_episode(synthetic_episode(seed=seed, steps=12), 8)
        s.append(blob)
        s.append(blob)  # every writer retries once: still one copy


def test_concurrent_writers_from_processes(redis_server: EmbeddedRedis, store: ReplayStore) -> None:
    ctx = mp.get_context("spawn")
    seeds = list(range(40))
    procs = [ctx.Process(target=_writer, args=(redis_server.port, redis_server.password, seeds[i::3] + seeds[:5]))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    st = store.stats()
    assert st.stored.episodes == 40 and st.ingested.episodes == 40 and st.events == 40
    assert st.stored.steps == 40 * 12


def test_readers_never_see_half_an_episode(store: ReplayStore) -> None:
    stop = threading.Event()
    torn: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for i in store.episode_ids():
                try:
                    ep = store.read_episode(i)
                except KeyError as e:
                    torn.append(str(e))
                    continue
                if ep.num_steps != 64 or len(ep.images["wrist"]) != 64:
                    torn.append(i)

    t = threading.Thread(target=reader)
    t.start()
    for seed in range(25):
        store.append(synthetic_episode(seed=seed, steps=64, size=32))
    stop.set()
    t.join()
    assert torn == [] and store.count() == 25


def test_sample_windows_are_consecutive(store: ReplayStore) -> None:
    for seed in range(5):
        store.append(synthetic_episode("yam_bimanual", seed=seed, steps=50))
    windows = store.sample(32, window=10, image_steps=3, rng=random.Random(0))
    assert len(windows) == 32
    for w in windows:
        steps = np.arange(w.start, w.start + 10)
        np.testing.assert_array_equal(w.state[:, 0], steps)  # state encodes the step index
        assert w.images["top"].shape == (3, 16, 16, 3)
        np.testing.assert_array_equal(w.images["top"][:, 0, 0, 0], steps[:3] % 256)


def test_windows_read_as_byte_ranges_match_whole_chunks(store: ReplayStore) -> None:
    eps = [synthetic_episode("yam_bimanual", seed=i, steps=37, size=24, depth=True) for i in range(2)]
    for ep in eps:
        assert store.append(encode_episode(ep, 8, "jpeg")).status == "stored"
    assert store.append(encode_episode(eps[0], 8, "jpeg")).status == "duplicate"
    assert store.r.keys("mf:stage:*") == []  # staged payloads never outlive their append
    refs = [EpisodeRef(ep.meta.episode_id, s) for ep in eps for s in (0, 6, 8, 30)]  # chunk edges, short tail
    ranged = store.read_windows(refs, 10)
    for ep in eps:
        store.r.hdel(f"mf:ep:{ep.meta.episode_id}", "layout")  # as stored before frame layouts: whole chunks
    whole = ReplayStore(store.r, store.cfg, SCHEMAS, decode_workers=0).read_windows(refs, 10)
    for a, b in zip(ranged, whole, strict=True):
        assert a.images["top"].shape == (min(10, 37 - a.start), 24, 24, 3) and a.images.keys() == b.images.keys()
        for cam in b.images:
            np.testing.assert_array_equal(a.images[cam], b.images[cam])
        np.testing.assert_array_equal(a.depth, b.depth)


def test_sampling_weights_are_honoured(store: ReplayStore) -> None:
    for seed in range(6):
        store.append(synthetic_episode("franka", seed=seed, success=seed % 2 == 0, steps=12))
        store.append(synthetic_episode("so101", seed=100 + seed, steps=12))
    mixture = {"emb:franka": 0.6, "emb:so101": 0.1, "ok:0": 0.3}
    counts = {p: 0 for p in mixture}
    for i in range(20):
        for w in store.sample(50, window=4, mixture=mixture, image_steps=0, rng=random.Random(i)):
            counts[w.pool] += 1
            assert w.pool != "ok:0" or not w.meta.success
            assert not w.pool.startswith("emb:") or w.meta.embodiment == w.pool[4:]
    observed = [counts[p] for p in mixture]
    expected = [1000 * w for w in mixture.values()]
    assert sps.chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


def test_eviction_keeps_accounting_and_reservoir(redis_server: EmbeddedRedis) -> None:
    one = len(encode_episode(synthetic_episode(steps=20, size=32, seed=0), 8))
    cfg = ReplayConfig(chunk_steps=8, capacity_mb=12 * one / 2**20, reservoir_size=4)
    s = ReplayStore(redis_server.client(), cfg, SCHEMAS)
    ids = []
    for seed in range(60):
        ep = synthetic_episode(steps=20, size=32, seed=seed, end_time=1_000_000 + seed, success=seed % 3 == 0)
        ids.append(ep.meta.episode_id)
        s.append(ep)
    st = s.stats()
    assert st.stored.bytes <= cfg.capacity_mb * 2**20
    assert st.ingested.episodes == 60 and st.stored.episodes + st.evicted_episodes == 60
    reservoir = s.episode_ids("reservoir")
    assert len(reservoir) == 4 and st.reservoir.episodes == 4
    stored = set(s.episode_ids())
    assert set(reservoir) <= stored
    # the newest non-reservoir episodes are what remains besides the reservoir
    assert set(ids[-(len(stored) - 4):]) - set(reservoir) <= stored
    # per-pool counts equal what the indexes hold, and byte counts add up
    for pool in ("ok:0", "ok:1", "emb:franka"):
        assert st.pools[pool].episodes == s.count(pool)
    assert st.pools["ok:0"].bytes + st.pools["ok:1"].bytes == st.stored.bytes
    # evicted episodes' keys are gone; a retry of an evicted episode is not re-stored
    gone = next(i for i in ids if i not in stored)
    assert redis_server.client().exists(f"mf:ep:{gone}", f"mf:ep:{gone}:low", f"mf:ep:{gone}:c:0") == 0
    assert s.append(synthetic_episode(steps=20, size=32, seed=ids.index(gone), end_time=1_000_000)).status == "duplicate"
    # the all-time outcome counts are kept through eviction
    totals = s.outcome_totals()
    assert sum(r["episodes"] for r in totals) == 60 and sum(r["successes"] for r in totals) == 20


def test_reservoir_is_uniform_over_history(redis_server: EmbeddedRedis) -> None:
    hits = np.zeros(4)
    client = redis_server.client()
    for trial in range(40):
        client.flushall()
        random.seed(trial)
        s = ReplayStore(client, ReplayConfig(chunk_steps=8, reservoir_size=5), SCHEMAS, 0)
        order = []
        for seed in range(40):
            ep = synthetic_episode(steps=2, size=4, seed=1000 * trial + seed)
            order.append(ep.meta.episode_id)
            s.append(ep)
        for i in s.episode_ids("reservoir"):
            hits[order.index(i) // 10] += 1
    # each quarter of history holds ~ a quarter of the reservoir (200 draws)
    assert sps.chisquare(hits).pvalue > 1e-3, hits


@pytest.mark.parametrize("bad", [b"", b"\x93garbage", b"x" * 1000])
def test_dead_letter_and_store_keeps_working(store: ReplayStore, bad: bytes) -> None:
    res = store.append(bad)
    assert res.status == "rejected" and res.reason
    dl = store.deadletters()
    assert len(dl) == 1 and dl[0]["reason"] == res.reason and dl[0]["payload"] == bad
    assert store.append(synthetic_episode()).status == "stored"
    assert store.stats().deadletters == 1


def test_dead_letter_for_wrong_embodiment_dims(store: ReplayStore) -> None:
    ep = synthetic_episode("so101")
    ep.meta.embodiment = "franka"
    res = store.append(ep)
    assert res.status == "rejected" and "state: 6 dims, franka has 8" in res.reason
    assert store.count() == 0


def test_events_consumer_group_at_least_once(store: ReplayStore) -> None:
    store.ensure_group("learner")
    eps = [synthetic_episode(seed=i) for i in range(3)]
    for ep in eps:
        store.append(ep)
    got = store.read_events("learner", "l0", count=10)
    assert [f["id"] for _, f in got] == [e.meta.episode_id for e in eps]
    # not acked: a restarted consumer sees them again as pending
    assert len(store.read_events("learner", "l0", pending=True)) == 3
    store.ack("learner", [i for i, _ in got])
    assert store.read_events("learner", "l0", pending=True) == []


def test_aof_restart_loses_no_acknowledged_episode(tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendfsync="always").start()
    try:
        s = ReplayStore(server.client(), ReplayConfig(chunk_steps=8), SCHEMAS)
        ids = [s.append(synthetic_episode(seed=i)).episode_id for i in range(10)]
        server.kill()  # SIGKILL: no chance to save anything more
        server = EmbeddedRedis(tmp_path / "r", password=server.password, port=server.port, appendfsync="always").start()
        s = ReplayStore(server.client(), ReplayConfig(chunk_steps=8), SCHEMAS)
        assert sorted(s.episode_ids()) == sorted(ids)
        assert s.read_episode(ids[3]).num_steps == 40
        assert s.stats().stored.episodes == 10
    finally:
        server.stop()


def test_outcome_buckets(store: ReplayStore) -> None:
    for i in range(6):
        store.append(synthetic_episode(seed=i, success=i < 4, end_time=6000 + 60 * (i // 3), version=i // 3))
    rows = store.outcome_buckets()
    assert {(r["bucket"], r["version"], r["episodes"], r["successes"]) for r in rows} == {(6000, 0, 3, 3), (6060, 1, 3, 1)}
