"""The whole loop, end to end on CPU: `fleet demo` at its own size (what the README's newcomer runs).

Scripted demonstrations -> warm start -> v1 champion -> a Franka, a YAM bimanual and an SO-101 actor on Ray with
the learner -> versions hot-swapped into the running actors, a corrupted version (every actor refuses it), a
degraded one (the rollout gate rolls it back, or it times out undecided and is rolled back), learner versions
screened by their simulated held-out success -> held-out evaluation of the first version, the last champion and
the learner's last version on the same held-out scenes. Real redis-server, Ray, DeepSpeed, MuJoCo, MLflow and
ZeroMQ; about twelve minutes on two cores.

Why the demo's size and not smaller: the learner's rise above v1 needs its ~700 fleet-phase steps. Its last
version was +1 episode above v1 (of 48) at three fleet minutes, +2 at four (warm start 100), 0 of 72 at six.
Why no strict rise: at eight, over ten runs (`bench/rise.py`, this test in CI, `make demo`) the learner's newest
version rose above v1 in 6, was level in 2, fell in 2; the last champion rose in 5, was level in 4, fell in 1
(pooled 115 and 111 held-out successes to v1's 89 of 720; sign test p 0.14 and 0.11). Two runs at sixteen
minutes did no better on the whole (v1 14 and 12 of 72; champion 15 and 17; learner 10 and 17). A strict
check would fail CI in about one run in five; the better of the two at least v1's count failed in none of the
ten.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from fleet.config import FleetConfig
from fleet.demo import run_demo
from fleet.rollout import prob_not_worse

MINUTES = 8.0  # `fleet demo`'s default: the learner's rise needs its ~700 fleet-phase steps (docstring)


@pytest.fixture
def scoped_env() -> Iterator[None]:
    """The demo exports the fleet secret and the Redis password for its Ray workers: none outlives the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.timeout(1800)
def test_demo_swaps_versions_in_refuses_a_corrupted_one_rolls_back_a_degraded_one_and_does_not_fall(
    tmp_path: Path, scoped_env: None
) -> None:
    cfg = FleetConfig(data_dir=str(tmp_path))
    os.environ[cfg.weights.secret_env] = secrets.token_hex(32)
    view = io.StringIO()
    # `fleet demo`'s defaults: 10 demonstrations a robot, 200 warm steps, 24 held-out seeds per embodiment
    summary = run_demo(cfg, MINUTES, Console(file=view, width=160), inject=True)
    # what `fleet demo --json` writes, kept with pytest's temporary directories for a look after a failure
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    brief = json.dumps({k: v for k, v in summary.items() if k != "success_by_window"}, default=str)
    robots = {"franka-01", "yam-01", "so101-01"}

    assert summary["episodes"]["sent"] > 0 and summary["episodes"]["lost"] == 0, brief
    # at least two versions published and hot-swapped into every running actor (v1 over the seed checkpoint,
    # then the canaries and rollbacks)
    assert len(summary["versions_published"]) >= 2, brief
    assert set(summary["swaps"]) == robots and min(summary["swaps"].values()) >= 2, brief
    # the corrupted version: refused by every actor
    corrupted, degraded = summary["injected"]["corrupted"], summary["injected"]["degraded"]
    assert set(summary["rejected_by_actors"]) == robots, brief
    assert all(corrupted in refused for refused in summary["rejected_by_actors"].values()), brief
    assert all(degraded not in refused for refused in summary["rejected_by_actors"].values()), brief
    # ... and dropped by the gate as soon as every canary robot had refused it, without waiting for episodes
    assert corrupted in summary["rolled_back"], brief
    # the degraded version loads (it is signed and intact), runs on the canary cohort, and never becomes champion:
    # the gate rolls it back, or it is rolled back undecided after canary_timeout_s
    assert degraded in summary["versions_published"] and degraded not in summary["promoted"], brief
    assert degraded in summary["rolled_back"], brief
    print("gate decisions on the degraded version:",
          [d for d in summary["decisions"] if d["version"] == degraded], "rolled back:", summary["rolled_back"])
    print("held-out success:", summary["heldout"], "by version:", summary["success_by_version"])
    print("simulated (the screen):", summary["sim_by_version"], "held back:", summary["held_back"])
    # every version the learner published carries its simulated success, v1 (the warm start) too; a version held
    # back by the screen never ran on a robot
    sims = summary["sim_by_version"]
    assert "v1" in sims and set(sims["v1"]) == {"franka", "yam_bimanual", "so101", "fleet", "episodes"}, brief
    assert not {f"v{v}" for v in summary["versions_published"] if v not in summary["injected"].values()} - set(sims)
    assert not set(summary["held_back"]) & (set(summary["promoted"]) | set(summary["versions_published"])), brief
    # the first champion learned something (held-out scenes, no supervisor). What the fleet made of its own data
    # ran the same held-out scenes and does at least as well as v1: the champion it ends on or the learner's
    # newest version (promoted or not; the gate judges on a few dozen live episodes), counted in episodes (the
    # summary's `successes`, which agree with the per-embodiment rates). Not a strict rise: the better
    # of the two rose in 8 of 10 runs at this size and was level in the rest (module docstring), so a strict
    # check fails CI by chance; the rise is the summary's `improved` / `learner_improved`, tested over runs by
    # bench/rise.py.
    # The last champion is not worse than the first beyond the noise of these seeds: P(p_last >= p_first) above
    # 5 %, the gate's Beta posteriors
    heldout = summary["heldout"]
    episodes, wins = heldout["episodes"], heldout["successes"]
    assert episodes == 3 * heldout["seeds"], brief
    assert all(wins[k] == round(heldout[k]["fleet"] * episodes) for k in wins), brief
    assert heldout["learner_version"] > heldout["first_version"], brief
    assert heldout["learner_version"] not in summary["injected"].values(), brief
    assert set(heldout["learner"]) == {"franka", "yam_bimanual", "so101", "fleet"}, brief
    assert max(heldout["first"][e] for e in ("franka", "yam_bimanual", "so101")) > 0, brief
    assert max(wins["last"], wins["learner"]) >= wins["first"], (wins, brief)
    assert summary["improved"] == (wins["last"] > wins["first"]), brief
    assert prob_not_worse(wins["last"], episodes, wins["first"], episodes, margin=0.0) > 0.05, (wins, brief)
