"""Ingest benchmark: episodes/s, frames/s and MB/s into the replay store from N writer processes, next to raw
redis-py pipelined XADD of the same bytes (one stream per episode, one entry per step) in the same run.

    .venv/bin/python -m bench.ingest            # ~2 minutes
    .venv/bin/python -m bench.ingest --quick    # ~20 s

Phases alternate raw and store (order swapped every round) so drift on a shared machine hits both alike; both
sides evict their oldest episodes beyond the same byte budget, so both run at steady state. Also reported:
Redis ``used_memory`` per stored payload byte (JPEG + low-dim array bytes) with the store full, the peak RSS of
a writer process, and the machine's limits (loopback bytes/s, redis-benchmark SET ops/s). The last line is the
store/raw ratio (goal: >= 0.7).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench.replay_workload import (
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
from fleet.replay import ReplayStore

MODES = ("raw", "store")


@dataclass
class PhaseResult:
    mode: str
    writers: int
    episodes: int
    seconds: float  # summed over writers: rate = sum of each writer's episodes / its own elapsed time
    rate: float  # episodes/s over all writers
    peak_rss_mb: float  # largest writer peak RSS
    writer_cpu_s: float  # CPU seconds of all writers (user + sys)
    redis_cpu_s: float  # CPU seconds of redis-server over the phase


def _writer(
    index: int,
    port: int,
    password: str,
    template: EpisodeTemplate,
    capacity_bytes: int,
    commands: mp.Queue,
    results: mp.Queue,
    barrier: mp.Barrier,
) -> None:
    """A writer process: runs phases on command until it gets None."""
    client = redis.Redis(port=port, password=password)
    cfg = ReplayConfig(capacity_mb=capacity_bytes / 2**20, reservoir_size=8, chunk_steps=template.chunk_steps)
    store = ReplayStore(client, cfg, SCHEMAS, decode_workers=0)
    stamper = EpisodeStamper(template, index)
    raw_keys: collections.deque[str] = collections.deque()
    while (cmd := commands.get()) is not None:
        mode, seconds, writers = cmd
        budget = capacity_bytes // writers // template.payload_bytes  # raw side: episodes kept per writer

        def write_one(mode: str = mode, budget: int = budget) -> None:
            eid, blob = stamper.next()
            if mode == "store":
                res = store.append(blob)  # type: ignore[arg-type]  # a bytes-like buffer, patched in place
                assert res.status == "stored", res
                return
            pipe = client.pipeline(transaction=False)
            raw_write(pipe, template, eid)
            raw_keys.append(f"{RAW_PREFIX}:{eid}")
            while len(raw_keys) > budget:
                pipe.delete(raw_keys.popleft())
            pipe.execute()

        raw_keys.clear()
        reset_peak_rss()
        write_one()  # warm-up: loads the Lua script, fills the connection pool
        barrier.wait()
        t0, cpu0 = time.perf_counter(), time.process_time()
        count = 0
        while time.perf_counter() - t0 < seconds:
            write_one()
            count += 1
        results.put((index, count, time.perf_counter() - t0, peak_rss_mb(), time.process_time() - cpu0))
    client.close()


class WriterPool:
    """N persistent writer processes (spawned once: imports cost seconds) driven phase by phase."""

    def __init__(self, n: int, port: int, password: str, template: EpisodeTemplate, capacity_bytes: int):
        ctx = mp.get_context("spawn")
        self.n = n
        self.barrier = ctx.Barrier(n + 1)
        self.results: mp.Queue = ctx.Queue()
        self.queues = [ctx.Queue() for _ in range(n)]
        self.procs = [
            ctx.Process(
                target=_writer,
                daemon=True,
                args=(
                    i,
                    port,
                    password,
                    template,
                    capacity_bytes,
                    self.queues[i],
                    self.results,
                    self.barrier,
                ),
            )
            for i in range(n)
        ]
        for p in self.procs:
            p.start()

    def run(self, mode: str, seconds: float, client: redis.Redis) -> PhaseResult:
        for q in self.queues:
            q.put((mode, seconds, self.n))
        self.barrier.wait(timeout=120)  # every writer has warmed up
        server0 = redis_cpu_s(client)
        got = [self.results.get(timeout=seconds + 120) for _ in range(self.n)]
        return PhaseResult(
            mode,
            self.n,
            sum(g[1] for g in got),
            sum(g[2] for g in got),
            sum(g[1] / g[2] for g in got),
            max(g[3] for g in got),
            sum(g[4] for g in got),
            redis_cpu_s(client) - server0,
        )

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~20 s instead of ~2 minutes")
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2], help="writer process counts to run")
    ap.add_argument("--seconds", type=float, help="per phase (default 8, quick 2)")
    ap.add_argument("--rounds", type=int, help="raw/store rounds per writer count (default 3, quick 1)")
    ap.add_argument("--capacity-mb", type=float, default=1024, help="bytes each side keeps before evicting")
    ap.add_argument("--steps", type=int, default=300, help="steps per episode (30 Hz)")
    ap.add_argument("--aof", action="store_true", help="run redis with AOF everysec (measures the disk too)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 3)

    t_start = time.perf_counter()
    template = build_template(args.steps)
    frames = template.num_steps * 3
    mb = template.payload_bytes / 1e6
    print(
        f"episode: {template.num_steps} steps x 3 cameras 224x224 JPEG, {frames / template.num_steps:.0f} "
        f"frames/step, {template.payload_bytes / frames / 1e3:.1f} KB/frame, {mb:.2f} MB payload; "
        f"built in {time.perf_counter() - t_start:.1f} s"
    )
    with bench_redis(args.aof) as server:
        client = server.client()
        print(
            f"limits: loopback {loopback_bytes_per_s(0.5 if args.quick else 1.0) / 1e9:.2f} GB/s (raw socket); "
            f"redis SET {redis_set_ops(server, 3, 100_000 if args.quick else 400_000) / 1e3:.0f}k ops/s "
            f"(3 B, pipelined); SET 16 KB "
            f"{redis_set_ops(server, 16_000, 20_000 if args.quick else 60_000) * 16e3 / 1e9:.2f} GB/s; "
            f"{machine_load()}"
        )
        empty = used_memory(client)
        capacity = int(args.capacity_mb * 2**20)
        results: list[PhaseResult] = []
        memory: dict[str, float] = {}
        for n in args.writers:
            pool = WriterPool(n, server.port, server.password, template, capacity)
            try:
                for r in range(rounds):
                    for mode in MODES if r % 2 == 0 else MODES[::-1]:
                        client.flushall()
                        res = pool.run(mode, seconds, client)
                        results.append(res)
                        print(
                            f"  N={n} {mode:5s} round {r}: {res.rate:7.2f} episodes/s "
                            f"{res.rate * mb:8.1f} MB/s  writer peak RSS {res.peak_rss_mb:.0f} MB",
                            flush=True,
                        )
                        if mode == "store" and "per_byte" not in memory:
                            memory.update(_store_memory(client, empty, template))
            finally:
                pool.close()
        client.flushall()
        client.close()

    print(
        f"\nresults ({rounds} round(s) of {seconds:.0f} s per side, capacity {args.capacity_mb:.0f} MB, "
        f"AOF {'everysec' if args.aof else 'off'}):"
    )
    ratios = {}
    for n in args.writers:
        rate = {m: _mean_rate([x for x in results if x.writers == n and x.mode == m]) for m in MODES}
        rss = {m: max(x.peak_rss_mb for x in results if x.writers == n and x.mode == m) for m in MODES}
        ratios[n] = rate["store"] / rate["raw"]
        for m in MODES:
            phases = [x for x in results if x.writers == n and x.mode == m]
            eps = sum(x.episodes for x in phases) or 1
            print(
                f"  N={n} {m:5s}: {rate[m]:7.2f} episodes/s  {rate[m] * frames:9.0f} frames/s  "
                f"{rate[m] * mb:8.1f} MB/s   CPU per episode: writer {sum(x.writer_cpu_s for x in phases) / eps * 1e3:5.1f} ms"
                f", redis {sum(x.redis_cpu_s for x in phases) / eps * 1e3:5.1f} ms"
            )
        print(
            f"  N={n} writer peak RSS (VmHWM, per phase; imports + the pre-encoded episode are ~100 MB): "
            f"store {rss['store']:.0f} MB, raw {rss['raw']:.0f} MB"
        )
    if memory:
        print(
            f"  memory: store full with {memory['episodes']:.0f} episodes: used_memory "
            f"{memory['used_mb']:.0f} MB over {memory['payload_mb']:.0f} MB payload = "
            f"{memory['per_byte']:.3f} per payload byte (goal <= 1.15)"
        )
    print(f"  total {time.perf_counter() - t_start:.0f} s; now {machine_load()}")
    print("ratio store/raw: " + ", ".join(f"N={n} {r:.2f}" for n, r in ratios.items()) + " (goal >= 0.7)")
    return 0


def _mean_rate(rs: list[PhaseResult]) -> float:
    return sum(r.rate for r in rs) / len(rs)


def _store_memory(client: redis.Redis, empty: int, template: EpisodeTemplate) -> dict[str, float]:
    """used_memory per payload byte with the store at its steady state (writers idle, so no buffers count)."""
    time.sleep(0.2)
    episodes = client.zcard("mf:idx:all")
    payload = episodes * template.payload_bytes
    used = used_memory(client) - empty
    return {
        "episodes": episodes,
        "used_mb": used / 1e6,
        "payload_mb": payload / 1e6,
        "per_byte": used / payload,
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the context managers above stopped redis and the writers
        sys.exit(130)
