"""MolmoThink on recorded sim episodes: latency per call of full depth regeneration vs adaptive vs no depth,
and how far adaptive's actions are from full regeneration's.

    .venv/bin/python -m bench.molmothink            # ~3-4 minutes on an idle 2-core box
    .venv/bin/python -m bench.molmothink --quick    # fewer episodes and training steps

1. Record: franka episodes in MuJoCo (actors.sim FleetSimEnv, 96 px cameras, metric depth of the main camera)
   driven by the scripted expert, then `--hold` steps of the arm standing still at its goal (what an arm
   does between tasks: the "mostly static" part of a fleet's day).
2. Train the tiny MolmoAct2 briefly on those steps with depth targets (output styles 1:0:1), so the depth
   tokens mean something and the expert has learned to read them.
3. Replay each episode as a robot would see it, one policy call every `--stride` steps, three ways per call:
   full regeneration (100 codes decoded one by one), adaptive (the robot's cache from its previous call; only
   changed cells decoded), no depth. Same flow noise for full and adaptive, so their action difference is the
   depth block's doing. Single-threaded; wall and CPU time (the box is shared: CPU time is what an idle core
   would take). The last line is the full/adaptive latency ratio (goal >= 3 on mostly static scenes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from actors.embodiments import EMBODIMENTS as FLEET
from actors.sim.env import FleetSimEnv
from actors.sim.experts import EXPERTS
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.molmothink import MolmoThink, ThinkCache
from policy.normalization import NormStats
from policy.processor import PolicySample

EMB = FLEET["franka"]


def snapshot(obs: dict, action: np.ndarray) -> dict:
    """One step, copied out of the env's buffers."""
    return {
        "images": {cam: img.copy() for cam, img in obs["images"].items()},  # main camera first
        "depth": obs["depth"].copy(),  # (H, W) metres, main camera
        "state": np.asarray(obs["state"], np.float32).copy(),
        "action": np.asarray(action, np.float32).copy(),
    }


def record(episodes: int, steps: int, hold: int, task: str) -> list[list[dict]]:
    """Per episode, per step: images, depth, state, action (the expert's)."""
    out = []
    env = FleetSimEnv(EMB.name, task, image_size=96)
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            expert = EXPERTS[task](env.scene, env.task)
            frames = []
            for _ in range(steps):
                action = np.asarray(expert.act(), np.float32)
                frames.append(snapshot(obs, action))
                obs, _, done, truncated, _ = env.step(action)
                if done or truncated:
                    break
            frames += [snapshot(obs, obs["state"])] * hold  # the arm holds its last pose
            out.append(frames)
    finally:
        env.close()
    return out


def to_sample(ep: list[dict], t: int, instruction: str, with_targets: bool) -> PolicySample:
    f = ep[t]
    s = PolicySample(
        images=dict(f["images"]), state=f["state"], instruction=instruction, embodiment=EMB.norm_tag
    )
    if with_targets:
        s.actions = np.stack([ep[min(t + k, len(ep) - 1)]["action"] for k in range(EMB.chunk_horizon)])
        s.depth = f["depth"]
    return s


def train(
    policy: MolmoAct2Policy, episodes: list[list[dict]], steps: int, instruction: str
) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    pool = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep))]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    policy.train()
    first = last = float("nan")
    for i in range(steps):
        picks = [pool[j] for j in rng.choice(len(pool), 8, replace=False)]
        batch = policy.processor.collate([to_sample(episodes[e], t, instruction, True) for e, t in picks])
        out = policy.loss(batch, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["depth_ce"].item() if i == 0 else first
        last = out["depth_ce"].item()
    policy.eval()
    return first, last


def timed(think: MolmoThink, s: PolicySample, cache: ThinkCache | None, mode: str, seed: int) -> tuple:
    """(output, wall ms, CPU ms) of one call with its own flow-noise generator."""
    gen = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    out = think.infer([s], [cache] if mode == "adaptive" else None, mode, gen)
    return out, (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--task", default="pick_place")
    ap.add_argument("--stride", type=int, default=3, help="control steps between two policy calls")
    ap.add_argument("--hold", type=int, default=60, help="still steps recorded after each episode")
    args = ap.parse_args()
    episodes, steps, train_steps = (2, 45, 20) if args.quick else (3, 90, 60)
    torch.set_num_threads(1)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (2 cores)")

    eps = record(episodes, steps, args.hold, args.task)
    instruction = f"{args.task.replace('_', ' ')} with the franka"
    acts = np.concatenate([[f["action"] for f in ep] for ep in eps])
    stats = NormStats()
    stats.add(EMB.norm_tag, np.concatenate([[f["state"] for f in ep] for ep in eps]), acts, action_horizon=15)
    policy = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), stats, seed=0)
    t0 = time.perf_counter()
    ce0, ce1 = train(policy, eps, train_steps, instruction)
    print(
        f"recorded {episodes} x ({', '.join(str(len(e) - args.hold) for e in eps)} moving + {args.hold} still) "
        f"steps of {args.task}; trained {train_steps} steps in {time.perf_counter() - t0:.0f} s "
        f"(depth CE {ce0:.2f} -> {ce1:.2f})"
    )

    think = MolmoThink(policy)
    rows: dict[str, dict[str, list[float]]] = {
        m: {"wall": [], "cpu": [], "cells": []} for m in ("full", "adaptive", "none")
    }
    parts: list[str] = []  # per call: "moving" or "still"
    diffs: dict[str, list[np.ndarray]] = {"moving": [], "still": []}
    for e, ep in enumerate(eps):
        cache = None
        moving = len(ep) - args.hold
        for t in range(0, len(ep), args.stride):
            s = to_sample(ep, t, instruction, False)
            seed = 1000 * e + t
            runs = {}
            for mode in ("full", "adaptive", "none"):
                if t == 0 and e == 0:  # warm-up call: allocator and kernels, not the method
                    timed(think, s, cache, mode, seed)
                out, wall, cpu = timed(think, s, cache, mode, seed)
                runs[mode] = out
                rows[mode]["wall"].append(wall)
                rows[mode]["cpu"].append(cpu)
                rows[mode]["cells"].append(out.repredicted[0])
            cache = runs["adaptive"].caches[0]
            full_n = stats.normalize_action(EMB.norm_tag, runs["full"].actions[0])
            adapt_n = stats.normalize_action(EMB.norm_tag, runs["adaptive"].actions[0])
            parts.append("moving" if t < moving else "still")
            diffs[parts[-1]].append(np.abs(full_n - adapt_n))

    print(f"\nper call (1 thread, 1 robot, one call every {args.stride} steps; median wall | mean CPU ms)")
    for mode, r in rows.items():
        print(
            f"  {mode:9s} {statistics.median(r['wall']):7.1f} | {statistics.mean(r['cpu']):7.1f} ms   "
            f"cells decoded per call: {statistics.mean(r['cells']):5.1f} of 100"
        )
    for part, d in diffs.items():
        if d:
            a = np.stack(d)
            print(
                f"  |full - adaptive| actions, {part:6s} part ({len(d)} calls, normalised units): "
                f"mean {a.mean():.4f}, max {a.max():.4f}"
            )
    for part in ("moving", "still"):
        pick = [i for i, p in enumerate(parts) if p == part]
        if pick:
            f, a = (statistics.mean(rows[m]["cpu"][i] for i in pick) for m in ("full", "adaptive"))
            print(f"  {part:6s} part: full {f:6.1f} ms, adaptive {a:6.1f} ms CPU -> {f / a:.2f}x")
    full, adaptive = (statistics.mean(rows[m]["cpu"]) for m in ("full", "adaptive"))
    none = statistics.mean(rows["none"]["cpu"])
    print(f"  adaptive / no-depth CPU time: {adaptive / none:.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"full / adaptive latency ratio (CPU time, all calls): {full / adaptive:.2f}x")


if __name__ == "__main__":
    main()
