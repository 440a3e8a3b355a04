"""`RobotActor`: one arm's control loop with asynchronous chunked inference, recording and supervision.

Every tick, at an absolute deadline of the embodiment's control rate (`ControlClock`):

1. collect the chunk the inference thread finished, if any, and merge it into the queue (stale actions
   dropped, overlap cross-faded: `ChunkQueue`);
2. pick the action: the supervisor's while it has taken over, else the queue's action for this step, else
   (queue dry) the last commanded target again, so the arm holds still, and the tick counts as starved;
3. step the env, record (observation, action, intervention flag, time);
4. if fewer than ``queue_threshold * horizon`` actions remain and nothing is in flight, hand the new
   observation to the inference thread (`ChunkWorker`), which computes while the next ticks execute.

Steps are counted in executed ticks, and a chunk predicted from the observation of step ``s`` holds actions
for ``s, s+1, ...``; when it lands at step ``now`` its first ``now - s`` actions are already in the past and
are dropped (latency compensation). With ``async_inference=False`` the loop instead stops the arm and waits
for each chunk once the queue is empty: the baseline bench/actor.py compares against.

A takeover clears the queue and pauses inference; when the supervisor lets go, the actor asks the policy for
a fresh chunk from the current observation and the supervisor keeps the arm until it lands, so the arm never
idles at a hand-back. Those steps are interventions too.

Hot swap: `swap_policy` may be called from any thread; the inference thread applies it before its next chunk,
so no tick waits for it. Each queued action remembers the version that produced it, and an episode records
the version that produced most of its policy steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from actors.embodiments import Embodiment
from actors.heartbeat import HeartbeatSender
from actors.interventions import Supervisor
from actors.policy_client import PolicyClient
from actors.recorder import EpisodeRecorder
from actors.runtime_chunks import ChunkQueue
from actors.runtime_clock import ClockStats, ControlClock
from actors.runtime_inference import ChunkResult, ChunkWorker, SwapTarget
from fleet.config import ActorsConfig
from fleet.spool import Spool
from fleet.status import Heartbeat, StatusBoard

log = logging.getLogger(__name__)


class PolicyUnavailable(RuntimeError):
    """No first chunk for an episode within ``first_chunk_timeout_s``: the episode was not started."""


@dataclass(frozen=True)
class EpisodeResult:
    """How one episode went, from the loop's point of view."""

    episode_id: str | None  # None when not recorded (no recorder)
    success: bool
    steps: int
    wall_s: float  # wall time from the first tick to the end
    completion_s: float | None  # wall time until success (None: not completed)
    idle_s: float  # wall time the arm held still waiting for the policy (starved ticks, synchronous waits)
    starved: int  # policy ticks with an empty queue
    interventions: int  # steps the supervisor acted
    takeovers: int
    policy_version: int  # the version that produced most policy steps
    chunks: int  # chunks merged


@dataclass
class _Episode:
    """The control loop's state within one episode."""

    instruction: str
    obs: dict[str, Any]  # the latest observation (the one the next action is chosen from)
    hold: np.ndarray  # (A,) last commanded target: what a dry queue repeats
    max_steps: int | None
    chunks_at_start: int
    t0: float  # clock time of the first tick
    info: dict[str, Any] = field(default_factory=dict)
    k: int = 0  # control step (ticks executed)
    starved: int = 0
    interventions: int = 0
    idle_s: float = 0.0
    reward: float = 0.0
    success: bool = False
    completion_s: float | None = None
    supervising: bool = False
    handing_back: bool = False  # the supervisor let go; waiting for the policy's fresh chunk
    by_version: Counter[int] = field(default_factory=Counter)  # policy steps executed per weights version


@dataclass(frozen=True)
class ActorStats:
    """Counters since the actor was created."""

    clock: ClockStats
    episodes: int  # episodes finished (recorded when a recorder is attached)
    successes: int
    starved_ticks: int
    stale_actions: int  # chunk actions dropped because they were already in the past when the chunk landed
    chunks: int
    inference_errors: int
    inference_p50_ms: float
    inference_p99_ms: float
    queue_depth: int
    swaps: int
    policy_version: int


class RobotActor:
    """Runs episodes of one task on one arm. `run` on the thread that created the env (its GL context)."""

    def __init__(
        self,
        robot_id: str,
        embodiment: Embodiment,
        task: str,
        env: gym.Env,
        client: PolicyClient,
        config: ActorsConfig | None = None,
        *,
        recorder: EpisodeRecorder | None = None,
        supervisor: Supervisor | None = None,
        board: StatusBoard | None = None,
        spool: Spool | None = None,
        cohort: Literal["champion", "canary"] = "champion",
    ):
        self.cfg = config or ActorsConfig()
        self.robot_id = robot_id
        self.embodiment = embodiment
        self.task = task
        self.env = env
        self.recorder = recorder
        self.supervisor = supervisor
        self.spool = spool if spool is not None else (recorder.spool if recorder else None)
        self.cohort = cohort
        self.horizon = embodiment.chunk_horizon
        self.hz = embodiment.control_hz * self.cfg.time_scale  # wall-clock tick rate
        self.request_below = self.cfg.queue_threshold * self.horizon  # actions left that trigger a request
        if self.request_below < 1:
            raise ValueError(
                f"queue_threshold {self.cfg.queue_threshold} x horizon {self.horizon} is below one action: the "
                f"next chunk would only be asked for once the queue is dry; raise actors.queue_threshold to at "
                f"least {1 / self.horizon:.3f}"
            )
        shape = getattr(env.action_space, "shape", None)
        if shape != (embodiment.action_dim,):
            raise ValueError(
                f"env actions have shape {shape} but {embodiment.name} acts with {embodiment.action_dim} dims: "
                "the env was built for another embodiment"
            )
        self._low, self._high = embodiment.action_low, embodiment.action_high  # (A,) joint limits
        self.clock = ControlClock(self.hz)
        self.queue = ChunkQueue(embodiment.action_dim, self.cfg.merge)
        self.worker = ChunkWorker(client, embodiment.action_dim, name=f"inference-{robot_id}")
        self._heartbeats = (
            HeartbeatSender(board, self.heartbeat, self.cfg.heartbeat_s, f"heartbeat-{robot_id}")
            if board is not None
            else None
        )
        self._stop = threading.Event()
        self._epoch = 0  # bumped whenever queued / in-flight chunks stop matching the world
        self._pending_epoch: int | None = None  # epoch of the request in flight
        self.episodes = 0
        self.successes = 0
        self.starved_ticks = 0
        self.stale_actions = 0
        self.chunks = 0
        self.rejected_versions = 0  # weight versions refused (verification or load): set by the weight follower
        self._closed = False

    # ------------------------------------------------------------------------------------------ public

    def swap_policy(self, policy: SwapTarget, version: int) -> Future:
        """Run ``version`` from the next chunk boundary on. Thread-safe, returns at once (see ChunkWorker.swap):
        a PolicyClient replaces the current one, a tensor mapping is loaded into it, None re-routes it."""
        return self.worker.swap(policy, version)

    @property
    def policy_version(self) -> int:
        return self.worker.version

    def stop(self) -> None:
        """End the loop at the next tick (the unfinished episode is discarded). Safe from signal handlers."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(
        self,
        episodes: int | None = None,
        seed: int | None = None,
        on_episode: Callable[[EpisodeResult], None] | None = None,
    ) -> list[EpisodeResult]:
        """Run ``episodes`` episodes (None: until `stop`). Episode i uses seed ``seed + i``; ``on_episode`` is
        called after each one is recorded (spooled durably)."""
        base = self.cfg.seed if seed is None else seed
        results: list[EpisodeResult] = []
        if self._heartbeats is not None:
            self._heartbeats.start()
        backoff = 0.5
        i = 0
        try:
            while not self._stop.is_set() and (episodes is None or len(results) < episodes):
                try:
                    res = self.run_episode(base + i)
                except PolicyUnavailable as e:
                    log.warning("%s: %s; retrying in %.1f s", self.robot_id, e, backoff)
                    self._stop.wait(backoff)
                    backoff = min(10.0, backoff * 2)
                    continue
                backoff = 0.5
                i += 1
                if res is not None:
                    results.append(res)
                    log.info(
                        "%s: episode %s success=%s steps=%d interventions=%d starved=%d version=%d",
                        self.robot_id,
                        res.episode_id,
                        res.success,
                        res.steps,
                        res.interventions,
                        res.starved,
                        res.policy_version,
                    )
                    if on_episode is not None:
                        on_episode(res)
        finally:
            if self._heartbeats is not None:
                self._heartbeats.stop()
        return results

    def run_episode(self, seed: int | None = None) -> EpisodeResult | None:
        """One episode; None if `stop` interrupted it. Raises PolicyUnavailable if no first chunk came."""
        obs, info = self.env.reset(seed=seed)
        instruction = str(getattr(self.env.unwrapped, "instruction", "") or info.get("instruction", ""))
        self._new_epoch()
        chunks_before = self.chunks
        if self.supervisor is not None:
            self.supervisor.reset(seed)
        # the first chunk is fetched before the clock starts: the arm waits at rest, as a real one would
        first = self._request_blocking(obs, instruction, 0, self.cfg.first_chunk_timeout_s)
        if first is None and self._stop.is_set():
            return None
        if first is None:
            raise PolicyUnavailable(
                f"no first chunk within {self.cfg.first_chunk_timeout_s} s "
                f"({self.worker.last_error or 'no error reported'})"
            )
        self._merge(first, 0)
        if self.recorder is not None:
            self.recorder.begin(instruction, seed)
        limit = self.cfg.max_episode_s
        ep = _Episode(
            instruction=instruction,
            obs=obs,
            hold=np.asarray(
                obs["state"], np.float32
            ).copy(),  # absolute targets: the current pose holds still
            max_steps=int(limit * self.embodiment.control_hz) if limit else None,
            chunks_at_start=chunks_before,
            t0=self.clock.start(),
        )
        while True:
            if self._stop.is_set():
                return self._abandon()
            res = self.worker.poll()  # the chunk computed meanwhile, if any
            if res is not None:
                self._merge(res, ep.k)
            action, flagged = self._choose_action(ep)
            if self._act(ep, action, flagged):
                break
            # ask for the next chunk while this one still has actions to run (or to hand back)
            if self._pending_epoch is None and (
                ep.handing_back
                or (
                    self.cfg.async_inference
                    and not ep.supervising
                    and self.queue.remaining(ep.k) < self.request_below
                )
            ):
                self._submit(ep.obs, instruction, ep.k)
            self.clock.wait()
        return self._finish(ep)

    def _choose_action(self, ep: _Episode) -> tuple[np.ndarray, bool]:
        """This tick's action and whether the supervisor produced it."""
        if self.supervisor is not None:
            wants = self.supervisor.wants_control(ep.k / self.embodiment.control_hz, ep.obs)
            if wants and not ep.supervising:
                ep.supervising, ep.handing_back = True, False
                self._new_epoch()  # whatever the policy planned no longer applies
            elif not wants and ep.supervising:
                if not ep.handing_back:  # ask for a fresh chunk; the supervisor keeps the arm until it lands
                    ep.handing_back = True
                    self._new_epoch()
                if self.queue.remaining(ep.k) > 0:
                    ep.supervising = ep.handing_back = False
            if ep.supervising:
                ep.interventions += 1
                return np.asarray(self.supervisor.act(ep.obs), np.float32), True
        if not self.cfg.async_inference and self.queue.remaining(ep.k) == 0:
            # the baseline: stop the arm, wait for the chunk, resume on a re-anchored clock
            waited = time.perf_counter()
            res = self._request_blocking(ep.obs, ep.instruction, ep.k, self.cfg.first_chunk_timeout_s)
            if res is not None:
                self._merge(res, ep.k)
            ep.idle_s += time.perf_counter() - waited
            self.clock.reanchor()
        popped = self.queue.pop(ep.k)
        if popped is None:  # truly dry: hold the last target
            ep.starved += 1
            self.starved_ticks += 1
            ep.idle_s += 1.0 / self.hz
            return ep.hold, False
        action, version = popped
        ep.by_version[version] += 1
        return action, False

    def _act(self, ep: _Episode, action: np.ndarray, flagged: bool) -> bool:
        """Step the env with ``action`` and record the step; True when the episode is over."""
        action = np.clip(action, self._low, self._high)  # never send a target beyond the joint limits
        obs, reward, terminated, truncated, info = self.env.step(action)
        ep.reward += float(reward)
        if self.recorder is not None:
            t = (self.clock.tick_start - ep.t0) * self.cfg.time_scale  # control-time seconds
            self.recorder.record(ep.obs, action, flagged, t)
        ep.hold, ep.obs, ep.info = action, obs, info
        ep.k += 1
        if info.get("success"):
            ep.success = True
            ep.completion_s = time.perf_counter() - ep.t0
        return bool(terminated or truncated or (ep.max_steps is not None and ep.k >= ep.max_steps))

    def _finish(self, ep: _Episode) -> EpisodeResult:
        wall = time.perf_counter() - ep.t0
        self.clock.stop()
        self.worker.drain(self.cfg.first_chunk_timeout_s)  # nothing may plan on the world while it resets
        self._pending_epoch = None
        self._new_epoch()
        version = ep.by_version.most_common(1)[0][0] if ep.by_version else self.worker.version
        episode_id, success = None, ep.success
        if self.recorder is not None:
            # the env judges success in sim; on hardware (no "success" in info) the recorder asks the operator
            judged = ep.success if "success" in ep.info else None
            recorded = self.recorder.finish(judged, policy_version=version, reward=ep.reward)
            episode_id, success = recorded.meta.episode_id, recorded.meta.success
        self.episodes += 1
        self.successes += int(success)
        return EpisodeResult(
            episode_id=episode_id,
            success=success,
            steps=ep.k,
            wall_s=wall,
            completion_s=ep.completion_s,
            idle_s=ep.idle_s,
            starved=ep.starved,
            interventions=ep.interventions,
            takeovers=self.supervisor.takeovers if self.supervisor is not None else 0,
            policy_version=version,
            chunks=self.chunks - ep.chunks_at_start,
        )

    def stats(self) -> ActorStats:
        p50, p99 = self.worker.latency_ms()
        return ActorStats(
            clock=self.clock.stats(),
            episodes=self.episodes,
            successes=self.successes,
            starved_ticks=self.starved_ticks,
            stale_actions=self.stale_actions,
            chunks=self.chunks,
            inference_errors=self.worker.errors,
            inference_p50_ms=p50,
            inference_p99_ms=p99,
            queue_depth=len(self.queue),
            swaps=self.worker.swaps,
            policy_version=self.worker.version,
        )

    def heartbeat(self) -> Heartbeat:
        """The actor's health as the status board's heartbeat (read from other threads: counters only)."""
        c = self.clock.stats()
        return Heartbeat(
            robot_id=self.robot_id,
            embodiment=self.embodiment.name,
            task=self.task,
            policy_version=self.worker.version,
            cohort=self.cohort,
            loop_hz=c.rate_hz,
            target_hz=self.hz,
            jitter_p99_ms=c.jitter_p99_ms,
            queue_depth=len(self.queue),
            starved_ticks=self.starved_ticks,
            episodes_sent=self.spool.delivered if self.spool is not None else self.episodes,
            spool_backlog=len(self.spool.pending()) if self.spool is not None else 0,
            swaps=self.worker.swaps,
            rejected_versions=self.rejected_versions,
        )

    def close(self) -> None:
        """Stop the inference thread and close the policy client (the env belongs to the caller)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.worker.close()

    def __enter__(self) -> RobotActor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ pieces

    def _new_epoch(self) -> None:
        self._epoch += 1
        self.queue.clear()

    def _submit(self, obs: dict[str, Any], instruction: str, step: int) -> bool:
        sample = self.worker.client.sample_from(obs, instruction, self.embodiment.norm_tag)
        if self.worker.submit(sample, step, self._epoch):
            self._pending_epoch = self._epoch
            return True
        return False

    def _request_blocking(
        self, obs: dict[str, Any], instruction: str, step: int, timeout_s: float
    ) -> ChunkResult | None:
        """Submit and wait (first chunk; synchronous mode). Drops an in-flight result from an old epoch first."""
        if self._pending_epoch is not None:
            self.worker.drain(timeout_s)
            self._pending_epoch = None
        if not self._submit(obs, instruction, step):
            return None
        deadline = time.monotonic() + timeout_s
        res = None
        while res is None and not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            res = self.worker.wait(min(0.1, left))  # in slices: a SIGTERM must not wait out a slow server
        if res is None:  # still computing: it stays in flight and is collected (or dropped) later
            return None
        self._pending_epoch = None
        return res if res.chunk is not None else None

    def _abandon(self) -> None:
        """Stopped mid-episode: no outcome, so nothing is recorded."""
        self.clock.stop()
        if self.recorder is not None:
            self.recorder.discard()
        self.worker.drain(2.0)  # its result is for a world we are leaving; do not wait out a slow server
        self._pending_epoch = None
        self._new_epoch()
        return None

    def _merge(self, res: ChunkResult, now: int) -> None:
        self._pending_epoch = None  # a result came back: nothing is in flight any more
        if res.epoch != self._epoch or res.chunk is None:
            return  # computed for a world that has changed since (reset, takeover), or failed
        report = self.queue.merge(res.chunk, res.first_step, now, res.version)
        self.stale_actions += report.stale
        self.chunks += 1
