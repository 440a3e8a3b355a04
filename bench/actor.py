"""Actor benchmark: achieved control rate and p99 jitter of 1, 2 and 4 simulated actors on this machine, with
asynchronous chunked inference next to the synchronous baseline (the arm stops while each chunk is computed),
measured side by side: task completion time and the fraction of the time the arm sat idle.

    .venv/bin/python -m bench.actor              # ~3.5 minutes on 2 cores
    .venv/bin/python -m bench.actor --quick      # 1 and 2 actors, 2 episodes each

Each actor is its own process, as in the fleet: a Franka doing `reach` at 15 Hz, recording every episode into
a real replay store through its spool. So that tasks actually finish, the actions come from the scripted
expert's chunk (planned on a copy of the physics at the observation), and every chunk also runs the tiny
MolmoAct2's real forward pass on the same observation, so inference costs what our CPU model costs. All
actors of a round run the same mode at the same time (a barrier starts each phase), with the same episode
seeds in both modes. The last line is the async/sync completion-time ratio (lower is better).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

MODES = ("async", "sync")


def _actor_process(
    index: int, args: argparse.Namespace, port: int, password: str, barrier: Any, out: Any, spool_root: str
) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import redis
    import torch

    from actors.embodiments import get_embodiment, schemas
    from actors.policy_client import InProcessPolicyClient, PolicyClient, ScriptedPolicyClient
    from actors.recorder import EpisodeRecorder
    from actors.runtime import RobotActor
    from actors.sim.env import FleetSimEnv
    from fleet.config import ActorsConfig, ReplayConfig
    from fleet.replay import ReplayStore
    from fleet.spool import Spool

    class ExpertActionsModelCost(PolicyClient):
        """Actions from the scripted expert's plan, cost from the tiny MolmoAct2 on the same observation."""

        def __init__(self, expert: ScriptedPolicyClient, model: InProcessPolicyClient):
            self.expert, self.model = expert, model

        def sample_from(self, obs, instruction, embodiment_tag):  # type: ignore[no-untyped-def]
            return self.expert.sample_from(obs, instruction, embodiment_tag)

        def infer(self, sample):  # type: ignore[no-untyped-def]
            self.model.infer(sample)
            return self.expert.infer(sample)

    torch.set_num_threads(1)
    sys.setswitchinterval(ActorsConfig().gil_switch_ms / 1000)  # as fleet.cli_actor.run_actor does
    emb = get_embodiment(args.embodiment)
    env = FleetSimEnv(emb.name, args.task, image_size=args.image_size)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    store = ReplayStore(client, ReplayConfig(), schemas=schemas(), decode_workers=0)
    spool = Spool(Path(spool_root) / f"bench-{index}", store.append).start()
    recorder = EpisodeRecorder(
        spool, emb.schema, robot_id=f"bench-{index}", task=args.task, fps=emb.control_hz, source="eval"
    )
    model = InProcessPolicyClient.tiny(seed=index)
    model.infer(
        ScriptedPolicyClient(env, emb.chunk_horizon).sample_from(
            env.reset(seed=0)[0], "warm up", emb.norm_tag
        )
    )
    report: dict[str, dict[str, Any]] = {}
    try:
        for mode in MODES:
            policy = ExpertActionsModelCost(ScriptedPolicyClient(env, emb.chunk_horizon), model)
            cfg = ActorsConfig(async_inference=mode == "async", time_scale=1.0)
            actor = RobotActor(f"bench-{index}", emb, args.task, env, policy, cfg, recorder=recorder)
            barrier.wait()
            results = actor.run(episodes=args.episodes, seed=100)
            st = actor.stats()
            actor.close()
            report[mode] = {
                "rate_hz": st.clock.rate_hz,
                "target_hz": st.clock.target_hz,
                "jitter_p50_ms": st.clock.jitter_p50_ms,
                "jitter_p99_ms": st.clock.jitter_p99_ms,
                "overruns": st.clock.overruns,
                "ticks": st.clock.ticks,
                "completion_s": [r.completion_s for r in results],
                "wall_s": [r.wall_s for r in results],
                "idle_s": [r.idle_s for r in results],
                "successes": sum(r.success for r in results),
                "episodes": len(results),
                "starved": st.starved_ticks,
                "inference_p50_ms": st.inference_p50_ms,
            }
        spool.drain(30)
    finally:
        spool.stop()
        env.close()
        store.close()
        client.close()
    out.put((index, report))


def run_round(n: int, args: argparse.Namespace, port: int, password: str) -> dict[str, dict[str, float]]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-actor-") as spool_root:
        procs = [
            ctx.Process(target=_actor_process, args=(i, args, port, password, barrier, out, spool_root))
            for i in range(n)
        ]
        for p in procs:
            p.start()
        try:
            reports = [out.get(timeout=600)[1] for _ in range(n)]
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
    summary: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rs = [r[mode] for r in reports]
        # tasks that timed out count at their full length: a slower arm is not excused for failing
        completion = [
            c if c is not None else w for r in rs for c, w in zip(r["completion_s"], r["wall_s"], strict=True)
        ]
        summary[mode] = {
            "rate_hz": statistics.mean(r["rate_hz"] for r in rs),
            "rate_min_hz": min(r["rate_hz"] for r in rs),
            "target_hz": rs[0]["target_hz"],
            "jitter_p50_ms": statistics.median(r["jitter_p50_ms"] for r in rs),
            "jitter_p99_ms": max(r["jitter_p99_ms"] for r in rs),
            "overruns": sum(r["overruns"] for r in rs),
            "completion_s": float(np.mean(completion)),
            "idle_frac": sum(sum(r["idle_s"]) for r in rs) / sum(sum(r["wall_s"]) for r in rs),
            "success": sum(r["successes"] for r in rs) / sum(r["episodes"] for r in rs),
            "starved": sum(r["starved"] for r in rs),
            "inference_p50_ms": statistics.median(r["inference_p50_ms"] for r in rs),
        }
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--episodes", type=int, default=3, help="episodes per actor per mode")
    ap.add_argument("--embodiment", default="franka")
    ap.add_argument("--task", default="reach")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="1 and 2 actors, 2 episodes")
    args = ap.parse_args()
    if args.quick:
        args.actors, args.episodes = [1, 2], 2

    from fleet.redis_server import EmbeddedRedis

    print(
        f"actor bench: {args.embodiment}/{args.task}, {args.episodes} episodes per actor per mode, "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )
    header = (
        f"{'actors':>6} {'mode':>5} {'rate Hz':>8} {'min Hz':>7} {'target':>6} {'jit p50':>7} {'jit p99':>7} "
        f"{'overrun':>7} {'complete s':>10} {'idle %':>6} {'success':>7} {'starved':>7} {'infer ms':>8}"
    )
    ratios: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-actor-redis-") as d, EmbeddedRedis(d) as server:
        print(header, flush=True)
        for n in args.actors:
            s = run_round(n, args, server.port, server.password)
            for mode in MODES:
                m = s[mode]
                print(
                    f"{n:>6} {mode:>5} {m['rate_hz']:>8.2f} {m['rate_min_hz']:>7.2f} {m['target_hz']:>6.1f} "
                    f"{m['jitter_p50_ms']:>7.2f} {m['jitter_p99_ms']:>7.2f} {m['overruns']:>7.0f} "
                    f"{m['completion_s']:>10.2f} {100 * m['idle_frac']:>6.1f} {m['success']:>7.2f} "
                    f"{m['starved']:>7.0f} {m['inference_p50_ms']:>8.1f}",
                    flush=True,
                )
            ratios[n] = s["async"]["completion_s"] / s["sync"]["completion_s"]
    per_n = ", ".join(f"{n} actor{'s' if n > 1 else ''} {r:.3f}" for n, r in ratios.items())
    print(f"async/sync completion-time ratio: {statistics.mean(ratios.values()):.3f} ({per_n})")


if __name__ == "__main__":
    main()
