"""Do the fleet's action targets fit the policy's normalisation? Measured on a finished `fleet demo` run's store.

For every embodiment: the share of normalised action-chunk values at the clip (|x| >= 0.999, the q01/q99 of the
warm start's statistics, the ones every version keeps), per action dimension, for chunks that start on a
demonstration step, on a fleet step the policy drove and on a fleet step the scripted supervisor drove. A
dimension far more often at the clip in fleet chunks than in demonstrations is one the learner would be taught to
saturate. Also: how many takeovers move the arm towards its home posture in their first second (the expert's
joint-space recovery, a motion no demonstration contains).

    .venv/bin/python -m bench.fleet_targets ~/.local/share/molmofleet/demo/<time> [--stride 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from actors.embodiments import get_embodiment
from actors.sim.arms import ARM_MODEL_OF, ARM_MODELS
from bench.fleet_data import demo_store_copy
from fleet.demo import DEMO_ROBOTS
from fleet.episode import MAX_STEPS
from fleet.replay import EpisodeRef, ReplayStore
from policy.normalization import NormStats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo_dir", type=Path, help="a finished `fleet demo` run's directory")
    ap.add_argument("--stride", type=int, default=3, help="every stride-th step starts a chunk")
    args = ap.parse_args()
    root = args.demo_dir.expanduser()
    stats = NormStats.load(root / "learner" / "base" / "norm_stats.json")
    with demo_store_copy(root) as (_, store, _):
        for embodiment in dict.fromkeys(s.embodiment for s in DEMO_ROBOTS):
            report(store, stats, embodiment, args.stride)


def report(store: ReplayStore, stats: NormStats, embodiment: str, stride: int) -> None:
    emb = get_embodiment(embodiment)
    horizon = stats[emb.norm_tag].action_horizon
    home = np.asarray(ARM_MODELS[ARM_MODEL_OF[embodiment]].home)  # (J,) the first arm's: the expert's recovery
    clipped: dict[str, list[np.ndarray]] = {}
    toward_home = takeovers = 0
    ids = store.episode_ids(f"emb:{embodiment}")
    for i in range(0, len(ids), 32):
        for w in store.read_windows([EpisodeRef(e, 0) for e in ids[i : i + 32]], MAX_STEPS, image_steps=0):
            sup = np.asarray(w.intervention, dtype=bool)
            for t in range(0, len(w.action), stride):
                chunk = stats.normalize_action(emb.norm_tag, w.action[t : t + horizon], w.state[t])  # (H, A)
                kind = "demonstration" if w.meta.source == "demo" else "supervisor" if sup[t] else "policy"
                clipped.setdefault(kind, []).append((np.abs(chunk) >= 0.999).mean(0))
            for t in np.flatnonzero(sup & ~np.concatenate([[False], sup[:-1]])):  # takeover starts
                later = min(t + round(emb.control_hz), len(sup) - 1)  # one second later
                j = len(home)
                before, after = np.abs(w.state[t, :j] - home).max(), np.abs(w.state[later, :j] - home).max()
                takeovers += 1
                toward_home += bool(after < before - 0.1)
    print(f"{embodiment}: chunk values at the clip, per action dimension")
    for kind, rows in clipped.items():
        print(f"  {kind:>13} ({len(rows):5d} chunks) " + " ".join(f"{x:.2f}" for x in np.mean(rows, 0)))
    print(f"  takeovers moving > 0.1 rad towards home in their first second: {toward_home} of {takeovers}")


if __name__ == "__main__":
    main()
