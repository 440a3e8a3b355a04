"""The rehearsal mixture: which stored windows make up each training batch (specialize, then rehearse).

Every draw goes down four levels, each with its own weights:

1. pool, by ``LearnerConfig.mixture``: ``fresh`` (fleet episodes that ended less than ``fresh_window_s`` ago:
   what the fleet does now, where the policy should specialize), ``history`` (older fleet episodes, the store's
   reservoir included: what it did before, so yesterday's skills are rehearsed) and ``rehearsal`` (imported
   pretraining-style datasets, sources in ``rehearsal_sources``: the broad prior that keeps the backbone
   general; the demo puts its scripted demonstrations here).
   Empty pools drop out and the others are renormalised (the realised shares are logged, so that shows);
2. embodiment, by ``embodiment_weights``: its share of the pool (empty config: in proportion to the data);
3. episode, by outcome: a success weighs ``success_weight``; intervention steps add to an episode's weight
   (``intervention_weight`` per intervention step instead of 1), because an intervention is a supervisor
   correcting the policy exactly where it went wrong: the most informative data a fleet produces;
4. start step, uniform over the episode's steps, intervention steps weighted ``intervention_weight``; windows
   that run past the end are padded and masked by the policy's collate.

Failures. ``failures="drop"`` (default): a failed episode contributes only the windows that start on an
intervention step. Its autonomous steps are what the policy did on the way to failing; imitating them teaches
the failure, and the alternative, conditioning on an outcome/advantage token, needs a policy large enough to
learn what the token means (RECAP-style advantage conditioning is trained on millions of steps; a tiny CPU
policy fed a mostly-failure token just averages both behaviours). The corrective signal of a failure is in its
interventions, and those are kept. ``failures="keep"`` trains on every window and writes the outcome into the
instruction (``OUTCOME_SUFFIX``); actors must then ask for the successful behaviour by appending
``OUTCOME_SUFFIX[True]`` to their instruction at inference.

Rescues. A success with supervisor steps is, for its policy steps, a failure that someone rescued: the policy
stalled or went wrong, which is why the supervisor took over. ``rescued="interventions"`` (default) trains only
on its intervention windows, as HG-DAgger does (Sirius keeps the rest at a lower weight; this is the same rule
with that weight at 0): the policy's own steps are imitated only from episodes it succeeded in alone.
``rescued="all"`` keeps every window of a success.

Out of range. A supervisor does not always move as the demonstrations did: a scripted one returns the arm home
in joint space from a tilted pose, a person may jerk it free. Such a takeover window's targets can leave the
policy's action range (the q01..q99 of the data its normalisation was fit on); the range's clip turns them into
"push to the edge" on those joints. With ``takeover_support_tol`` set, a takeover window that leaves the range
by more than that (action units) is never drawn, and a failure or rescue with no takeover window left is
dropped: its other takeover windows (the supervisor's moves the policy can represent) still train.

A fraction of episodes (``holdout_fraction``, by a hash of the id, so every learner agrees and a restart keeps
the split) is never trained on: the eval-loss set is drawn from it.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from fleet.config import LearnerConfig
from fleet.episode import MAX_STEPS, EpisodeMeta, StepWindow
from fleet.replay import EpisodeRef, ReplayStore
from policy.normalization import NormStats
from policy.processor import PolicySample

POOLS = ("fresh", "history", "rehearsal")
OUTCOME_SUFFIX = {True: " (outcome: success)", False: " (outcome: failure)"}  # failures="keep" only


def until_hand_back(flags: np.ndarray) -> int:
    """Steps of a window that starts on a supervisor step, to the hand-back to the policy (the whole window when
    the supervisor holds it throughout): a 2 s takeover is one or two chunks long, so most such windows would
    teach some of the policy's steps after it."""
    return len(flags) if flags.all() else int(np.argmin(flags))


def is_held_out(episode_id: str, fraction: float) -> bool:
    """Stable train/eval split by episode id (sha1, so it does not depend on Python's hash seed)."""
    h = int.from_bytes(hashlib.sha1(episode_id.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


@dataclass
class Candidate:
    """A stored episode the sampler may draw from."""

    meta: EpisodeMeta
    tag: str  # norm-stats tag of its embodiment
    steps: int  # number of steps
    weight: float  # episode weight within its (pool, embodiment): outcome and interventions
    flags: np.ndarray | None = None  # (steps,) bool intervention flags, read on first draw when needed
    usable: np.ndarray | None = None  # (steps,) bool: False at takeover starts out of the action range


@dataclass
class Draw:
    """One drawn window: where it comes from and how long its action chunk is."""

    candidate: Candidate
    pool: str
    start: int
    horizon: int  # the embodiment's chunk length (norm stats)

    @property
    def ref(self) -> EpisodeRef:
        return EpisodeRef(self.candidate.meta.episode_id, self.start, self.pool)


@dataclass
class MixtureBatch:
    samples: list[PolicySample]
    draws: list[Draw]  # aligned with samples (windows evicted between draw and read are left out of both)
    staleness_s: float  # mean age of the fleet windows' episodes at draw time (0 when none)
    version_lag: float  # mean (newest policy version seen in the fleet data - the window's version)
    interventions: float  # share of windows that start on an intervention step


@dataclass
class _Stratum:
    """Candidates of one (pool, embodiment) with cumulative weights for O(log n) draws."""

    items: list[Candidate] = field(default_factory=list)
    cum: list[float] = field(default_factory=list)

    def add(self, c: Candidate) -> None:
        self.items.append(c)
        self.cum.append((self.cum[-1] if self.cum else 0.0) + c.weight)

    @property
    def total(self) -> float:
        return self.cum[-1] if self.cum else 0.0

    def pick(self, rng: random.Random) -> Candidate:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]


class MixtureSampler:
    """Draws training windows from the replay store by the configured mixture and builds PolicySamples."""

    def __init__(
        self,
        store: ReplayStore,
        cfg: LearnerConfig,
        norm_stats: NormStats,
        norm_tags: dict[str, str] | None = None,
        seed: int = 0,
        history_len: int = 50,
    ):
        self.store = store
        self.cfg = cfg
        self.norm_stats = norm_stats
        self.norm_tags = dict(norm_tags or {})  # episode embodiment -> norm-stats tag (identity when absent)
        self.rng = random.Random(seed)
        self._known: dict[str, Candidate] = {}
        self._held_out: dict[str, Candidate] = {}
        self._skipped: Counter[str] = Counter()  # embodiments without norm stats, episodes seen
        self._recent: deque[Counter[str]] = deque(maxlen=history_len)  # per batch: pool/emb/... counts
        self._total: Counter[str] = Counter()
        self._refreshed_at = float("-inf")
        self._changes = 0  # bumped whenever the candidate set changes (invalidates the strata cache)
        self._strata_cache: tuple[tuple[int, int], dict[str, dict[str, _Stratum]]] | None = None
        self.newest_version = 0

    # ------------------------------------------------------------------------------------------ candidates

    def tag_of(self, embodiment: str) -> str:
        return self.norm_tags.get(embodiment, embodiment)

    @property
    def _sources(self) -> tuple[str, ...]:
        """Every source the learner trains on (fleet pools, then rehearsal)."""
        return tuple(dict.fromkeys((*self.cfg.fleet_sources, *self.cfg.rehearsal_sources)))

    def _rehearsal(self, meta: EpisodeMeta) -> bool:
        return meta.source in self.cfg.rehearsal_sources

    def _interventions_only(self, meta: EpisodeMeta) -> bool:
        """Only windows that start on a supervisor step are eligible (failures, and rescued successes)."""
        if not meta.success:
            return self.cfg.failures == "drop"
        return meta.interventions > 0 and self.cfg.rescued == "interventions"

    def _weight(self, meta: EpisodeMeta, steps: int) -> float:
        cfg = self.cfg
        share = min(meta.interventions, steps) / max(steps, 1)  # fraction of start steps under intervention
        if self._interventions_only(meta):
            return cfg.intervention_weight * share  # only intervention starts are eligible
        outcome = cfg.success_weight if meta.success else 1.0
        return outcome * (1.0 + (cfg.intervention_weight - 1.0) * share)

    def refresh(self, now: float | None = None) -> int:
        """Re-list the store's episodes (new ones in, evicted ones out); returns the trainable count."""
        ids = [i for src in self._sources for i in self.store.episode_ids(f"src:{src}")]
        live = set(ids)
        for table in (self._known, self._held_out):
            for gone in [i for i in table if i not in live]:
                del table[gone]
                self._changes += 1
        self.add([i for i in ids if i not in self._known and i not in self._held_out])
        self._refreshed_at = time.monotonic() if now is None else now
        return len(self._known)

    def refresh_due(self) -> bool:
        return time.monotonic() - self._refreshed_at >= self.cfg.refresh_s

    def add(self, ids: list[str]) -> None:
        """Take in newly stored episodes (ids from the new-episode stream or a re-list)."""
        ids = [i for i in ids if i not in self._known and i not in self._held_out]
        if not ids:
            return
        metas = self.store.metas(ids)
        steps = self.store.num_steps(ids)
        for i, m, n in zip(ids, metas, steps, strict=True):
            if m is None or n is None or m.source not in self._sources:
                continue
            tag = self.tag_of(m.embodiment)
            if tag not in self.norm_stats.metadata_by_tag:
                self._skipped[m.embodiment] += 1  # the policy has no statistics for it: it cannot train on it
                continue
            c = Candidate(m, tag, n, self._weight(m, n))
            if not self._rehearsal(m):
                self.newest_version = max(self.newest_version, m.policy_version)
            target = self._held_out if is_held_out(i, self.cfg.holdout_fraction) else self._known
            target[i] = c
            self._changes += 1

    @property
    def skipped_embodiments(self) -> dict[str, int]:
        return dict(self._skipped)

    def trainable_count(self) -> int:
        return sum(1 for c in self._known.values() if c.weight > 0)

    def _pool_of(self, c: Candidate, cutoff: float) -> str:
        if self._rehearsal(c.meta):
            return "rehearsal"
        return "fresh" if c.meta.end_time >= cutoff else "history"

    def _strata(self, now: float) -> dict[str, dict[str, _Stratum]]:
        key = (
            self._changes,
            int(now),
        )  # the fresh/history boundary moves with time: rebuilt at most once a second
        if self._strata_cache is not None and self._strata_cache[0] == key:
            return self._strata_cache[1]
        cutoff = now - self.cfg.fresh_window_s
        strata: dict[str, dict[str, _Stratum]] = {p: {} for p in POOLS}
        for c in self._known.values():
            if c.weight > 0:
                strata[self._pool_of(c, cutoff)].setdefault(c.meta.embodiment, _Stratum()).add(c)
        self._strata_cache = (key, strata)
        return strata

    def pool_sizes(self, now: float | None = None) -> dict[str, int]:
        strata = self._strata(time.time() if now is None else now)
        return {p: sum(len(s.items) for s in strata[p].values()) for p in POOLS}

    def _embodiment_weights(self, pool: dict[str, _Stratum]) -> dict[str, float]:
        if not self.cfg.embodiment_weights:
            return {e: s.total for e, s in pool.items()}  # in proportion to the (weighted) data
        return {e: self.cfg.embodiment_weights.get(e, 1.0) for e in pool}

    # ------------------------------------------------------------------------------------------ drawing

    def sample_draws(self, n: int, now: float | None = None) -> list[Draw]:
        """``n`` draws by the mixture (no data read except intervention flags of episodes that have them)."""
        now = time.time() if now is None else now
        strata = self._strata(now)
        pools = [p for p in POOLS if self.cfg.mixture.get(p, 0.0) > 0 and strata[p]]
        if not pools:
            raise LookupError("no trainable episodes in any pool with a positive mixture weight")
        draws: list[Draw] = []
        for pool in self.rng.choices(pools, weights=[self.cfg.mixture[p] for p in pools], k=n):
            for _ in range(100):  # a pick whose every takeover window is out of range is dropped and redrawn
                if not strata[pool]:  # emptied by such drops: another pool stands in
                    pool = next(p for p in pools if strata[p])
                emb_w = self._embodiment_weights(strata[pool])
                embs = [e for e, w in emb_w.items() if w > 0]
                if not embs:
                    raise LookupError(f"pool {pool!r}: every embodiment in it has weight 0")
                emb = self.rng.choices(embs, weights=[emb_w[e] for e in embs])[0]
                c = strata[pool][emb].pick(self.rng)
                start = self._start(c)
                if start is not None:
                    draws.append(Draw(c, pool, start, self.norm_stats[c.tag].action_horizon))
                    break
                c.weight = 0.0  # nothing of it trains: out of every pool from now on
                self._changes += 1
                strata = self._strata(now)
                if not any(strata[p] for p in pools):
                    raise LookupError("no trainable episodes left in any pool with a positive mixture weight")
        return draws

    def _start(self, c: Candidate) -> int | None:
        """A start step for a window of ``c``; None when it has no trainable one (out of range takeovers)."""
        if c.meta.interventions == 0:
            return self.rng.randrange(c.steps)
        if c.flags is None:
            self._read_flags(c)
        assert c.flags is not None and c.usable is not None
        weights = np.where(c.flags, self.cfg.intervention_weight, 1.0) * c.usable
        if self._interventions_only(c.meta):
            weights = np.where(c.flags, weights, 0.0)
        cum = np.cumsum(weights)
        if cum[-1] <= 0:
            if c.usable.all():  # flags unreadable (evicted since listed): any step; its read will skip it anyway
                return self.rng.randrange(c.steps)
            return None
        return int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))

    def _read_flags(self, c: Candidate) -> None:
        """Set ``c.flags`` and ``c.usable`` from the episode's low-dim arrays (no frames)."""
        win = self.store.read_windows([EpisodeRef(c.meta.episode_id, 0)], MAX_STEPS, image_steps=0)
        if not win:  # evicted: the read of its window will skip it too
            c.flags, c.usable = np.zeros(c.steps, dtype=bool), np.ones(c.steps, dtype=bool)
            return
        c.flags = np.asarray(win[0].intervention, dtype=bool)
        c.usable = self._in_range(c, win[0]) if self.cfg.takeover_support_tol is not None else np.ones_like(c.flags)

    def _in_range(self, c: Candidate, w: StepWindow) -> np.ndarray:
        """(steps,) False where a takeover window (to its hand-back, as `to_sample` cuts it) leaves the policy's
        action range by more than ``takeover_support_tol``."""
        assert c.flags is not None and self.cfg.takeover_support_tol is not None
        horizon = self.norm_stats[c.tag].action_horizon
        actions, states = np.asarray(w.action, np.float64), np.asarray(w.state, np.float64)
        usable = np.ones(len(c.flags), dtype=bool)
        for t in np.flatnonzero(c.flags):
            chunk = actions[t : t + until_hand_back(c.flags[t : t + horizon])]
            excess = self.norm_stats.action_range_excess(c.tag, chunk, states[t])
            usable[t] = excess.max() <= self.cfg.takeover_support_tol
        return usable

    def sample(self, n: int, now: float | None = None) -> MixtureBatch:
        """Draw ``n`` windows, read them (one pipelined round trip) and build PolicySamples."""
        now = time.time() if now is None else now
        draws = self.sample_draws(n, now)
        batch = self.read(draws, now)
        self._record(batch.draws)
        return batch

    def read(self, draws: list[Draw], now: float | None = None) -> MixtureBatch:
        now = time.time() if now is None else now
        by_key: dict[tuple[str, int], list[Draw]] = {}
        for d in draws:
            by_key.setdefault((d.candidate.meta.episode_id, d.start), []).append(d)
        horizon = max((d.horizon for d in draws), default=1)
        windows = self.store.read_windows([d.ref for d in draws], horizon, image_steps=1)
        samples, kept = [], []
        for w in windows:
            d = by_key[(w.meta.episode_id, w.start)].pop(0)
            samples.append(self.to_sample(w, d))
            kept.append(d)
        fleet = [d for d in kept if d.pool != "rehearsal"]
        starts_int = [d for d in kept if d.candidate.flags is not None and d.candidate.flags[d.start]]
        return MixtureBatch(
            samples,
            kept,
            # robots' clocks may run ahead of ours: an episode is never younger than 0 s
            staleness_s=float(np.mean([max(0.0, now - d.candidate.meta.end_time) for d in fleet]))
            if fleet
            else 0.0,
            version_lag=float(np.mean([self.newest_version - d.candidate.meta.policy_version for d in fleet]))
            if fleet
            else 0.0,
            interventions=len(starts_int) / max(len(kept), 1),
        )

    def to_sample(self, w: StepWindow, d: Draw) -> PolicySample:
        """Observation = the window's first step (every camera, state); actions = up to ``horizon`` steps."""
        if not w.images or any(len(f) == 0 for f in w.images.values()):
            raise ValueError(f"episode {w.meta.episode_id}: no camera frame at step {w.start}")
        instruction = w.meta.instruction
        if self.cfg.failures == "keep" and not self._rehearsal(w.meta):
            instruction += OUTCOME_SUFFIX[w.meta.success]
        actions = np.asarray(w.action[: d.horizon], dtype=np.float32)  # (<= horizon, A)
        flags = np.asarray(w.intervention[: len(actions)], dtype=bool)
        if len(flags) and flags[0]:
            actions = actions[: until_hand_back(flags)]  # the steps after the hand-back are the policy again
        return PolicySample(
            images={cam: frames[0] for cam, frames in w.images.items()},  # stored order: main camera first
            state=np.asarray(w.state[0], dtype=np.float32),
            instruction=instruction,
            embodiment=d.candidate.tag,
            actions=actions,
            depth=w.depth[0] if w.depth is not None and len(w.depth) else None,  # MolmoThink targets (H, W)
        )

    # ------------------------------------------------------------------------------------------ eval set

    def held_out_samples(self, n: int, kind: str = "fleet", seed: int = 0) -> list[PolicySample]:
        """Up to ``n`` deterministic windows from held-out episodes (``kind``: fleet or rehearsal)."""
        want_rehearsal = kind == "rehearsal"
        pool = sorted(
            (c for c in self._held_out.values() if self._rehearsal(c.meta) == want_rehearsal),
            key=lambda c: c.meta.episode_id,
        )
        if not pool:
            return []
        rng = random.Random(seed)
        draws = []
        for _ in range(n):
            c = pool[rng.randrange(len(pool))]
            draws.append(Draw(c, kind, rng.randrange(c.steps), self.norm_stats[c.tag].action_horizon))
        return self.read(draws).samples

    def held_out_count(self, kind: str | None = None) -> int:
        """Held-out episodes (kind: None for all, "fleet" or "rehearsal")."""
        if kind is None:
            return len(self._held_out)
        return sum(self._rehearsal(c.meta) == (kind == "rehearsal") for c in self._held_out.values())

    # ------------------------------------------------------------------------------------------ what happened

    def _record(self, draws: list[Draw]) -> None:
        counts: Counter[str] = Counter()
        for d in draws:
            c = d.candidate
            counts[f"pool/{d.pool}"] += 1
            counts[f"embodiment/{c.meta.embodiment}"] += 1
            counts["success"] += int(c.meta.success)
            counts["intervention"] += int(c.flags is not None and bool(c.flags[d.start]))
            counts["n"] += 1
        self._recent.append(counts)
        self._total.update(counts)

    def realised(self, recent: bool = True) -> dict[str, float]:
        """Shares in the last batches (or since start): pool/<p>, embodiment/<e>, success, intervention."""
        counts: Counter[str] = Counter()
        for c in self._recent if recent else [self._total]:
            counts.update(c)
        n = counts.pop("n", 0)
        return {k: v / n for k, v in sorted(counts.items())} if n else {}

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "total": dict(self._total)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self._total = Counter(state.get("total", {}))
