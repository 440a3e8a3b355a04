"""Simulated fleet throughput: env steps/s with images, in 1 and 2 processes, beside physics-only steps/s.

For each embodiment it measures, in this same run:
- physics: `FleetSimEnv(render=False).step` (physics, state, success check): the limit rendering can approach
- render 1p: the full step with every camera's image and the main camera's depth, one process
- render 2p: the same in two processes at once (the sum of their rates), to see how it scales on this machine
- reset: mean time of `reset()` (must stay well under 50 ms for fleet episodes)
and prints each rate with its ratio to physics and to the control rate (x real time), plus CPU milliseconds per
step (all threads), which other processes on a shared machine disturb far less than wall-clock rates. Each
figure is the best of `--repeats` runs: on a busy machine the best run is the one least disturbed.

    .venv/bin/python -m bench.sim [--seconds 2] [--repeats 3] [--image-size 96] [--task reach]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")


def _actions(env, n: int):
    """A smooth sweep around the start pose: the arm moves, so physics has work to do."""
    import numpy as np

    home = env.unwrapped.scene.home_state()
    low, high = env.action_space.low, env.action_space.high
    t = np.arange(n)[:, None] / env.embodiment.control_hz
    sweep = 0.3 * np.sin(2 * np.pi * 0.5 * t + np.arange(home.size)[None])
    return np.clip(home + sweep, low, high).astype(np.float32)


def measure(embodiment: str, task: str, render: bool, image_size: int, seconds: float) -> dict[str, float]:
    """Steps per second of one env for about `seconds`, plus mean reset time (ms)."""
    from actors.sim import make_env

    env = make_env(embodiment, task, seed=0, image_size=image_size, render=render, time_limit_s=1e6)
    try:
        resets = []
        for i in range(5):
            t0 = time.perf_counter()
            env.reset(seed=i)
            resets.append(time.perf_counter() - t0)
        actions = _actions(env, 100_000)
        for a in actions[:20]:  # warm up caches and the GL pipeline (llvmpipe compiles shaders on first use)
            env.step(a)
        steps, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            for a in actions[steps : steps + 50]:
                env.step(a)
            steps += 50
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {
            "sps": steps / elapsed,
            "cpu_ms": 1000 * cpu / steps,  # CPU per step (all threads): comparable on a busy machine
            "reset_ms": 1000 * sum(resets[1:]) / (len(resets) - 1),
        }
    finally:
        env.close()


def _worker(args: tuple, barrier, out) -> None:
    barrier.wait()  # both processes start measuring together
    out.put(measure(*args))


def in_processes(n: int, *args) -> list[dict[str, float]]:
    """`measure(*args)` in `n` fresh processes at the same time (each makes its own GL context).

    Every figure, one process included, is measured this way, so 1p and 2p run under the same conditions.
    """
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        return [out.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def best(results: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the best of several runs (highest rate, lowest times)."""
    return {k: (max if k == "sps" else min)(r[k] for r in results) for k in results[0]}


def main() -> None:
    from actors.embodiments import EMBODIMENTS
    from actors.sim import TASKS_BY_EMBODIMENT

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure, s")
    parser.add_argument("--image-size", type=int, default=96, help="image side, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the best one is shown")
    parser.add_argument(
        "--task", default="reach", help="task to step (each embodiment's first task if absent)"
    )
    parser.add_argument("--embodiments", nargs="*", default=sorted(EMBODIMENTS))
    args = parser.parse_args()

    print(
        f"cpus {os.cpu_count()}  image {args.image_size}x{args.image_size}  {args.seconds:.1f} s per figure"
    )
    header = (
        f"{'embodiment':<13}{'task':<11}{'Hz':>4}{'reset ms':>10}{'physics/s':>11}{'render 1p/s':>13}"
        f"{'1p/phys':>9}{'x real':>8}{'render 2p/s':>13}{'2p/phys':>9}{'2p/1p':>7}"
        f"{'cpu ms phys':>13}{'cpu ms 1p':>11}{'cpu 1p/phys':>13}"
    )
    print(header)
    for name in args.embodiments:
        emb = EMBODIMENTS[name]
        task = args.task if args.task in TASKS_BY_EMBODIMENT[name] else TASKS_BY_EMBODIMENT[name][0]
        runs = range(args.repeats)
        physics = best([in_processes(1, name, task, False, args.image_size, args.seconds)[0] for _ in runs])
        one = best([in_processes(1, name, task, True, args.image_size, args.seconds)[0] for _ in runs])
        pairs = [in_processes(2, name, task, True, args.image_size, args.seconds) for _ in runs]
        two = max(sum(r["sps"] for r in pair) for pair in pairs)  # both processes' steps per second
        p, r1 = physics["sps"], one["sps"]
        print(
            f"{name:<13}{task:<11}{emb.control_hz:>4.0f}{one['reset_ms']:>10.1f}{p:>11.0f}{r1:>13.0f}"
            f"{r1 / p:>9.2f}{r1 / emb.control_hz:>8.1f}{two:>13.0f}{two / p:>9.2f}{two / r1:>7.2f}"
            f"{physics['cpu_ms']:>13.2f}{one['cpu_ms']:>11.2f}{one['cpu_ms'] / physics['cpu_ms']:>13.2f}"
        )


if __name__ == "__main__":
    main()
