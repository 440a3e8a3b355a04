"""Sampling benchmark: training windows/s from a filled replay store (batches of 32 windows of 10 consecutive
steps, decoded to numpy) next to a naive baseline in the same run: pipelined XRANGE of the same steps stored one
stream entry per step, decoded the same way (fleet.episode.decode_frame, np.stack) in the calling thread.

    .venv/bin/python -m bench.sample            # ~2 minutes
    .venv/bin/python -m bench.sample --quick    # ~20 s

Both sides decode every frame of the full 10-step window (the headline ratio); the image_steps=1 figure
(action-chunk training: one observation, 10 actions) is reported beside it. Sides take turns a batch at a time.
Also reported: CPU per window of each side (what a saturated machine leaves as the ratio: Linux autogroup
scheduling gives a busy machine's process one share however many decode threads it runs), Redis
``used_memory`` per stored payload byte for the store and for the raw streams, and the peak RSS of the process
that filled the store. The last line is the store/naive ratio (goal: >= 2).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import redis

from bench.replay_workload import (
    EMBODIMENT,
    LOW_FIELDS,
    RAW_PREFIX,
    SCHEMAS,
    EpisodeStamper,
    EpisodeTemplate,
    bench_redis,
    build_template,
    loopback_bytes_per_s,
    machine_load,
    peak_rss_mb,
    raw_write,
    redis_cpu_s,
    redis_set_ops,
    reset_peak_rss,
    used_memory,
)
from fleet.config import ReplayConfig
from fleet.episode import EpisodeMeta, StepWindow, decode_frame
from fleet.replay import EpisodeRef, ReplayStore

_LOW_DTYPES = {"state": "<f4", "action": "<f4", "intervention": "|b1", "timestamp": "<f8"}


class NaiveSampler:
    """What one writes first: windows as XRANGE over per-step stream entries, decoded in the calling thread."""

    def __init__(
        self,
        client: redis.Redis,
        ids: list[str],
        steps: int,
        meta: EpisodeMeta,
        shapes: dict[str, tuple[int, ...]],
    ):
        self.r, self.ids, self.steps, self.meta, self.shapes = client, ids, steps, meta, shapes

    def sample(
        self, batch_size: int, window: int, image_steps: int | None, rng: random.Random
    ) -> list[StepWindow]:
        refs = [
            EpisodeRef(rng.choice(self.ids), rng.randrange(self.steps - window + 1))
            for _ in range(batch_size)
        ]
        return self.read_windows(refs, window, image_steps)

    def read_windows(self, refs: list[EpisodeRef], window: int, image_steps: int | None) -> list[StepWindow]:
        pipe = self.r.pipeline(transaction=False)
        for ref in refs:
            pipe.xrange(f"{RAW_PREFIX}:{ref.episode_id}", f"0-{ref.start + 1}", "+", count=window)
        out = []
        for ref, entries in zip(refs, pipe.execute(), strict=True):
            rows = [fields for _, fields in entries]
            n_img = len(rows) if image_steps is None else min(len(rows), image_steps)
            images = (
                {
                    c: np.stack(
                        [decode_frame(row[c.encode()], "jpeg", self.shapes[c]) for row in rows[:n_img]]
                    )
                    for c in self.shapes
                }
                if n_img
                else {}
            )
            low = {
                k: np.stack([np.frombuffer(row[k.encode()], _LOW_DTYPES[k]) for row in rows])
                for k in LOW_FIELDS
            }
            out.append(
                StepWindow(
                    meta=self.meta,
                    start=ref.start,
                    state=low["state"],
                    action=low["action"],
                    intervention=low["intervention"].reshape(-1),
                    timestamp=low["timestamp"].reshape(-1),
                    images=images,
                )
            )
        return out


def fill(
    client: redis.Redis, store: ReplayStore, template: EpisodeTemplate, episodes: int
) -> tuple[list[str], dict]:
    """The same episodes into the store and into raw streams; returns ids and memory figures."""
    stamper = EpisodeStamper(template, 0)
    base = used_memory(client)
    ids = []
    reset_peak_rss()
    for _ in range(episodes):
        eid, blob = stamper.next()
        assert store.append(blob).status == "stored"  # type: ignore[arg-type]
        ids.append(eid)
    mem_store = used_memory(client) - base
    writer_rss = peak_rss_mb()
    reset_peak_rss()
    for eid in ids:
        pipe = client.pipeline(transaction=False)
        raw_write(pipe, template, eid)
        pipe.execute()
    mem_raw = used_memory(client) - base - mem_store
    raw_rss = peak_rss_mb()
    payload = episodes * template.payload_bytes
    return ids, {
        "store": mem_store / payload,
        "raw": mem_raw / payload,
        "payload_mb": payload / 1e6,
        "writer_rss_mb": writer_rss,
        "raw_rss_mb": raw_rss,
    }


def check_same(store: ReplayStore, naive: NaiveSampler, ids: list[str], window: int) -> None:
    """Both sides must return the same steps, or the comparison means nothing."""
    rng = random.Random(1)
    refs = [EpisodeRef(rng.choice(ids), rng.randrange(naive.steps - window + 1)) for _ in range(8)]
    for a, b in zip(store.read_windows(refs, window), naive.read_windows(refs, window, None), strict=True):
        assert a.start == b.start
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.action, b.action)
        for c in b.images:
            np.testing.assert_array_equal(a.images[c], b.images[c])


def interleaved(
    sides: dict[str, Callable[[], list[StepWindow]]], seconds: float, client: redis.Redis
) -> dict[str, tuple[float, float, float]]:
    """Per side: windows/s, and CPU seconds per window of this process (every thread) and of redis-server.

    The sides take turns a batch at a time (who goes first alternates) until each has run ``seconds``: on a
    machine shared with other work, both see the same load.
    """
    for fn in sides.values():
        fn()  # warm: meta cache, connection pool, decode threads
    acc = {name: [0, 0.0, 0.0, 0.0] for name in sides}  # windows, wall s, CPU s, redis CPU s
    turn = 0
    while min(a[1] for a in acc.values()) < seconds:
        order = list(sides) if turn % 2 == 0 else list(sides)[::-1]
        turn += 1
        for name in order:
            server0 = redis_cpu_s(client)
            t0, cpu0 = time.perf_counter(), time.process_time()
            n = len(sides[name]())
            a = acc[name]
            a[1] += time.perf_counter() - t0
            a[2] += time.process_time() - cpu0
            a[3] += redis_cpu_s(client) - server0
            a[0] += n
    return {name: (n / wall, cpu / max(n, 1), rcpu / max(n, 1)) for name, (n, wall, cpu, rcpu) in acc.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~20 s instead of ~2 minutes")
    ap.add_argument("--seconds", type=float, help="per side per round (default 6, quick 1.5)")
    ap.add_argument("--rounds", type=int, help="rounds per mode (default 3, quick 1)")
    ap.add_argument("--episodes", type=int, help="episodes in the store (default 48, quick 24)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="store decode threads")
    args = ap.parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 6.0)
    rounds = args.rounds or (1 if args.quick else 3)
    episodes = args.episodes or (24 if args.quick else 48)

    t_start = time.perf_counter()
    template = build_template()
    print(
        f"episode: {template.num_steps} steps x 3 cameras 224x224 JPEG, "
        f"{template.payload_bytes / template.num_steps / 3e3:.1f} KB/frame, {template.payload_bytes / 1e6:.2f} MB"
    )
    with bench_redis(aof=False) as server:
        client = server.client()
        print(
            f"limits: loopback {loopback_bytes_per_s(0.5 if args.quick else 1.0) / 1e9:.2f} GB/s (raw socket); "
            f"redis SET {redis_set_ops(server, 3, 100_000 if args.quick else 400_000) / 1e3:.0f}k ops/s "
            f"(3 B, pipelined); {machine_load()}"
        )
        store = ReplayStore(
            client,
            ReplayConfig(capacity_mb=1 << 20, chunk_steps=template.chunk_steps),
            SCHEMAS,
            decode_workers=args.workers,
        )
        try:
            ids, mem = fill(client, store, template, episodes)
            meta = store.metas(ids[:1])[0]
            assert meta is not None
            naive = NaiveSampler(
                client, ids, template.num_steps, meta, {c: (224, 224, 3) for c in EMBODIMENT.cameras}
            )
            check_same(store, naive, ids, args.window)
            print(
                f"filled {episodes} episodes ({mem['payload_mb']:.0f} MB payload) into both; same windows back"
            )
            rng = random.Random(0)
            results: dict[tuple[str, int | None], list[tuple[float, float, float]]] = {}
            for image_steps in (None, 1):
                sides = {
                    "naive": lambda s=image_steps: naive.sample(args.batch, args.window, s, rng),
                    "store": lambda s=image_steps: store.sample(
                        args.batch, args.window, image_steps=s, rng=rng
                    ),
                }
                for r in range(rounds):
                    got = interleaved(sides, seconds, client)
                    for side, w in got.items():
                        results.setdefault((side, image_steps), []).append(w)
                    print(
                        f"  image_steps={image_steps or args.window:2d} round {r}: naive {got['naive'][0]:6.1f}, "
                        f"store {got['store'][0]:6.1f} windows/s ({machine_load()})",
                        flush=True,
                    )
        finally:
            store.close()
            client.flushall()
            client.close()

    mean = {k: sum(x[0] for x in v) / len(v) for k, v in results.items()}
    cpu = {k: (sum(x[1] for x in v) / len(v), sum(x[2] for x in v) / len(v)) for k, v in results.items()}
    frame_mb = template.payload_bytes / template.num_steps / 3 / 1e6
    print(
        f"\nresults (batch {args.batch} x window {args.window}, {rounds} round(s) of {seconds:.0f} s per side, "
        f"{args.workers} decode threads):"
    )
    for image_steps in (None, 1):
        k = image_steps or args.window
        for side in ("naive", "store"):
            w = mean[(side, image_steps)]
            c, rc = cpu[(side, image_steps)]
            print(
                f"  image_steps={k:2d} {side:5s}: {w:7.1f} windows/s  {w / args.batch:6.1f} batches/s  "
                f"{w * k * 3:7.0f} frames/s  {w * k * 3 * frame_mb:6.1f} MB/s of JPEG   CPU per window: "
                f"sampler {c * 1e3:5.2f} ms, redis {rc * 1e3:5.2f} ms"
            )
        cpu_ratio = cpu[("naive", image_steps)][0] / cpu[("store", image_steps)][0]
        print(
            f"  image_steps={k:2d} ratio store/naive: {mean[('store', image_steps)] / mean[('naive', image_steps)]:.2f}"
            f" (CPU per window naive/store {cpu_ratio:.2f}: the ratio a saturated machine leaves; idle cores "
            f"multiply it by up to {args.workers}, the store's decode threads)"
        )
    print(
        f"  memory: used_memory per payload byte: store {mem['store']:.3f} (goal <= 1.15), raw streams "
        f"{mem['raw']:.3f}; peak RSS of this process while filling: store {mem['writer_rss_mb']:.0f} MB, "
        f"raw {mem['raw_rss_mb']:.0f} MB (imports + template ~100 MB)"
    )
    print(f"  total {time.perf_counter() - t_start:.0f} s; now {machine_load()}")
    print(
        f"ratio store/naive: {mean[('store', None)] / mean[('naive', None)]:.2f} (full {args.window}-step windows "
        "decoded, goal >= 2)"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: bench_redis stopped the server
        sys.exit(130)
