"""Does the fleet's own data make the policy better? An ablation on a finished `fleet demo` run's store.

From the demo's first version (``<demo>/learner/base``, the warm start on the scripted demonstrations) the arms
train the same number of steps with the same seed, batch and rate (fresh Adam moments for both):

- ``demos``: the demonstrations only (what more training without a fleet would give);
- ``fleet``: the fleet's episodes under the learner's default data rules (the supervisor's windows weighted up,
  autonomous successes) with the demonstrations rehearsed in every batch;
- ``autonomous`` (``--arms``): the same without the supervisor's windows (the policy's own successes);
- ``balanced`` (``--arms``): autonomous, each embodiment an equal share of every pool (not in proportion to
  its successes): the demo learner's mixture;
- ``dagger`` (``--arms``): balanced, and the supervisor's takeover windows that stay in the policy's action
  range (``takeover_support_tol``) at the default weight.

Each arm's policy, and v1 itself, run the same held-out scene seeds (the demo's final evaluation's, never used
for demonstrations or fleet episodes) with no supervisor. Prints success per embodiment, and last the fleet /
demos-only ratio: above 1 means the fleet's data, not more steps, made the policy better.

    .venv/bin/python -m bench.fleet_data ~/.local/share/molmofleet/demo/<time> [--steps 300] [--seeds 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from actors.embodiments import schemas
from actors.evaluation import evaluate_fleet
from actors.policy_client import InProcessPolicyClient
from fleet.cli_learner import delta_masks, embodiment_tables
from fleet.config import FleetConfig, LearnerConfig
from fleet.demo import DEMO_ROBOTS, HELD_OUT_SEED, demo_config
from fleet.redis_server import redis_for
from fleet.replay import ReplayStore
from learner.bootstrap import open_policy
from learner.continual import Learner
from learner.publish import DirectoryWeightSink


@contextmanager
def demo_store_copy(root: Path) -> Iterator[tuple[FleetConfig, ReplayStore, Path]]:
    """A finished demo run's config and a store on a copy of its Redis data (AOF and password, not its run
    file), with a scratch directory beside it: a bench leaves the run as it was."""
    cfg = demo_config(FleetConfig(data_dir=str(root)), root)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(cfg.path("redis"), Path(tmp) / "redis", ignore=shutil.ignore_patterns("server.json"))
        with redis_for(cfg.redis, Path(tmp) / "redis", prefix=cfg.replay.prefix) as (client, _):
            store = ReplayStore(client, cfg.replay, schemas=schemas())
            try:
                yield cfg, store, Path(tmp)
            finally:
                store.close()


TAKEOVER_SUPPORT_TOL = 0.05  # rad (gripper 0..1): the dagger arm's takeover windows further outside the policy's
# action range are not trained on (the scripted supervisor's joint-space returns home; on a demo's store ~30 %
# of takeover starts stay in range, and nearly every takeover episode keeps some)


def arm_config(cfg: LearnerConfig, arm: str, args: argparse.Namespace) -> LearnerConfig:
    mixture = {"rehearsal": 1.0} if arm == "demos" else dict(cfg.mixture)
    # ``cfg`` is the demo learner's (demo_config): fleet and dagger put back the learner's default weight on the
    # supervisor's windows, fleet and autonomous the default embodiment shares (in proportion to the data)
    default = LearnerConfig()
    intervention_weight = cfg.intervention_weight if arm in ("autonomous", "balanced") else default.intervention_weight
    embodiment_weights = cfg.embodiment_weights if arm in ("balanced", "dagger") else default.embodiment_weights
    return cfg.model_copy(update={
        "intervention_weight": intervention_weight, "embodiment_weights": embodiment_weights,
        "takeover_support_tol": TAKEOVER_SUPPORT_TOL if arm == "dagger" else None,
        "finetune": "full", "batch_size": args.batch, "lr_llm": args.lr, "lr_vision": args.lr,
        "lr_expert": args.lr, "warmup_steps": 10, "total_steps": 10 * args.steps, "publish_every_steps": 10**9,
        "log_every_steps": 10**9, "mixture": mixture, "consumer_group": f"bench-{arm}",
        "fresh_window_s": 1e9,  # the whole (finished) fleet phase is fresh data, as it was while the demo ran
        "holdout_fraction": 0.0, "sim_eval_episodes": 0,
    })


def heldout(policy: torch.nn.Module, pairs: list[tuple[str, str]], args: argparse.Namespace,
            image_size: int) -> dict[str, float]:
    client = InProcessPolicyClient(policy.eval(), seed=args.eval_seed)  # common random numbers across arms
    return evaluate_fleet(client, pairs, range(HELD_OUT_SEED, HELD_OUT_SEED + args.seeds), image_size)


def run_arm(store: ReplayStore, cfg: FleetConfig, arm: str, ck: Path, root: Path, pairs: list[tuple[str, str]],
            args: argparse.Namespace) -> dict[str, float]:
    """Train one arm from v1 (``v1``: no training) and return its held-out success."""
    norm_tags, horizons, _ = embodiment_tables()
    shutil.copytree(root / "learner" / "base", ck / "base")  # every arm starts from v1, fresh Adam moments
    lcfg = arm_config(cfg.learner, arm, args)
    policy = open_policy(store, lcfg, ck, horizons=horizons, norm_tags=norm_tags, delta_masks=delta_masks())
    t0 = time.perf_counter()
    if arm != "v1":
        learner = Learner(store, policy, lcfg, DirectoryWeightSink(ck / "versions"), checkpoint_dir=ck,
                          norm_tags=norm_tags)
        try:
            learner.run(max_steps=args.steps)
        finally:
            learner.close()
    train_s = time.perf_counter() - t0
    rates = heldout(policy, pairs, args, cfg.actors.image_size)
    print(f"{arm:>6}  " + "  ".join(f"{k} {v:.2f}" for k, v in rates.items())
          + (f"  ({args.steps} steps, {train_s:.0f} s)" if arm != "v1" else ""), flush=True)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo_dir", type=Path, help="a finished `fleet demo` run's directory")
    ap.add_argument("--steps", type=int, default=300, help="training steps per arm, from v1")
    ap.add_argument("--seeds", type=int, default=16, help="held-out episodes per embodiment")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval-seed", type=int, default=0, help="flow-noise seed of the evaluation client")
    ap.add_argument("--arms", default="demos,fleet", help="comma-separated: demos, fleet, autonomous, balanced, dagger")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = args.demo_dir.expanduser()
    if not (root / "learner" / "base").is_dir():
        sys.exit(f"{root} is not a finished demo run: no learner/base checkpoint in it")
    pairs = [(s.embodiment, s.task) for s in DEMO_ROBOTS]
    results: dict[str, dict[str, float]] = {}
    with demo_store_copy(root) as (cfg, store, tmp):
        os.environ.setdefault(cfg.weights.secret_env, "bench-fleet-data")
        sources = Counter(m.source for m in store.metas(store.episode_ids()) if m is not None)
        print(f"{root}: episodes by source {dict(sources)}; held-out seeds {HELD_OUT_SEED}..+{args.seeds} "
              "per embodiment")
        for arm in ["v1", *args.arms.split(",")]:
            results[arm] = run_arm(store, cfg, arm, tmp / arm, root, pairs, args)
    if "fleet" in results and "demos" in results:
        f, d = results["fleet"]["fleet"], results["demos"]["fleet"]
        print(f"held-out success, fleet data / demonstrations only, {args.steps} steps from v1: "
              + (f"{f:.3f} / {d:.3f} = {f / d:.2f}" if d > 0 else f"{f:.3f} / 0 (demonstrations only never succeeded)"))


if __name__ == "__main__":
    main()
