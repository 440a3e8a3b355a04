"""Staged rollout: a new version runs on a canary cohort per embodiment, its success rate is compared with the
champion's over the same period, and it is promoted fleet-wide or rolled back. Every decision is recorded on the
status board (and, through ``on_alias``, as MLflow registry aliases).

What is judged is ``RolloutConfig.judge``: by default both autonomous success (no supervisor step: a rescue says
little of the version) and success with rescues (a version that needs more rescues can still look no worse on
autonomous success when both are rare); a canary is promoted when every judged outcome is not worse, rolled back
when any one is worse. A canary that every canary robot refused (verification or load
failed) is rolled back at once: it will never run, so there is nothing to wait for. A canary still undecided
after ``canary_timeout_s`` is rolled back too: it was not shown to be as good, and the champion is.

Before the canary, the screen (``RolloutConfig.sim_screen``): a version whose simulated held-out success
(``sim/fleet`` in its manifest, measured by the learner on seeds no robot runs) is worse than the champion's is
held back and never reaches a robot. Live canary counts on a small cohort are few and mostly rescues; the screen
compares both versions on the same scenes with no supervisor, so the canary's robot time goes to versions that
did about as well there. "Worse" is the gate's rollback rule on the simulated counts (``sim/episodes``): P(not
worse) at or below 1 - promote_probability; a screen of a few dozen episodes is noisy, and a champion whose own
screen came out lucky would otherwise hold back every version after it (seen: v1 6/24 in simulation, 0.08
held out, held back four learner versions of 3-5/24). Figures without counts (older manifests) compare as
rates. Versions without the figure (a learner with ``sim_eval_episodes: 0``, a manual publish) skip the screen.

Tests, both configurable:
- ``beta_binomial``: Beta(1 + s, 1 + f) posteriors; P(p_canary >= p_champion - margin) by seeded Monte Carlo;
  promote when it reaches ``promote_probability``, roll back when it falls to ``(1 - promote_probability) / k``.
- ``one_sided_z``: z = (p_canary - p_champion + margin) / se; roll back when z < -z_(alpha / k), else promote.

k is the number of comparisons a canary faces (judged outcomes x canary embodiments): any one of them rolls it
back, so each gets 1/k of the error budget (Bonferroni), or a version as good as the champion would be rolled
back most of the time by the noise of one of them (six comparisons at 0.2 each: ~70 %). Promotion needs every
comparison to pass, which needs no correction.

An embodiment still undecided after 4 x ``min_canary_episodes`` canary episodes has given what it will: the gate
then waits for the others and judges the fleet as a whole (beta_binomial), P(mean over the canary's embodiments
of p_canary >= mean of p_champion), each embodiment's own posteriors (stratified: pooled counts would weigh the
embodiment that ran most and mix base rates). Promote at 0.5 or more (better on balance), else roll back.
Judging each undecided embodiment alone rolled back a version that two embodiments had promoted (P 0.93, 0.97) on
the third's coin flip (3/20 against 4/18, P 0.44): with one robot per embodiment nearly every canary has one
such embodiment, and in three demo-size runs the champion never changed though the learner's versions did
better held out. No margin here: where the evidence is this thin the champion keeps the benefit of the doubt
(with the margin, a version at 3/64 autonomous against the champion's 4/50 was promoted, P 0.60, and did worse
held out, 1/72 against 4/72).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import norm

from fleet.config import RolloutConfig
from fleet.replay import ReplayStore
from fleet.status import RolloutDecision, RolloutState, StatusBoard, VersionEvent

SIM_FIGURE = "sim/fleet"  # the manifest figure the screen compares (learner: sim_eval_episodes)
SIM_EPISODES = "sim/episodes"  # how many simulated episodes that figure is the success rate of
UNDECIDED = "undecided"  # an embodiment's verdict after 4 x min_canary_episodes with no clear one (module docstring)


def prob_not_worse(s_c: int, n_c: int, s_h: int, n_h: int, margin: float, draws: int = 40_000) -> float:
    """P(p_canary >= p_champion - margin) under uniform-prior Beta posteriors."""
    return prob_mean_not_worse([(s_c, n_c, s_h, n_h)], margin, draws)


def prob_mean_not_worse(strata: Sequence[tuple[int, int, int, int]], margin: float, draws: int = 40_000) -> float:
    """P(mean over strata of p_canary - p_champion >= -margin), each stratum's (canary wins, episodes, champion
    wins, episodes) with its own uniform-prior Beta posteriors."""
    s_c, n_c, s_h, n_h = (np.array(col, dtype=float) for col in zip(*strata, strict=True))
    rng = np.random.default_rng(12345)  # fixed: the same counts always give the same decision
    pc = rng.beta(1 + s_c, 1 + n_c - s_c, (draws, len(s_c)))
    ph = rng.beta(1 + s_h, 1 + n_h - s_h, (draws, len(s_h)))
    return float(np.mean((pc - ph).mean(axis=1) >= -margin))


def z_not_worse(s_c: int, n_c: int, s_h: int, n_h: int, margin: float) -> float:
    pc, ph = (s_c + 0.5) / (n_c + 1), (s_h + 0.5) / (n_h + 1)
    se = np.sqrt(pc * (1 - pc) / (n_c + 1) + ph * (1 - ph) / (n_h + 1))
    return float((pc - ph + margin) / se)


class RolloutController:
    def __init__(self, store: ReplayStore, board: StatusBoard, cfg: RolloutConfig | None = None,
                 on_alias: Callable[[int, str], None] | None = None):
        self.store = store
        self.board = board
        self.cfg = cfg or RolloutConfig()
        self.on_alias = on_alias or (lambda version, alias: None)

    @property
    def state(self) -> RolloutState:
        return self.board.rollout_state()

    def screen(self, version: int, figures: Mapping[str, float], champion_figures: Mapping[str, float]) -> bool:
        """Whether ``version`` may go to the canary; a version screened out is recorded as held back."""
        new, old = figures.get(SIM_FIGURE), champion_figures.get(SIM_FIGURE)
        if not self.cfg.sim_screen or new is None or old is None or new >= old:
            return True
        n_new, n_old = int(figures.get(SIM_EPISODES, 0)), int(champion_figures.get(SIM_EPISODES, 0))
        detail = ""
        if n_new and n_old:
            p = prob_not_worse(round(new * n_new), n_new, round(old * n_old), n_old, self.cfg.margin)
            if p > 1 - self.cfg.promote_probability:
                return True
            detail = f" (P(not worse) {p:.2f})"
        champion = self.state.champion
        self.board.version_event(VersionEvent(
            version=version, kind="held_back",
            detail=f"simulated success {new:.2f} < champion v{champion}'s {old:.2f}{detail}",
            figures={k: v for k, v in figures.items() if k.startswith("sim/")}))
        return False

    def start_canary(self, version: int, robots: dict[str, list[str]]) -> RolloutState:
        """Put ``version`` on a canary cohort: ``canary_fraction`` of each embodiment's robots (at least one)."""
        st = self.state
        cohort = []
        for ids in robots.values():
            cohort += sorted(ids)[: max(1, round(len(ids) * self.cfg.canary_fraction))]
        if st.canary is not None and st.canary != version:
            self.board.version_event(VersionEvent(version=st.canary, kind="rolled_back", detail=f"superseded by {version}"))
        st = RolloutState(champion=st.champion, canary=version, canary_robots=cohort,
                          canary_embodiments=sorted(robots), canary_since=time.time())
        self.board.set_rollout_state(st)
        self.board.version_event(VersionEvent(version=version, kind="canary", detail=",".join(cohort)))
        self.on_alias(version, "canary")
        return st

    def _counts(self, st: RolloutState) -> dict[str, dict[str, dict[str, list[int]]]]:
        """judged outcome -> embodiment -> {"canary": [wins, episodes], "champion": [...]} since the canary
        started (one read of the store's outcome stats for every judged outcome)."""
        period = self.store.outcome_buckets(since=st.canary_since - self.store.cfg.stats_bucket_s)
        totals = self.store.outcome_totals()
        out: dict[str, dict[str, dict[str, list[int]]]] = {}
        for metric in self.cfg.judge:
            won = "autonomous" if metric == "autonomous" else "successes"
            per_emb = out[metric] = {}
            for row in period:
                role = ("canary" if row["version"] == st.canary
                        else "champion" if row["version"] == st.champion else None)
                if role is None:
                    continue
                c = per_emb.setdefault(str(row["embodiment"]), {"canary": [0, 0], "champion": [0, 0]})[role]
                c[0] += int(row[won])
                c[1] += int(row["episodes"])
            # an embodiment whose robots are all in the cohort has no champion episodes in the period: compare
            # with the champion's whole record on that embodiment instead
            record: dict[str, list[int]] = {}
            for row in totals:
                if row["version"] == st.champion:
                    r = record.setdefault(str(row["embodiment"]), [0, 0])
                    r[0] += int(row[won])
                    r[1] += int(row["episodes"])
            for emb, c in per_emb.items():
                if c["champion"][1] < self.cfg.min_canary_episodes and emb in record:
                    c["champion"] = record[emb]
        return out

    def evaluate(self) -> list[RolloutDecision]:
        """Decide per embodiment where enough canary episodes exist; act fleet-wide when all have decided."""
        st = self.state
        if st.canary is None:
            return []
        refused = self.refused_by(st)
        if st.canary_robots and refused >= set(st.canary_robots):
            st.verdicts = {"*": "refused"}
            return [self._finish(st, promote=False)]
        decisions = []
        counts = self._counts(st)
        k = len(self.cfg.judge) * max(1, len(st.canary_embodiments))  # comparisons the canary faces
        for emb in sorted(counts[self.cfg.judge[0]]):
            if st.verdicts.get(emb, UNDECIDED) != UNDECIDED \
                    or counts[self.cfg.judge[0]][emb]["canary"][1] < self.cfg.min_canary_episodes:
                continue
            # every judged outcome must be not worse to promote; any one worse rolls back (the one reported)
            judged = [(m, *self._decide(counts[m][emb], k)) for m in self.cfg.judge]
            worst = min(judged, key=lambda j: ("rollback", "wait", "promote").index(j[1]))
            metric, decision, stat = worst
            (s_c, n_c), (s_h, n_h) = counts[metric][emb]["canary"], counts[metric][emb]["champion"]
            d = RolloutDecision(version=st.canary, champion=st.champion, embodiment=emb, decision=decision,
                                canary_episodes=n_c, canary_successes=s_c, champion_episodes=n_h,
                                champion_successes=s_h, statistic=stat, test=f"{self.cfg.test}:{metric}")
            self.board.rollout_decision(d)
            decisions.append(d)
            if decision != "wait":
                st.verdicts[emb] = decision
            elif n_c >= 4 * self.cfg.min_canary_episodes:  # only beta_binomial waits (one_sided_z always decides)
                st.verdicts[emb] = UNDECIDED  # its share of the evidence is in: the fleet-wide judgement decides
        if any(v == "rollback" for v in st.verdicts.values()):
            return [*decisions, self._finish(st, promote=False)]
        if st.verdicts and set(st.verdicts) >= set(st.canary_embodiments):
            if UNDECIDED in st.verdicts.values():
                fleet = self._judge_fleet(st, counts)
                decisions.append(fleet)
                st.verdicts["fleet"] = fleet.decision
                return [*decisions, self._finish(st, promote=fleet.decision == "promote")]
            return [*decisions, self._finish(st, promote=True)]
        if time.time() - st.canary_since > self.cfg.canary_timeout_s:
            st.verdicts["*"] = "timeout"
            return [*decisions, self._finish(st, promote=False)]
        self.board.set_rollout_state(st)
        return decisions

    def _decide(self, c: dict[str, list[int]], comparisons: int = 1) -> tuple[str, float]:
        """(promote | rollback | wait, statistic) for one outcome's canary and champion counts; ``comparisons``:
        how many such verdicts the canary faces, any one of which rolls it back (see the module docstring)."""
        (s_c, n_c), (s_h, n_h) = c["canary"], c["champion"]
        if self.cfg.test == "beta_binomial":
            stat = prob_not_worse(s_c, n_c, s_h, n_h, self.cfg.margin)
            decision = ("promote" if stat >= self.cfg.promote_probability
                        else "rollback" if stat <= (1 - self.cfg.promote_probability) / comparisons
                        else "wait")
        else:
            stat = z_not_worse(s_c, n_c, s_h, n_h, self.cfg.margin)
            decision = "rollback" if stat < -norm.ppf(1 - self.cfg.alpha / comparisons) else "promote"
        return decision, stat

    def _judge_fleet(self, st: RolloutState, counts: dict[str, dict[str, dict[str, list[int]]]]) -> RolloutDecision:
        """The fleet-wide verdict once every canary embodiment has promoted or is undecided with its episodes in:
        for each judged outcome, P(the canary's mean success over embodiments is at least the champion's), see
        the module docstring; the lowest one is reported (summed counts for display)."""
        judged = []
        for metric in self.cfg.judge:
            per_emb = [counts[metric][e] for e in st.canary_embodiments if e in counts[metric]]
            strata = [(*c["canary"], *c["champion"]) for c in per_emb]
            judged.append((prob_mean_not_worse(strata, 0.0), metric, strata))
        stat, metric, strata = min(judged, key=lambda j: j[0])
        d = RolloutDecision(version=st.canary or 0, champion=st.champion, embodiment="fleet",
                            decision="promote" if stat >= 0.5 else "rollback",
                            canary_successes=sum(x[0] for x in strata), canary_episodes=sum(x[1] for x in strata),
                            champion_successes=sum(x[2] for x in strata),
                            champion_episodes=sum(x[3] for x in strata),
                            statistic=stat, test=f"{self.cfg.test}:{metric}:mean over embodiments")
        self.board.rollout_decision(d)
        return d

    def refused_by(self, st: RolloutState) -> set[str]:
        """Canary robots that reported refusing the canary version since it started."""
        return {e.robot for e in self.board.version_events(1000)
                if e.kind == "rejected" and e.version == st.canary and e.t >= st.canary_since - 1.0}

    def _finish(self, st: RolloutState, promote: bool) -> RolloutDecision:
        version = st.canary
        assert version is not None
        verdicts = ",".join(f"{k}:{v}" for k, v in sorted(st.verdicts.items()))
        new = RolloutState(champion=version if promote else st.champion)
        self.board.set_rollout_state(new)
        self.board.version_event(VersionEvent(version=version, kind="promoted" if promote else "rolled_back",
                                              detail=verdicts))
        if promote:
            self.on_alias(version, "champion")
        return RolloutDecision(version=version, champion=new.champion, embodiment="*",
                               decision="promote" if promote else "rollback", canary_episodes=0,
                               canary_successes=0, champion_episodes=0, champion_successes=0, statistic=0.0,
                               test="fleet")

    def promote(self, version: int | None = None) -> RolloutState:
        """Manual promotion (``fleet rollout promote``): the canary, or any published version."""
        st = self.state
        v = version if version is not None else st.canary
        if v is None:
            raise ValueError("no canary to promote; name a version")
        st = RolloutState(champion=v)
        self.board.set_rollout_state(st)
        self.board.version_event(VersionEvent(version=v, kind="promoted", detail="manual"))
        self.on_alias(v, "champion")
        return st

    def rollback(self, to_version: int | None = None) -> RolloutState:
        """Manual rollback: drop the canary, or set the champion back to ``to_version``."""
        st = self.state
        if st.canary is not None:
            self.board.version_event(VersionEvent(version=st.canary, kind="rolled_back", detail="manual"))
        st = RolloutState(champion=st.champion if to_version is None else to_version)
        self.board.set_rollout_state(st)
        if to_version is not None:
            self.board.version_event(VersionEvent(version=to_version, kind="promoted", detail="manual rollback"))
            self.on_alias(to_version, "champion")
        return st
