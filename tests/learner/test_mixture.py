"""The mixture sampler on a real store: configured weights are realised (statistically), outcomes and
interventions weigh as documented, held-out episodes never train, and draws become collatable samples."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fleet.replay import ReplayStore
from learner.mixture import OUTCOME_SUFFIX, MixtureSampler, is_held_out
from tests.factories import synthetic_episode
from tests.learner.conftest import learner_config, micro_policy, synthetic_stats


def _add(store: ReplayStore, n: int, seed0: int, **kw: object) -> list[str]:
    ids = []
    for i in range(n):
        ep = synthetic_episode(steps=20, seed=seed0 + i, **kw)
        store.append(ep)
        ids.append(ep.meta.episode_id)
    return ids


def _within(observed: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """Binomial count within `sigmas` standard deviations of n * p (false-alarm rate ~1e-5 per check)."""
    return abs(observed - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_pool_and_embodiment_weights_are_realised(store: ReplayStore, tmp_path) -> None:
    now = time.time()
    _add(store, 12, 0, embodiment="franka")  # fresh
    _add(store, 6, 100, embodiment="so101")  # fresh
    _add(store, 10, 200, embodiment="franka", end_time=now - 3600)  # history
    _add(store, 8, 300, embodiment="so101", source="rehearsal")
    cfg = learner_config(
        tmp_path,
        mixture={"fresh": 0.5, "history": 0.2, "rehearsal": 0.3},
        embodiment_weights={"franka": 3.0, "so101": 1.0},
        holdout_fraction=0.0,
    )
    sampler = MixtureSampler(store, cfg, synthetic_stats(), seed=1)
    assert sampler.refresh() == 36
    assert sampler.pool_sizes() == {"fresh": 18, "history": 10, "rehearsal": 8}
    n = 4000
    draws = sampler.sample_draws(n)
    pools = [d.pool for d in draws]
    for pool, p in (("fresh", 0.5), ("history", 0.2), ("rehearsal", 0.3)):
        assert _within(pools.count(pool), n, p), (pool, pools.count(pool))
    fresh = [d for d in draws if d.pool == "fresh"]
    franka = sum(d.candidate.meta.embodiment == "franka" for d in fresh)
    assert _within(franka, len(fresh), 0.75), franka / len(fresh)  # 3:1 within the pool, whatever the counts
    assert all(d.candidate.meta.embodiment == "so101" for d in draws if d.pool == "rehearsal")
    assert all(d.candidate.meta.end_time < now - cfg.fresh_window_s for d in draws if d.pool == "history")
    # starts are uniform over the steps (windows past the end are padded by the collate)
    starts = np.bincount([d.start for d in draws], minlength=20)
    assert starts.min() > 0 and len(starts) == 20


def test_empty_pool_drops_out_and_is_reported(store: ReplayStore, tmp_path) -> None:
    _add(store, 5, 0)
    sampler = MixtureSampler(store, learner_config(tmp_path, holdout_fraction=0.0), synthetic_stats(), seed=0)
    sampler.refresh()
    batch = sampler.sample(8)
    assert {d.pool for d in batch.draws} == {"fresh"}
    assert sampler.realised()["pool/fresh"] == 1.0


def test_outcomes_and_interventions_weigh_as_configured(store: ReplayStore, tmp_path) -> None:
    ok = _add(store, 4, 0, success=True)
    failed_plain = _add(store, 4, 10, success=False)
    failed_corrected = _add(store, 4, 20, success=False, interventions=5)  # last 5 of 20 steps
    cfg = learner_config(
        tmp_path, success_weight=2.0, intervention_weight=3.0, holdout_fraction=0.0, mixture={"fresh": 1.0}
    )
    sampler = MixtureSampler(store, cfg, synthetic_stats(), seed=3)
    sampler.refresh()
    n = 6000
    draws = sampler.sample_draws(n)
    by = {i: 0 for i in ok + failed_plain + failed_corrected}
    for d in draws:
        by[d.candidate.meta.episode_id] += 1
    # failures="drop": a failure without interventions never trains; a corrected one only from its
    # intervention steps, weighted intervention_weight * 5/20 = 0.75 against a success's 2.0
    assert sum(by[i] for i in failed_plain) == 0
    p_corrected = 4 * 0.75 / (4 * 0.75 + 4 * 2.0)
    assert _within(sum(by[i] for i in failed_corrected), n, p_corrected)
    corrected_starts = [d.start for d in draws if d.candidate.meta.episode_id in failed_corrected]
    assert min(corrected_starts) >= 15  # the flagged steps only

    keep = MixtureSampler(store, cfg.model_copy(update={"failures": "keep"}), synthetic_stats(), seed=3)
    keep.refresh()
    kept = keep.sample_draws(3000)
    assert any(d.candidate.meta.episode_id in failed_plain for d in kept)
    # within a corrected failure, intervention starts weigh 3x: 5 of 20 steps -> 15 / (15 + 15) = 1/2
    starts = [d.start for d in kept if d.candidate.meta.episode_id in failed_corrected]
    assert _within(sum(s >= 15 for s in starts), len(starts), 0.5)
    sample = keep.to_sample(
        *next(
            (w, d)
            for w, d in zip(
                store.read_windows([d.ref for d in kept[:50]], 15, image_steps=1), kept[:50], strict=False
            )
            if not d.candidate.meta.success
        )
    )
    assert sample.instruction.endswith(OUTCOME_SUFFIX[False])


def test_rescued_successes_train_only_on_their_interventions(store: ReplayStore, tmp_path) -> None:
    alone = _add(store, 4, 0, success=True)
    rescued = _add(store, 4, 10, success=True, interventions=5)  # last 5 of 20 steps by the supervisor
    cfg = learner_config(tmp_path, holdout_fraction=0.0, mixture={"fresh": 1.0})
    sampler = MixtureSampler(store, cfg, synthetic_stats(), seed=5)
    sampler.refresh()
    draws = sampler.sample_draws(4000)
    starts = [d.start for d in draws if d.candidate.meta.episode_id in rescued]
    # rescued="interventions" (default): the policy's steps before the takeover are never imitated; the episode
    # weighs as a corrected failure does, intervention_weight * 5/20 = 0.75, against an autonomous success's 2.0
    assert starts and min(starts) >= 15
    assert _within(len(starts), len(draws), 4 * 0.75 / (4 * 0.75 + 4 * 2.0))
    assert {d.candidate.meta.episode_id for d in draws} == set(alone) | set(rescued)

    every = MixtureSampler(store, cfg.model_copy(update={"rescued": "all"}), synthetic_stats(), seed=5)
    every.refresh()
    starts = [d.start for d in every.sample_draws(4000) if d.candidate.meta.episode_id in rescued]
    # every window: 15 policy starts at weight 1 against 5 supervisor starts at 3 -> half the starts before 15
    assert _within(sum(s < 15 for s in starts), len(starts), 0.5)

def test_intervention_weight_zero_trains_on_no_takeover_window(store: ReplayStore, tmp_path) -> None:
    alone = _add(store, 3, 0, success=True)
    mixed = _add(store, 2, 10, success=True, interventions=5)  # rescued: steps 15..19 by the supervisor
    _add(store, 4, 20, success=False, interventions=5)  # corrected failures: only takeover windows to give
    cfg = learner_config(tmp_path, holdout_fraction=0.0, mixture={"fresh": 1.0}, intervention_weight=0.0)
    for rescued in ("interventions", "all"):
        sampler = MixtureSampler(store, cfg.model_copy(update={"rescued": rescued}), synthetic_stats(), seed=1)
        sampler.refresh()
        draws = sampler.sample_draws(2000)
        # judged, never trained on: a takeover window is never drawn, even where an episode has nothing else
        drawn = {d.candidate.meta.episode_id for d in draws}
        assert drawn == (set(alone) if rescued == "interventions" else set(alone) | set(mixed)), rescued
        assert not [d for d in draws if d.candidate.meta.episode_id in mixed and d.start >= 15]
    with pytest.raises(ValueError, match="intervention_weight"):
        learner_config(tmp_path, intervention_weight=-1.0)



def test_a_window_that_starts_on_a_takeover_ends_at_the_hand_back(store: ReplayStore, tmp_path) -> None:
    ep = synthetic_episode(steps=40, seed=7, success=False, interventions=0)
    ep.intervention[10:16] = True  # the supervisor held steps 10..15, then handed back to the policy
    ep.meta.interventions = 6
    store.append(ep)
    cfg = learner_config(tmp_path, holdout_fraction=0.0, mixture={"fresh": 1.0})
    sampler = MixtureSampler(store, cfg, synthetic_stats(), seed=0)
    sampler.refresh()
    batch = sampler.sample(64)
    assert batch.samples and {d.start for d in batch.draws} <= set(range(10, 16))  # a failure: takeover starts only
    for d, sample in zip(batch.draws, batch.samples, strict=True):
        # the factory's actions are the step index (+ dim / 100): the supervisor's steps, and none of the policy's
        assert sample.actions[:, 0].tolist() == list(range(d.start, 16)), d.start


def test_takeover_windows_out_of_the_action_range_are_not_drawn(store: ReplayStore, tmp_path) -> None:
    mixed = synthetic_episode(steps=40, seed=11, success=False, interventions=0)
    mixed.intervention[10:16] = mixed.intervention[25:31] = True
    mixed.action[25:31] += 500.0  # the second takeover leaves the statistics' 0..60 range (a return home, say)
    mixed.meta.interventions = 12
    wild = synthetic_episode(steps=40, seed=12, success=False, interventions=0)
    wild.intervention[5:12] = True
    wild.action[5:12] -= 100.0
    wild.meta.interventions = 7
    for ep in (mixed, wild):
        store.append(ep)
    ids = (mixed.meta.episode_id, wild.meta.episode_id)
    cfg = learner_config(tmp_path, holdout_fraction=0.0, mixture={"fresh": 1.0})
    every = MixtureSampler(store, cfg, synthetic_stats(), seed=2)
    every.refresh()
    assert {d.candidate.meta.episode_id for d in every.sample_draws(300)} == set(ids)  # None: every one
    ranged = MixtureSampler(store, cfg.model_copy(update={"takeover_support_tol": 0.05}), synthetic_stats(), seed=2)
    ranged.refresh()
    draws = ranged.sample_draws(300)
    # the wild failure has no takeover window left: dropped, and redrawn from; the mixed one keeps its first
    assert {d.start for d in draws} <= set(range(10, 16)) and len(draws) == 300
    assert {d.candidate.meta.episode_id for d in draws} == {ids[0]}
    assert ranged.trainable_count() == 1
    # a sampler that knows only the wild failure: nothing it may draw, a clear error (not a window out of range)
    only_wild = MixtureSampler(store, cfg.model_copy(update={"takeover_support_tol": 0.05}), synthetic_stats())
    only_wild.add([ids[1]])
    with pytest.raises(LookupError, match="no trainable episodes left"):
        only_wild.sample_draws(4)


def test_rehearsal_sources_feed_the_rehearsal_pool(store: ReplayStore, tmp_path) -> None:
    _add(store, 6, 0)  # fleet
    demos = _add(store, 3, 50, source="demo")
    cfg = learner_config(tmp_path, holdout_fraction=0.0, fleet_sources=["fleet"], rehearsal_sources=["demo"],
                         mixture={"fresh": 0.75, "rehearsal": 0.25})
    sampler = MixtureSampler(store, cfg, synthetic_stats(), seed=2)
    sampler.refresh()
    assert sampler.pool_sizes() == {"fresh": 6, "history": 0, "rehearsal": 3}
    draws = sampler.sample_draws(2000)
    assert {d.candidate.meta.episode_id for d in draws if d.pool == "rehearsal"} == set(demos)
    assert _within(sum(d.pool == "rehearsal" for d in draws), len(draws), 0.25)
    with pytest.raises(ValueError, match="must not share"):
        learner_config(tmp_path, fleet_sources=["fleet", "demo"], rehearsal_sources=["demo"])


def test_held_out_episodes_never_train_and_form_the_eval_set(store: ReplayStore, tmp_path) -> None:
    ids = _add(store, 40, 0)
    cfg = learner_config(tmp_path, holdout_fraction=0.25)
    sampler = MixtureSampler(store, cfg, synthetic_stats(), seed=0)
    sampler.refresh()
    held = {i for i in ids if is_held_out(i, 0.25)}
    assert 0 < len(held) < 40 and sampler.held_out_count() == len(held)
    assert not held & {d.candidate.meta.episode_id for d in sampler.sample_draws(2000)}
    a = sampler.held_out_samples(6, seed=7)
    b = sampler.held_out_samples(6, seed=7)
    assert len(a) == 6 and [s.state.tolist() for s in a] == [s.state.tolist() for s in b]


def test_batches_collate_with_images_state_and_padded_actions(store: ReplayStore, tmp_path) -> None:
    _add(store, 3, 0, embodiment="franka")
    _add(store, 3, 50, embodiment="yam_bimanual")
    sampler = MixtureSampler(store, learner_config(tmp_path, holdout_fraction=0.0), synthetic_stats(), seed=0)
    sampler.refresh()
    batch = sampler.sample(16)
    assert len(batch.samples) == 16 and batch.staleness_s >= 0
    for s, d in zip(batch.samples, batch.draws, strict=True):
        meta = d.candidate.meta
        assert list(s.images) == list(synthetic_episode(meta.embodiment).images)  # main camera first
        # tests.factories frames hold (step + 7 * camera) % 256: the observation is the window's first step
        assert int(next(iter(s.images.values()))[0, 0, 0]) == d.start
        assert s.state[0] == pytest.approx(d.start)
        assert s.actions.shape == (
            min(d.horizon, 20 - d.start),
            {"franka": 8, "yam_bimanual": 14}[meta.embodiment],
        )
        assert s.actions[0, 0] == pytest.approx(d.start)
    collated = micro_policy().processor.collate(batch.samples)
    assert collated["actions"].shape[0] == 16
    horizon = collated["action_horizon_mask"].sum(1).tolist()
    assert all(h == min(d.horizon, 20 - d.start) for h, d in zip(horizon, batch.draws, strict=True))
