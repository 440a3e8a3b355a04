"""Learning curve of the tiny MolmoAct2 on one embodiment's task: held-out success vs training steps, with
absolute joint targets and with delta joint actions, on the same demonstrations, seeds and steps.

Scripted experts record ``--demos`` episodes into an embedded Redis; a fresh tiny policy per action space is
trained from scratch through the learner (DeepSpeed, full fine-tuning, every part at ``--lr``) and evaluated on
held-out scene seeds (no supervisor) after each of ``--steps``. Success is the physics check; "reach" is also
the closest the tool centre came to the target (m). Prints, last, delta / absolute held-out success at the last
checkpoint (what made the demo's policy learn on a CPU; see policy/normalization.py).

    .venv/bin/python bench/learning_curve.py [--embodiment franka] [--demos 20] [--steps 150,300] [--seeds 10]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from rich.console import Console

from actors.embodiments import schemas
from actors.evaluation import evaluate
from actors.policy_client import InProcessPolicyClient
from actors.sim.env import FleetSimEnv
from fleet.cli_learner import delta_masks, embodiment_tables
from fleet.config import ActorSpec, FleetConfig
from fleet.demo import HELD_OUT_SEED, DemoRun, demo_policy_config
from fleet.redis_server import redis_for
from fleet.replay import ReplayStore
from learner.bootstrap import open_policy
from learner.continual import Learner
from learner.publish import DirectoryWeightSink


def held_out(client: InProcessPolicyClient, embodiment: str, task: str, seeds: list[int],
             image_size: int) -> tuple[float, float]:
    """(success rate, mean closest approach of arm 0's tool centre to the task's target, m) over ``seeds``, run
    as the demo's held-out evaluation runs them (actors/evaluation.py)."""
    closest = [np.inf] * len(seeds)

    def approach(i: int, env: FleetSimEnv) -> None:
        scene, target = env.unwrapped.scene, getattr(env.unwrapped.task, "target", None)
        if target is not None:
            closest[i] = min(closest[i], float(np.linalg.norm(scene.tcp_pose(0)[0] - target.position(scene.data))))

    success = evaluate(client, embodiment, task, seeds, image_size, on_step=approach)
    return float(np.mean(success)), float(np.mean(closest))


def curve(store: ReplayStore, cfg: FleetConfig, delta: bool, args: argparse.Namespace, root: Path) -> list[tuple]:
    norm_tags, horizons, _ = embodiment_tables()
    lcfg = cfg.learner.model_copy(update={
        "finetune": "full", "delta_actions": delta, "batch_size": args.batch, "publish_every_steps": 10**9,
        "lr_llm": args.lr, "lr_vision": args.lr, "lr_expert": args.lr, "warmup_steps": 10,
        "total_steps": args.steps[-1], "log_every_steps": 10**9})
    ck = root / ("delta" if delta else "absolute")
    config = demo_policy_config("full") if args.action_only else None  # None: the tiny preset, depth styles on
    policy = open_policy(store, lcfg, ck, horizons=horizons, norm_tags=norm_tags, delta_masks=delta_masks(),
                         config=config)
    learner = Learner(store, policy, lcfg, DirectoryWeightSink(ck / "versions"), checkpoint_dir=ck,
                      norm_tags=norm_tags)
    rows = []
    seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + args.seeds))
    try:
        for steps in args.steps:
            t0 = time.perf_counter()
            learner.run(max_steps=steps)
            train_s = time.perf_counter() - t0
            rate, closest = held_out(InProcessPolicyClient(policy), args.embodiment, args.task, seeds,
                                     cfg.actors.image_size)
            policy.train()
            rows.append((steps, rate, closest, train_s))
            print(f"{'delta' if delta else 'absolute':>8}  step {steps:4d}  held-out success {rate:.2f}  "
                  f"closest {closest:.3f} m  ({train_s:.0f} s training)", flush=True)
    finally:
        learner.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embodiment", default="franka")
    ap.add_argument("--task", default="reach")
    ap.add_argument("--demos", type=int, default=20)
    ap.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[150, 300])
    ap.add_argument("--seeds", type=int, default=10, help="held-out episodes per checkpoint")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--action-only", action="store_true",
                    help="train without depth targets (the demo's policy: fleet.demo.demo_policy_config)")
    ap.add_argument("--spaces", choices=["both", "delta"], default="both",
                    help="delta: only the delta-action curve (the demo's action space)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = FleetConfig(data_dir=str(root))
        cfg.actors.robots = [ActorSpec(robot_id=f"{args.embodiment}-01", embodiment=args.embodiment, task=args.task)]
        os.environ.setdefault(cfg.weights.secret_env, secrets.token_hex(16))
        run = DemoRun(cfg, 0.0, Console(file=io.StringIO()), demos_per_robot=args.demos)
        with redis_for(run.cfg.redis, run.cfg.path("redis"), prefix=run.cfg.replay.prefix) as (client, _):
            store = ReplayStore(client, run.cfg.replay, schemas=schemas())
            print(f"{run.seed_demonstrations(client)} demonstrations of {args.embodiment} {args.task}; held-out seeds "
                  f"{HELD_OUT_SEED}..+{args.seeds}")
            absolute = curve(store, run.cfg, False, args, root) if args.spaces == "both" else []
            delta = curve(store, run.cfg, True, args, root)
            store.close()
    if not absolute:
        return
    a, d = absolute[-1][1], delta[-1][1]
    print(f"closest approach at step {args.steps[-1]}: absolute {absolute[-1][2]:.3f} m, delta {delta[-1][2]:.3f} m")
    print(f"held-out success delta / absolute at step {args.steps[-1]}: {d:.2f} / {a:.2f} = "
          f"{d / a:.2f}" if a > 0 else f"held-out success delta / absolute at step {args.steps[-1]}: {d:.2f} / 0 "
          f"(absolute never succeeded)")


if __name__ == "__main__":
    main()
