"""PolicyServer throughput and latency vs number of robots, batched vs unbatched, measured in the same run.

    .venv/bin/python -m bench.serving                   # ~2-3 minutes on an idle 2-core box
    .venv/bin/python -m bench.serving --depth adaptive  # with MolmoThink (each robot's block moves each call)
    .venv/bin/python -m bench.serving --quick

Real sockets: N robots, each a thread with the actors' `RemotePolicyClient` (ZeroMQ DEALER) in a closed loop
(ask for a chunk, wait for it, ask again) against one `PolicyServer` holding the tiny MolmoAct2 on one torch
thread. "unbatched" is the same server with max_batch=1. Per robot count: chunks/s over the window and the
client-side p50/p99 latency (request sent -> chunk back, including queueing), and this process's CPU time
per chunk (server and clients; what other tenants of a shared box cannot inflate). The box is shared
(2 cores): the load average is printed; compare rows of one run only. The last line is the batched/unbatched throughput ratio
at the most robots.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from actors.policy_client import RemotePolicyClient
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.molmothink import ThinkConfig
from policy.normalization import NormStats
from policy.processor import PolicySample
from policy.serving import PolicyServer, PolicyServerConfig

TAG = "franka"


def frame(seed: int, block: int) -> np.ndarray:
    """A robot's 96 px main camera: its own texture, with a block at cell `block` of the 10 x 10 grid."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 200, (96, 96, 3), dtype=np.uint8)
    r, c = divmod(block % 100, 10)
    img[r * 9 + 2 : r * 9 + 8, c * 9 + 2 : c * 9 + 8] = (230, 30, 30)
    return img


def run(server: PolicyServer, robots: int, seconds: float) -> tuple[float, float, float, float, int]:
    """Closed-loop robots for `seconds`: (chunks/s, p50 ms, p99 ms, CPU ms per chunk, errors)."""
    latencies: list[list[float]] = [[] for _ in range(robots)]
    errors = [0]
    start, stop = threading.Barrier(robots + 1), threading.Event()

    def robot(i: int) -> None:
        client = RemotePolicyClient(server.address, f"arm-{robots}-{i}", timeout_s=60.0, retries=0)
        state = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
        try:
            client.infer(
                PolicySample({"main": frame(i, 0), "wrist": frame(i, 0)}, state, "stack the blocks", TAG)
            )
            start.wait()  # every robot has its first (cache-filling) answer before the clock starts
            k = 1
            while not stop.is_set():
                main = frame(i, 11 * i + k)  # the block moves one cell per call
                s = PolicySample({"main": main, "wrist": main[::-1]}, state, "stack the blocks", TAG)
                t0 = time.perf_counter()
                try:
                    client.infer(s)
                except Exception:
                    errors[0] += 1
                    continue
                latencies[i].append((time.perf_counter() - t0) * 1e3)
                k += 1
        finally:
            client.close()

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(robots)]
    for t in threads:
        t.start()
    start.wait()
    c0 = time.process_time()
    time.sleep(seconds)
    stop.set()
    cpu = time.process_time() - c0
    for t in threads:
        t.join(120)
    done = np.concatenate([np.asarray(x) for x in latencies if x]) if any(latencies) else np.zeros(1)
    p50, p99 = np.percentile(done, [50, 99])
    return len(done) / seconds, float(p50), float(p99), cpu * 1e3 / max(len(done), 1), errors[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--depth", choices=("none", "adaptive", "full"), default="none")
    ap.add_argument("--robots", default="1,4,8,16")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    args = ap.parse_args()
    seconds = 4.0 if args.quick else 10.0
    counts = [int(x) for x in args.robots.split(",")]
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    stats = NormStats()
    stats.add(TAG, rng.uniform(-2, 2, (400, 8)), rng.uniform(-2, 2, (400, 8)), action_horizon=15)
    policy = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), stats, seed=0).eval()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (2 cores)")
    print(
        f"tiny MolmoAct2, 1 torch thread, depth mode {args.depth!r}, {seconds:.0f} s per row, closed-loop robots; "
        f"batched: max_batch={max(counts)}, max_wait={args.max_wait_ms} ms"
    )
    print(f"{'robots':>6} | {'unbatched chunks/s':>18} {'p50':>6} {'p99':>6} {'CPU/chunk':>9} | "
          f"{'batched chunks/s':>16} {'p50':>6} {'p99':>6} {'CPU/chunk':>9} | {'ratio':>5} {'CPU ratio':>9}")  # fmt: skip
    ratio = 0.0
    for n in counts:
        row = []
        for max_batch in (1, max(counts)):
            cfg = PolicyServerConfig(
                port=0, max_batch=max_batch, max_wait_ms=args.max_wait_ms, think=ThinkConfig(mode=args.depth)
            )
            with PolicyServer(policy, cfg, version=1) as server:
                row.append(run(server, n, seconds))
        (u, u50, u99, uc, ue), (b, b50, b99, bc, be) = row
        ratio, cpu_ratio = b / max(u, 1e-9), uc / max(bc, 1e-9)
        print(
            f"{n:>6} | {u:>18.1f} {u50:>6.0f} {u99:>6.0f} {uc:>7.1f}ms | {b:>16.1f} {b50:>6.0f} {b99:>6.0f} "
            f"{bc:>7.1f}ms | {ratio:>5.2f} {cpu_ratio:>8.2f}x"
            + (f"   errors: {ue} / {be}" if ue or be else "")
        )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"batched / unbatched throughput at {counts[-1]} robots: {ratio:.2f}x (CPU per chunk: {cpu_ratio:.2f}x less)"
    )


if __name__ == "__main__":
    main()
