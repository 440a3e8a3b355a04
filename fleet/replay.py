"""The replay store: durable, indexed episode storage on Redis.

Layout (prefix ``P``, default ``mf``):
  P:ep:{id}            hash   meta JSON, step count, bytes, chunk count, index fields
  P:ep:{id}:low        string low-dim arrays of the whole episode (state, action, intervention, timestamp)
  P:ep:{id}:c:{k}      string frames [k*chunk_steps, (k+1)*chunk_steps) of every camera (+ depth)
  P:idx:{pool}         zset   episode ids by end time; pools: all, emb:E, task:T, ok:0|1, ver:V, src:S,
                              reservoir (never evicted), evictable
  P:events             stream one entry per new episode (learners read it with consumer groups)
  P:deadletter         stream rejected episodes with their reason and (truncated) payload
  P:stats              hash   per-pool stored counts/steps/bytes, ingested and evicted totals
  P:stats:b:{bucket}   hash   per (embodiment|task|version|robot): episodes, successes, autonomous successes, ...
  P:seen               set    every episode id ever accepted: a retry is a no-op even after eviction

Append is one Lua script (see replay_scripts.py), so it is atomic and idempotent. Single-instance Redis only:
Redis Cluster would need every key of an episode under one hash tag, which this layout does not do yet.
"""

from __future__ import annotations

import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import redis
from pydantic import BaseModel

from fleet.chunk_layout import FrameLayout
from fleet.config import ReplayConfig
from fleet.episode import (
    EmbodimentSchema,
    Episode,
    EpisodeError,
    EpisodeMeta,
    StepWindow,
    decode_chunk_frames,
    decode_episode,
    decode_frame_into,
    decode_low,
    encode_episode,
    parse_encoded,
    validate_encoded,
)
from fleet.replay_scripts import APPEND

_FETCH_GROUPS = 4  # round trips per sampled batch: decoding of one overlaps the fetch of the next
_STAGE_TTL_S = 600  # staged payloads of an append cut off before its script are removed after this, s


@dataclass(frozen=True)
class AppendResult:
    episode_id: str | None
    status: str  # "stored" | "duplicate" | "rejected"
    reason: str = ""
    evicted: int = 0
    # every status is an acknowledgement: the store has the episode, had it already, or dead-lettered it


@dataclass(frozen=True)
class EpisodeRef:
    episode_id: str
    start: int
    pool: str = ""


@dataclass
class _Cached:
    meta: EpisodeMeta
    n: int
    chunk_steps: int
    layout: FrameLayout | None = None  # where each frame sits in its chunk (None: stored before layouts)


class PoolStats(BaseModel):
    episodes: int = 0
    steps: int = 0
    bytes: int = 0


class StoreStats(BaseModel):
    stored: PoolStats
    ingested: PoolStats
    evicted_episodes: int
    evicted_bytes: int
    reservoir: PoolStats
    capacity_bytes: int
    pools: dict[str, PoolStats]  # "emb:franka", "task:reach", "ok:1", "ver:3", "src:fleet", ...
    deadletters: int
    events: int


class ReplayStore:
    """Episodes in, training windows out. Thread-safe for concurrent use (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, config: ReplayConfig | None = None,
                 schemas: dict[str, EmbodimentSchema] | None = None, decode_workers: int = 2):
        self.r = client
        self.cfg = config or ReplayConfig()
        self.schemas = schemas
        self.p = self.cfg.prefix
        self._meta_cache: OrderedDict[str, _Cached] = OrderedDict()
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="replay-decode") if decode_workers else None

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------------------------------ ingest

    def append(self, episode: Episode | bytes) -> AppendResult:
        """Store an episode (object or wire bytes). Idempotent by episode id; malformed input is dead-lettered.

        Raises redis.RedisError when Redis is unreachable: the caller (the spool) keeps the episode and retries.
        """
        blob = encode_episode(episode, self.cfg.chunk_steps) if isinstance(episode, Episode) else episode
        try:
            enc = parse_encoded(blob, views=True)  # chunks stay views into blob: sent on without a copy
            validate_encoded(enc, self.schemas)
        except EpisodeError as e:
            return self.dead_letter(blob, str(e))
        m = enc.meta
        bucket = int(m.end_time // self.cfg.stats_bucket_s * self.cfg.stats_bucket_s)
        chunk_steps = enc.chunk_bounds[0][1] - enc.chunk_bounds[0][0] if enc.chunk_bounds else 0
        # staging names per attempt: concurrent retries of one episode never consume each other's payloads
        stage = f"{self.p}:stage:{m.episode_id}:{random.getrandbits(64):016x}"
        args = [
            self.p, m.episode_id, m.model_dump_json(), enc.num_steps, enc.nbytes, m.embodiment, m.task,
            int(m.success), m.policy_version, m.source, m.robot_id, m.end_time, m.interventions, bucket,
            int(self.cfg.capacity_mb * 1024 * 1024), self.cfg.reservoir_size, random.random(), random.random(),
            self.cfg.events_maxlen, chunk_steps, stage, len(enc.chunks), enc.layout.pack() if enc.layout else b"",
        ]
        # payloads are staged by plain SETs and moved into place by the script, one round trip (see
        # replay_scripts.py); EVAL rather than EVALSHA: a NOSCRIPT would leave the staged payloads unused
        pipe = self.r.pipeline(transaction=False)
        pipe.set(f"{stage}:low", enc.low_blob, ex=_STAGE_TTL_S)
        for k, chunk in enumerate(enc.chunks):
            pipe.set(f"{stage}:c:{k}", chunk, ex=_STAGE_TTL_S)
        pipe.eval(APPEND, 0, *args)
        res = int(pipe.execute()[-1])
        if res == 0:
            return AppendResult(m.episode_id, "duplicate")
        return AppendResult(m.episode_id, "stored", evicted=res - 1)

    def dead_letter(self, blob: bytes | object, reason: str) -> AppendResult:
        raw = bytes(blob) if isinstance(blob, bytes | bytearray | memoryview) else repr(blob).encode()
        fields = {"reason": reason, "size": len(raw), "t": time.time(),
                  "payload": raw[: self.cfg.deadletter_max_bytes], "truncated": int(len(raw) > self.cfg.deadletter_max_bytes)}
        self.r.xadd(f"{self.p}:deadletter", fields, maxlen=self.cfg.deadletter_maxlen, approximate=True)
        self.r.hincrby(f"{self.p}:stats", "deadletter:episodes", 1)
        return AppendResult(None, "rejected", reason)

    def deadletters(self, count: int = 100) -> list[dict[str, object]]:
        out = []
        for entry_id, f in self.r.xrevrange(f"{self.p}:deadletter", count=count):
            out.append({"id": entry_id.decode(), "reason": f[b"reason"].decode(), "size": int(f[b"size"]),
                        "t": float(f[b"t"]), "payload": f[b"payload"]})
        return out

    # ------------------------------------------------------------------------------------------ events

    def ensure_group(self, group: str, start: str = "0") -> None:
        try:
            self.r.xgroup_create(f"{self.p}:events", group, id=start, mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def read_events(self, group: str, consumer: str, count: int = 100, block_ms: int | None = None,
                    pending: bool = False) -> list[tuple[str, dict[str, str]]]:
        """New-episode events for a consumer group (at-least-once: ack after processing).

        ``pending=True`` re-reads this consumer's delivered-but-unacknowledged events (after a restart).
        """
        res = self.r.xreadgroup(group, consumer, {f"{self.p}:events": "0" if pending else ">"}, count=count,
                                block=block_ms)
        out = []
        for _, entries in res or []:
            for eid, f in entries:
                out.append((eid.decode(), {k.decode(): v.decode() for k, v in f.items()}))
        return out

    def ack(self, group: str, event_ids: Iterable[str]) -> int:
        ids = list(event_ids)
        return int(self.r.xack(f"{self.p}:events", group, *ids)) if ids else 0

    # ------------------------------------------------------------------------------------------ index

    def episode_ids(self, pool: str = "all", since: float | None = None, until: float | None = None,
                    limit: int | None = None, newest_first: bool = False) -> list[str]:
        key = f"{self.p}:idx:{pool}"
        lo, hi = ("-inf" if since is None else since), ("+inf" if until is None else until)
        if newest_first:
            ids = self.r.zrevrangebyscore(key, hi, lo, start=0 if limit else None, num=limit)
        else:
            ids = self.r.zrangebyscore(key, lo, hi, start=0 if limit else None, num=limit)
        return [i.decode() for i in ids]

    def count(self, pool: str = "all") -> int:
        return int(self.r.zcard(f"{self.p}:idx:{pool}"))

    def metas(self, ids: list[str]) -> list[EpisodeMeta | None]:
        """Episode metadata (cached locally: stored episodes never change)."""
        missing = [i for i in ids if i not in self._meta_cache]
        if missing:
            pipe = self.r.pipeline(transaction=False)
            for i in missing:
                pipe.hmget(f"{self.p}:ep:{i}", "meta", "n", "chunk_steps", "layout")
            for i, (meta, n, cs, layout) in zip(missing, pipe.execute(), strict=True):
                if meta is not None:
                    self._remember(i, _Cached(EpisodeMeta.model_validate_json(meta), int(n), int(cs),
                                              FrameLayout.unpack(layout) if layout else None))
        return [self._meta_cache[i].meta if i in self._meta_cache else None for i in ids]

    def num_steps(self, ids: list[str]) -> list[int | None]:
        """Step counts of stored episodes (None: not stored); cached with the metadata."""
        self.metas(ids)
        return [self._meta_cache[i].n if i in self._meta_cache else None for i in ids]

    def _remember(self, i: str, c: _Cached) -> None:
        self._meta_cache[i] = c
        if len(self._meta_cache) > 100_000:
            self._meta_cache.popitem(last=False)

    # ------------------------------------------------------------------------------------------ reads

    def read_episode(self, episode_id: str) -> Episode:
        n = self.r.hget(f"{self.p}:ep:{episode_id}", "nchunks")
        if n is None:
            raise KeyError(f"episode {episode_id} is not in the store")
        pipe = self.r.pipeline(transaction=True)  # MULTI: an eviction cannot interleave
        pipe.hget(f"{self.p}:ep:{episode_id}", "meta")
        pipe.get(f"{self.p}:ep:{episode_id}:low")
        for k in range(int(n)):
            pipe.get(f"{self.p}:ep:{episode_id}:c:{k}")
        meta, low, *chunks = pipe.execute()
        if meta is None or low is None or any(c is None for c in chunks):
            raise KeyError(f"episode {episode_id} was evicted while reading")
        import msgpack  # the wire container is rebuilt from stored parts

        blob = msgpack.packb({"v": 1, "meta": json.loads(meta), "low": msgpack.unpackb(low), "chunks": chunks},
                             use_bin_type=True)
        return decode_episode(blob)

    def sample(self, batch_size: int, window: int, mixture: dict[str, float] | None = None,
               image_steps: int | None = None, rng: random.Random | None = None) -> list[StepWindow]:
        """``batch_size`` windows of ``window`` consecutive steps, drawn from pools by ``mixture`` weights.

        Pools are index names (``all``, ``emb:franka``, ``ok:1``, ``ver:3``, ``reservoir``, ...); within a pool,
        episodes are uniform and the start step is uniform over the steps that fit a full window (episodes
        shorter than the window give shorter windows). ``image_steps`` limits decoded frames to the leading
        steps of each window (1 for action-chunk training: one observation, ``window`` actions).
        """
        refs = self.sample_refs(batch_size, window, mixture or {"all": 1.0}, rng or random.Random())
        return self.read_windows(refs, window, image_steps)

    def sample_refs(self, batch_size: int, window: int, mixture: dict[str, float],
                    rng: random.Random) -> list[EpisodeRef]:
        pools = [p for p, w in mixture.items() if w > 0]
        if not pools:
            raise ValueError("mixture has no pool with a positive weight")
        counts = dict.fromkeys(pools, 0)
        for p in rng.choices(pools, weights=[mixture[p] for p in pools], k=batch_size):
            counts[p] += 1
        pipe = self.r.pipeline(transaction=False)
        for p, c in counts.items():
            # negative count: with replacement, so a small pool still fills its share
            pipe.zrandmember(f"{self.p}:idx:{p}", -c if c else 1)
        picked: list[tuple[str, str]] = []
        for p, ids in zip(counts, pipe.execute(), strict=True):
            if counts[p] and not ids:
                raise LookupError(f"pool {p!r} is empty")
            picked += [(i.decode(), p) for i in (ids or [])[: counts[p]]]
        self.metas([i for i, _ in picked])
        refs = []
        for i, p in picked:
            c = self._meta_cache.get(i)
            if c is None:  # evicted since it was drawn
                continue
            refs.append(EpisodeRef(i, rng.randrange(max(1, c.n - window + 1)), p))
        return refs

    def read_windows(self, refs: list[EpisodeRef], window: int, image_steps: int | None = None) -> list[StepWindow]:
        """Read windows in a few pipelined round trips; frames decode in the thread pool.

        With a frame layout (every episode stored by this version) a window reads only its frames' bytes: one
        GETRANGE per camera per chunk it touches, ~10x fewer bytes than the whole 32-step chunks. The batch is
        fetched in quarters, so the pool decodes the first while the next is on the wire.
        """
        group = max(1, -(-len(refs) // _FETCH_GROUPS)) if self._pool else max(1, len(refs))
        jobs = []
        for i in range(0, len(refs), group):
            for fn, args in self._fetch_windows(refs[i : i + group], window, image_steps):
                jobs.append(self._pool.submit(fn, *args) if self._pool else fn(*args))
        return [j.result() for j in jobs] if self._pool else jobs

    def _fetch_windows(self, refs: list[EpisodeRef], window: int,
                       image_steps: int | None) -> list[tuple[Callable[..., StepWindow], tuple]]:
        """One pipelined round trip for ``refs``: (decode function, its arguments) per window still stored."""
        pipe = self.r.pipeline(transaction=False)
        plan = []
        for ref in refs:
            c = self._meta_cache.get(ref.episode_id) or self._load_cached(ref.episode_id)
            stop = min(c.n, ref.start + window)
            img_stop = stop if image_steps is None else min(stop, ref.start + image_steps)
            key = f"{self.p}:ep:{ref.episode_id}"
            pipe.get(f"{key}:low")
            reads = c.layout.reads(ref.start, img_stop) if c.layout is not None else None
            if reads is not None:
                for k, _, _, first, last in reads:
                    pipe.getrange(f"{key}:c:{k}", first, last)
                parts = len(reads)
            else:
                ks = range(ref.start // c.chunk_steps, (max(img_stop, ref.start + 1) - 1) // c.chunk_steps + 1)
                for k in ks:
                    pipe.get(f"{key}:c:{k}")
                parts = len(ks)
            plan.append((ref, c, stop, img_stop, reads, parts))
        results = pipe.execute()
        out: list[tuple[Callable[..., StepWindow], tuple]] = []
        pos = 0
        for ref, c, stop, img_stop, reads, parts in plan:
            low, blobs = results[pos], results[pos + 1 : pos + 1 + parts]
            pos += 1 + parts
            # evicted between index read and data read (GETRANGE of a missing key is empty): a smaller batch
            if low is None or any(b is None for b in blobs):
                continue
            if reads is not None and any(len(b) != r[4] - r[3] + 1 for b, r in zip(blobs, reads, strict=True)):
                continue
            out.append((self._decode_ranges, (ref, c, stop, img_stop, low, reads, blobs)) if reads is not None
                       else (self._decode_window, (ref, c, stop, img_stop, low, blobs)))
        return out

    def _load_cached(self, i: str) -> _Cached:
        if self.metas([i])[0] is None:
            raise KeyError(f"episode {i} is not in the store")
        return self._meta_cache[i]

    @staticmethod
    def _decode_ranges(ref: EpisodeRef, c: _Cached, stop: int, img_stop: int, low_blob: bytes,
                       reads: list[tuple[int, int, int, int, int]], blobs: list[bytes]) -> StepWindow:
        layout = c.layout
        assert layout is not None
        streams = layout.streams()
        n = img_stop - ref.start
        # one array per stream, every frame decoded into its slot: no per-frame allocation, no stacking copy
        arrays = [np.empty((n, *layout.shapes[name]), np.uint8) if name else
                  np.empty((n, *(layout.depth_shape or ())), np.float32) for name, _ in streams]
        for (k, i, a, first, _), blob in zip(reads, blobs, strict=True):
            spans, view = streams[i][1], memoryview(blob)
            enc = layout.encoding if streams[i][0] else "zstd"  # depth frames are always zstd
            for t in range(a, min(img_stop, (k + 1) * layout.chunk_steps)):
                lo, hi = int(spans[t, 0]) - first, int(spans[t, 1]) - first
                decode_frame_into(view[lo:hi], enc, arrays[i][t - ref.start])  # type: ignore[arg-type]
        low = decode_low(low_blob)
        s = slice(ref.start, stop)
        named = dict(zip((name for name, _ in streams), arrays, strict=True))
        depth = named.pop("", None)
        return StepWindow(
            meta=c.meta, start=ref.start, state=low["state"][s], action=low["action"][s],
            intervention=low["intervention"][s], timestamp=low["timestamp"][s],
            images=named if n > 0 else {}, depth=depth if n > 0 else None, pool=ref.pool,
        )

    @staticmethod
    def _decode_window(ref: EpisodeRef, c: _Cached, stop: int, img_stop: int, low_blob: bytes,
                       chunks: list[bytes]) -> StepWindow:
        low = decode_low(low_blob)
        steps = range(ref.start, img_stop)
        images: dict[str, list[np.ndarray]] = {}
        depth: list[np.ndarray] = []
        for blob in chunks:
            imgs, d, _ = decode_chunk_frames(blob, steps)
            for cam, frames in imgs.items():
                images.setdefault(cam, []).extend(frames)
            if d is not None:
                depth.extend(d)
        s = slice(ref.start, stop)
        return StepWindow(
            meta=c.meta, start=ref.start, state=low["state"][s], action=low["action"][s],
            intervention=low["intervention"][s], timestamp=low["timestamp"][s],
            images={cam: np.stack(f) for cam, f in images.items() if f},
            depth=np.stack(depth) if depth else None, pool=ref.pool,
        )

    # ------------------------------------------------------------------------------------------ stats

    def stats(self) -> StoreStats:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"{self.p}:stats")
        pipe.xlen(f"{self.p}:deadletter")
        pipe.xlen(f"{self.p}:events")
        raw, dl, ev = pipe.execute()
        h = {k.decode(): int(v) for k, v in raw.items()}
        pools: dict[str, PoolStats] = {}
        for k, v in h.items():
            pool, _, field = k.rpartition(":")
            if field in ("episodes", "steps", "bytes") and pool not in ("ingested", "evicted", "deadletter"):
                setattr(pools.setdefault(pool, PoolStats()), field, v)
        return StoreStats(
            stored=pools.pop("all", PoolStats()),
            ingested=PoolStats(episodes=h.get("ingested:episodes", 0), steps=h.get("ingested:steps", 0),
                               bytes=h.get("ingested:bytes", 0)),
            evicted_episodes=h.get("evicted:episodes", 0), evicted_bytes=h.get("evicted:bytes", 0),
            reservoir=pools.pop("reservoir", PoolStats()),
            capacity_bytes=int(self.cfg.capacity_mb * 1024 * 1024),
            pools=pools, deadletters=int(dl), events=int(ev),
        )

    def outcome_buckets(self, since: float | None = None, until: float | None = None,
                        max_buckets: int = 2000) -> list[dict[str, object]]:
        """Outcome counts per time bucket and (embodiment, task, version, robot): the newest ``max_buckets``."""
        bk = self.r.zrevrangebyscore(f"{self.p}:stats:buckets", "+inf" if until is None else until,
                                     "-inf" if since is None else since, start=0, num=max_buckets)
        buckets = sorted(int(b) for b in bk)
        pipe = self.r.pipeline(transaction=False)
        for b in buckets:
            pipe.hgetall(f"{self.p}:stats:b:{b}")
        rows = []
        for b, h in zip(buckets, pipe.execute(), strict=True):
            rows += _outcome_rows(h, bucket=b)
        return rows

    def outcome_totals(self) -> list[dict[str, object]]:
        """All-time outcome counts per (embodiment, task, version, robot)."""
        return _outcome_rows(self.r.hgetall(f"{self.p}:stats:all"))


def _outcome_rows(h: dict[bytes, bytes], **extra: object) -> list[dict[str, object]]:
    grouped: dict[tuple[str, ...], dict[str, int]] = {}
    for k, v in h.items():
        emb, task, ver, robot, field = k.decode().split("|")
        grouped.setdefault((emb, task, ver, robot), {})[field] = int(v)
    return [{**extra, "embodiment": e, "task": t, "version": int(v), "robot": r, "episodes": f.get("n", 0),
             "successes": f.get("ok", 0), "autonomous": f.get("auto", 0), "interventions": f.get("int", 0),
             "steps": f.get("steps", 0), "bytes": f.get("bytes", 0)} for (e, t, v, r), f in grouped.items()]
