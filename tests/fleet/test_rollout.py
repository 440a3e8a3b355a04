"""Rollout gate: promotes a canary that is not worse, rolls back one that is, records every decision."""

from __future__ import annotations

import time

import pytest

from fleet.config import RolloutConfig
from fleet.replay import ReplayStore
from fleet.rollout import RolloutController, prob_not_worse
from fleet.status import StatusBoard, VersionEvent
from tests.factories import synthetic_episode

ROBOTS = {"franka": ["franka-01", "franka-02", "franka-03"], "so101": ["so101-01", "so101-02"]}


def _feed(store: ReplayStore, version: int, emb: str, robot: str, successes: int, failures: int, seed: int,
          rescued: int = 0) -> None:
    """successes + failures episodes; the first ``rescued`` successes needed a supervisor step."""
    now = time.time()
    for i in range(successes + failures):
        store.append(synthetic_episode(emb, steps=4, size=4, seed=seed + i, success=i < successes,
                                       version=version, robot=robot, end_time=now,
                                       interventions=2 if i < rescued else 0))


def test_beta_binomial_statistic() -> None:
    assert prob_not_worse(18, 20, 10, 20, 0.0) > 0.95
    assert prob_not_worse(2, 20, 15, 20, 0.05) < 0.01


@pytest.mark.parametrize("test", ["beta_binomial", "one_sided_z"])
def test_better_canary_is_promoted(store: ReplayStore, redis_server, test: str) -> None:
    board = StatusBoard(redis_server.client())
    aliases: list[tuple[int, str]] = []
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=10, test=test),
                            on_alias=lambda v, a: aliases.append((v, a)))
    st = ctl.start_canary(2, ROBOTS)
    assert st.canary_robots == ["franka-01", "so101-01"]
    assert st.target_version("franka-01") == 2 and st.target_version("franka-02") == 0
    _feed(store, 2, "franka", "franka-01", 10, 0, 0)
    _feed(store, 0, "franka", "franka-02", 4, 8, 100)
    assert [d.decision for d in ctl.evaluate()] == ["promote"]  # so101 has not decided yet
    assert ctl.state.canary == 2
    _feed(store, 2, "so101", "so101-01", 10, 1, 200)
    _feed(store, 0, "so101", "so101-02", 5, 6, 300)
    final = ctl.evaluate()[-1]
    assert final.decision == "promote" and ctl.state.champion == 2 and ctl.state.canary is None
    assert (2, "canary") in aliases and (2, "champion") in aliases
    kinds = [e.kind for e in board.version_events()]
    assert kinds == ["canary", "promoted"]


def test_worse_canary_is_rolled_back(store: ReplayStore, redis_server) -> None:
    board = StatusBoard(redis_server.client())
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=8))
    ctl.start_canary(3, {"franka": ROBOTS["franka"]})
    _feed(store, 3, "franka", "franka-01", 1, 9, 0)
    _feed(store, 0, "franka", "franka-02", 9, 1, 100)
    decisions = ctl.evaluate()
    assert decisions[0].decision == "rollback" and decisions[0].statistic < 0.2
    assert ctl.state.champion == 0 and ctl.state.canary is None
    assert board.version_events()[-1].kind == "rolled_back"
    assert board.rollout_decisions()[0].canary_episodes == 10


def test_rollback_threshold_shares_the_error_budget_among_comparisons(store: ReplayStore, redis_server) -> None:
    """0/5 against the champion's 2/5 on one of three embodiments is weak evidence (P(not worse) ~0.15): at 0.2 a
    canary facing six such comparisons as good as the champion would be rolled back most of the time. With the
    budget shared (0.2 / 6) it waits for more episodes; a clear loss still rolls back at once."""
    board = StatusBoard(redis_server.client())
    three = {"franka": ["franka-01"], "so101": ["so101-01"], "yam_bimanual": ["yam-01"]}
    _feed(store, 0, "franka", "franka-01", 2, 3, 0)  # the champion's record
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=5))
    ctl.start_canary(2, three)
    _feed(store, 2, "franka", "franka-01", 0, 5, 100)
    d = ctl.evaluate()[0]
    assert d.statistic < 0.2 and d.decision == "wait" and ctl.state.canary == 2, d
    _feed(store, 0, "so101", "so101-01", 9, 1, 200)
    _feed(store, 2, "so101", "so101-01", 0, 6, 300)
    assert [x.decision for x in ctl.evaluate()][-1] == "rollback" and ctl.state.canary is None
    alone = RolloutController(store, board, RolloutConfig(min_canary_episodes=5, judge=["autonomous"]))
    # one comparison (one embodiment, one outcome): the same weak evidence is enough, as before
    assert alone._decide({"canary": [0, 5], "champion": [2, 5]}) == ("rollback", d.statistic)


def test_sole_robot_compares_with_champion_record(store: ReplayStore, redis_server) -> None:
    board = StatusBoard(redis_server.client())
    _feed(store, 0, "so101", "so101-01", 2, 10, 0)  # champion's earlier record on this embodiment
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=8))
    ctl.start_canary(1, {"so101": ["so101-01"]})
    _feed(store, 1, "so101", "so101-01", 7, 1, 100)
    d = ctl.evaluate()[0]
    assert d.champion_episodes == 12 and d.decision == "promote"


def test_gate_judges_autonomous_success_not_rescues(store: ReplayStore, redis_server) -> None:
    """A canary whose successes are all supervisor rescues is worse than a champion that succeeds by itself,
    though both succeed as often; judged on any success, the same counts promote it."""
    board = StatusBoard(redis_server.client())
    _feed(store, 4, "franka", "franka-01", 10, 0, 0, rescued=9)
    _feed(store, 0, "franka", "franka-02", 10, 0, 100)
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=8))
    ctl.start_canary(4, {"franka": ROBOTS["franka"]})
    d = ctl.evaluate()[0]
    assert (d.decision, d.canary_successes, d.champion_successes) == ("rollback", 1, 10)
    assert store.outcome_totals()[0]["autonomous"] + store.outcome_totals()[1]["autonomous"] == 11
    board.set_rollout_state(type(ctl.state)(champion=0))
    lenient = RolloutController(store, board, RolloutConfig(min_canary_episodes=8, judge=["success"]))
    lenient.start_canary(4, {"franka": ROBOTS["franka"]})
    d = lenient.evaluate()[0]
    assert d.decision != "rollback" and d.canary_successes == 10 and d.statistic > 0.5


def test_gate_rolls_back_on_rescues_when_autonomous_success_is_rare(store: ReplayStore, redis_server) -> None:
    """Neither version succeeds by itself (0 vs 0 looks "not worse"), but the canary needs the supervisor far
    more often to finish: judged on both outcomes, it is rolled back."""
    board = StatusBoard(redis_server.client())
    _feed(store, 0, "yam_bimanual", "yam-01", 6, 4, 0, rescued=6)  # champion's record: 6/10 with rescues
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=8))
    ctl.start_canary(5, {"yam_bimanual": ["yam-01"]})
    _feed(store, 5, "yam_bimanual", "yam-01", 0, 8, 100)
    d = ctl.evaluate()[0]
    assert d.decision == "rollback" and d.test == "beta_binomial:success", d
    assert ctl.state.champion == 0 and ctl.state.canary is None
    only_autonomous = RolloutController(store, board, RolloutConfig(min_canary_episodes=8, judge=["autonomous"]))
    only_autonomous.start_canary(5, {"yam_bimanual": ["yam-01"]})
    assert only_autonomous.evaluate()[0].decision != "rollback"  # what the autonomous outcome alone would do


def test_canary_refused_by_every_canary_robot_is_rolled_back_at_once(store: ReplayStore, redis_server) -> None:
    board = StatusBoard(redis_server.client())
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=8))
    st = ctl.start_canary(7, ROBOTS)
    board.version_event(VersionEvent(version=7, kind="rejected", embodiment="franka", robot=st.canary_robots[0],
                                     detail="sha256 mismatch"))
    assert ctl.evaluate() == [] and ctl.state.canary == 7  # one canary robot of two refused it: keep waiting
    board.version_event(VersionEvent(version=6, kind="rejected", robot=st.canary_robots[1]))  # another version
    assert ctl.state.canary == 7 and ctl.evaluate() == []
    board.version_event(VersionEvent(version=7, kind="rejected", embodiment="so101", robot=st.canary_robots[1]))
    (final,) = ctl.evaluate()
    assert final.decision == "rollback" and ctl.state.canary is None and ctl.state.champion == 0
    assert board.version_events()[-1].kind == "rolled_back" and "refused" in board.version_events()[-1].detail


def test_manual_promote_and_rollback(store: ReplayStore, redis_server) -> None:
    ctl = RolloutController(store, StatusBoard(redis_server.client()))
    ctl.start_canary(5, ROBOTS)
    assert ctl.promote().champion == 5
    ctl.start_canary(6, ROBOTS)
    st = ctl.rollback()
    assert st.champion == 5 and st.canary is None
    assert ctl.rollback(to_version=4).champion == 4


def test_screen_holds_back_versions_below_the_champion_in_simulation(store: ReplayStore, redis_server,
                                                                     tmp_path) -> None:
    """Through the orchestrator's tick: a version whose sim/fleet figure is below the champion's never reaches the
    canary; one at least as good, or one without the figure, does."""
    from fleet.config import ActorSpec, FleetConfig
    from fleet.orchestrator import Orchestrator
    from fleet.weights import WeightStore

    client = redis_server.client()
    board = StatusBoard(client)
    weights = WeightStore(str(tmp_path / "w"), "s3cret", client)
    cfg = FleetConfig(data_dir=str(tmp_path))
    cfg.actors.robots = [ActorSpec(robot_id=r, embodiment=e, task="reach") for e, ids in ROBOTS.items() for r in ids]
    ctl = RolloutController(store, board, cfg.rollout)
    orch = Orchestrator(cfg, policy="unused")  # not entered: no Ray, no processes; tick only drives the gate
    v1 = weights.publish(b"one", figures={"sim/fleet": 0.25}).version
    ctl.promote(v1)
    orch.last_canaried = v1

    worse = weights.publish(b"two", figures={"sim/fleet": 0.125, "sim/franka": 0.0}).version
    orch.tick(ctl, weights)
    assert ctl.state.canary is None and ctl.state.champion == v1
    held = [e for e in board.version_events(10) if e.kind == "held_back"]
    assert [e.version for e in held] == [worse] and "0.12 < champion v1's 0.25" in held[0].detail
    assert held[0].figures == {"sim/fleet": 0.125, "sim/franka": 0.0}
    orch.tick(ctl, weights)  # screened once: not again on every tick
    assert sum(e.kind == "held_back" for e in board.version_events(10)) == 1

    equal = weights.publish(b"three", figures={"sim/fleet": 0.25}).version
    orch.tick(ctl, weights)
    assert ctl.state.canary == equal

    cfg.rollout.sim_screen = False  # off: the figure is ignored
    off = RolloutController(store, board, cfg.rollout)
    assert off.screen(99, {"sim/fleet": 0.0}, {"sim/fleet": 1.0})
    assert ctl.screen(99, {}, {"sim/fleet": 1.0})  # no figure: nothing to screen by


def test_the_screen_holds_back_only_what_its_counts_show_worse(store: ReplayStore, redis_server) -> None:
    """On counts, the screen is the gate's rollback rule: 3/24 against the champion's 6/24 is noise (P(not worse)
    ~0.28 with the 0.05 margin) and goes to the canary; 1/24 is worse (~0.07) and is held back."""
    board = StatusBoard(redis_server.client())
    ctl = RolloutController(store, board, RolloutConfig())
    ctl.promote(1)
    champion = {"sim/fleet": 6 / 24, "sim/episodes": 24.0}
    assert ctl.screen(2, {"sim/fleet": 3 / 24, "sim/episodes": 24.0}, champion)
    assert not ctl.screen(3, {"sim/fleet": 1 / 24, "sim/episodes": 24.0}, champion)
    held = [e for e in board.version_events(10) if e.kind == "held_back"]
    assert [e.version for e in held] == [3] and "P(not worse) 0.07" in held[0].detail
    # the same rates without their counts compare as rates: 3/24 is below 6/24
    assert not ctl.screen(4, {"sim/fleet": 3 / 24}, {"sim/fleet": 6 / 24})


def test_canary_undecided_after_the_timeout_is_rolled_back(store: ReplayStore, redis_server) -> None:
    board = StatusBoard(redis_server.client())
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=10, canary_timeout_s=0.5))
    ctl.promote(1)
    ctl.start_canary(2, ROBOTS)
    _feed(store, 2, "franka", "franka-01", 1, 1, seed=0)  # too few episodes to decide
    assert ctl.evaluate() == [] and ctl.state.canary == 2
    time.sleep(0.6)
    (done,) = ctl.evaluate()
    assert (done.decision, ctl.state.canary, ctl.state.champion) == ("rollback", None, 1)
    (event,) = [e for e in board.version_events(10) if e.kind == "rolled_back"]
    assert event.version == 2 and "*:timeout" in event.detail


def test_undecided_embodiments_are_judged_with_the_fleet(store: ReplayStore, redis_server) -> None:
    """An embodiment undecided after 4 x min_canary_episodes does not roll the canary back on its own coin flip:
    the fleet's mean over embodiments decides (a demo's v6: promoted on two embodiments, 3/20 against 4/18 on the
    third). A canary a little worse everywhere is still rolled back by that judgement."""
    board = StatusBoard(redis_server.client())
    three = {"franka": ["franka-01"], "so101": ["so101-01"], "yam_bimanual": ["yam-01"]}
    for i, (emb, robot, wins, losses) in enumerate([("franka", "franka-01", 4, 14), ("so101", "so101-01", 1, 16),
                                                    ("yam_bimanual", "yam-01", 4, 15)]):
        _feed(store, 1, emb, robot, wins, losses, 100 * i)  # the champion's records
    ctl = RolloutController(store, board, RolloutConfig(min_canary_episodes=5))
    ctl.promote(1)
    ctl.start_canary(2, three)
    _feed(store, 2, "franka", "franka-01", 3, 17, 1000)
    _feed(store, 2, "so101", "so101-01", 2, 3, 1100)
    _feed(store, 2, "yam_bimanual", "yam-01", 4, 1, 1200)
    decisions = ctl.evaluate()
    by_emb = {d.embodiment: d for d in decisions}
    assert by_emb["franka"].decision == "wait" and by_emb["franka"].statistic < 0.5, by_emb["franka"]
    assert by_emb["so101"].decision == by_emb["yam_bimanual"].decision == "promote", decisions
    assert by_emb["fleet"].decision == "promote" and by_emb["fleet"].canary_episodes == 30, by_emb["fleet"]
    assert ctl.state.champion == 2
    (event,) = [e for e in board.version_events(20) if e.kind == "promoted" and e.version == 2]
    assert "franka:undecided" in event.detail and "fleet:promote" in event.detail

    ctl.start_canary(3, {e: r for e, r in three.items() if e != "yam_bimanual"})
    _feed(store, 3, "franka", "franka-01", 1, 19, 2000)  # v2 on franka: 3/20; v3 a little worse on both
    _feed(store, 3, "so101", "so101-01", 2, 18, 2100)  # v2 on so101: 2/5
    decisions = ctl.evaluate()
    assert [(d.embodiment, d.decision) for d in decisions if d.embodiment != "*"] == [
        ("franka", "wait"), ("so101", "wait"), ("fleet", "rollback")], decisions
    # neither embodiment alone is clearly worse (above the shared threshold 0.2 / 4); their mean is below 0.5
    assert all(d.statistic > 0.2 / 4 for d in decisions[:2]) and decisions[-2].statistic < 0.5, decisions
    assert ctl.state.champion == 2 and ctl.state.canary is None
