"""Hot swap into a running actor, end to end on one machine.

A Franka `reach` actor runs the tiny MolmoAct2 in process in the MuJoCo sim and follows the version the rollout
assigns it through a `WeightFollower`, over a real redis-server, the real signed `WeightStore` and ZeroMQ
announcements on loopback. New versions go in between two chunks without missing a tick (compared with the
same actor's own no-swap ticks); a corrupted payload, a forged manifest and a version that does not fit the
model (the kept standby left whole) are refused, counted and never read again, while the robot runs the
champion; an actor that missed the announcement converges by polling; a rollback swaps back to the kept standby
without reading anything from the store.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from actors.embodiments import EMBODIMENTS
from actors.policy_client import InProcessPolicyClient
from actors.recorder import EpisodeRecorder
from actors.runtime import RobotActor
from actors.sim.env import FleetSimEnv
from actors.weight_follower import WeightFollower
from fleet.config import ActorsConfig
from fleet.episode import parse_encoded
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.rollout import RolloutController
from fleet.spool import Spool
from fleet.status import StatusBoard
from fleet.weights import Manifest, WeightAnnouncer, WeightStore, WeightSubscriber, sign
from policy.checkpoint import trainable_bytes

FRANKA = EMBODIMENTS["franka"]
ROBOT = "franka-hs"
SECRET = "hot-swap-test-secret"
EPISODE_S = 3.0  # control seconds per episode: 45 ticks at 15 Hz, room for a swap to land mid-episode
POLL_S = 0.5  # the follower's Redis poll interval where a test relies on polling


@pytest.fixture(autouse=True)
def actor_process_settings() -> Iterator[None]:
    """What fleet.cli_actor sets in an actor's process: torch's thread count and a 1 ms GIL hand-off."""
    cfg = ActorsConfig()
    threads, switch = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(cfg.torch_threads)
    sys.setswitchinterval(cfg.gil_switch_ms / 1000)
    yield
    torch.set_num_threads(threads)
    sys.setswitchinterval(switch)


class CountingStore(WeightStore):
    """The real weight store, counting reads per version: a rollback reads nothing, a refused version is read
    once and never again."""

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fetches: Counter[int] = Counter()

    def fetch_into(self, version: int, buffer: bytearray) -> tuple[Manifest, memoryview]:
        self.fetches[version] += 1  # `fetch` reads through here too
        return super().fetch_into(version, buffer)


def variant(payload: bytes, seed: int, scale: float = 0.02) -> bytes:
    """Another version of the same trainable tensors (small noise), header metadata kept so it loads."""
    header = int.from_bytes(payload[:8], "little")
    meta = json.loads(payload[8 : 8 + header]).get("__metadata__")
    g = torch.Generator().manual_seed(seed)
    tensors = {
        k: v + scale * v.std() * torch.randn(v.shape, generator=g)
        if v.is_floating_point() and v.numel() > 1
        else v
        for k, v in st_load(payload).items()
    }
    return st_save(tensors, metadata=meta)


def misfit(payload: bytes) -> bytes:
    """The same tensors and metadata with the last matrix flattened (all its bytes still there): signed and
    intact, but not for this model."""
    header = int.from_bytes(payload[:8], "little")
    meta = json.loads(payload[8 : 8 + header]).get("__metadata__")
    tensors = st_load(payload)
    last = max(k for k, v in tensors.items() if v.dim() == 2)
    tensors[last] = tensors[last].flatten()
    return st_save(tensors, metadata=meta)


class TimedFollower(WeightFollower):
    """The real follower, noting when each sync started and whether it swapped (to tell polling from waking)."""

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.syncs: list[tuple[float, bool]] = []  # (monotonic start, swapped)

    def sync(self) -> bool:
        t = time.monotonic()
        swapped = super().sync()
        self.syncs.append((t, swapped))
        return swapped


class Fleet:
    """The fleet side of a swap: publish (the learner), set the rollout state (the gate), announce."""

    def __init__(self, redis_server: EmbeddedRedis, store: ReplayStore, root: Path):
        self.client = redis_server.client()
        self.weights = CountingStore(str(root / "weights"), SECRET, self.client)
        self.board = StatusBoard(self.client)
        self.rollout = RolloutController(store, self.board)
        self.announcer = WeightAnnouncer("tcp://127.0.0.1:0")

    def publish(self, payload: bytes, parent: int | None = None) -> Manifest:
        return self.weights.publish(payload, parent=parent, mode="full")

    def promote(self, m: Manifest, announce: bool = True) -> None:
        self.rollout.promote(m.version)  # the state first: an announcement only wakes followers up
        if announce:
            self.announcer.announce(m)

    def subscriber(
        self, endpoint: str | None = "", poll_s: float = 30.0, signed: bool = True
    ) -> WeightSubscriber:
        """A follower's ear; "" connects to this fleet's announcer, None has no socket (polling only). ``signed``:
        it drops announcements the fleet did not sign, and replays of older ones."""
        endpoint = self.announcer.endpoint if endpoint == "" else endpoint
        return WeightSubscriber(endpoint, poll_s=poll_s, secret=SECRET if signed else None)

    def close(self) -> None:
        self.announcer.close()
        self.client.close()


@pytest.fixture
def fleet(redis_server: EmbeddedRedis, store: ReplayStore, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(redis_server, store, tmp_path)
    yield f
    f.close()


class ActorThread:
    """The actor's control loop on its own thread (the env is made there: its renderer's context is bound to
    the thread that runs it), recording into a spool that is not delivered, so every episode stays on disk."""

    def __init__(self, client: InProcessPolicyClient, spool_dir: Path):
        self.client = client
        self.spool = Spool(spool_dir, deliver=lambda blob: None)
        self.actor: RobotActor | None = None
        self.follower: TimedFollower | None = None
        self.error: BaseException | None = None
        self.episodes: list[int] = []  # policy version of each finished episode, as the loop saw it
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="actor-under-test", daemon=True)

    def _run(self) -> None:
        env = FleetSimEnv("franka", "reach", image_size=64)
        try:
            recorder = EpisodeRecorder(
                self.spool,
                FRANKA.schema,
                robot_id=ROBOT,
                task="reach",
                fps=FRANKA.control_hz,
                record_depth=False,
            )
            self.actor = RobotActor(
                ROBOT,
                FRANKA,
                "reach",
                env,
                self.client,
                ActorsConfig(max_episode_s=EPISODE_S),
                recorder=recorder,
            )
            self._ready.set()
            self.actor.run(on_episode=lambda r: self.episodes.append(r.policy_version))
        except BaseException as e:  # reported to the test by stop()
            self.error = e
        finally:
            self._ready.set()
            if self.actor is not None:
                self.actor.close()
            env.close()

    def start(self) -> RobotActor:
        self._thread.start()
        assert self._ready.wait(60) and self.actor is not None, f"actor did not start: {self.error!r}"
        return self.actor

    def follow(self, fleet: Fleet, sub: WeightSubscriber) -> TimedFollower:
        assert self.actor is not None
        self.follower = TimedFollower(self.actor, fleet.weights, fleet.board, sub).start()
        return self.follower

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.actor is not None:
            self.actor.stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "actor thread did not stop"
        if self.error is not None:
            raise self.error

    def recorded_versions(self) -> list[int]:
        """The policy version stamped into each spooled episode, oldest first."""
        return [parse_encoded(p.read_bytes()).meta.policy_version for p in self.spool.pending()]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[[InProcessPolicyClient], tuple[ActorThread, RobotActor]]]:
    """Starts an actor thread running ``client``; returns it and its RobotActor."""
    started: list[ActorThread] = []

    def start(client: InProcessPolicyClient) -> tuple[ActorThread, RobotActor]:
        a = ActorThread(client, tmp_path / "spool")
        started.append(a)
        return a, a.start()

    yield start
    for a in started:  # also when the test failed: no loop outlives its test
        a.stop()


def until(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait for ``cond``; returns the seconds it took, fails the test with ``what`` on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - t0


def mid_episode(a: ActorThread, at_step: int = 4) -> Callable[[], bool]:
    """True while an episode is being recorded and has run at least ``at_step`` ticks (a swap asked now lands
    inside the episode, between two of its chunks)."""
    rec = a.actor.recorder if a.actor is not None else None
    assert rec is not None
    return lambda: rec.recording and at_step <= rec.steps <= FRANKA.chunk_horizon


def misses(actor: RobotActor) -> np.ndarray:
    """(ticks, missed) so far: missed = ticks that overran the next deadline + deadlines skipped + ticks whose
    queue ran dry (the arm held still waiting for the policy)."""
    c = actor.clock
    return np.array([c.ticks, c.overruns + c.skipped + actor.starved_ticks])


def seeded_policy() -> tuple[InProcessPolicyClient, bytes]:
    """The tiny policy running as v1 and v1's payload (its trainable tensors)."""
    client = InProcessPolicyClient.tiny(seed=0, version=1)
    return client, trainable_bytes(client.policy)


# ---------------------------------------------------------------------------------------------- tests


def test_versions_swap_in_between_chunks_without_a_missed_tick_and_roll_back_from_the_standby(
    fleet: Fleet, running: Callable[[InProcessPolicyClient], tuple[ActorThread, RobotActor]]
) -> None:
    client, v1_bytes = seeded_policy()
    v1 = fleet.publish(v1_bytes)
    fleet.promote(v1, announce=False)
    payloads = {2: variant(v1_bytes, seed=2), 3: variant(v1_bytes, seed=3)}
    a, actor = running(client)
    # a long poll interval: each swap below is woken by an announcement, not by polling; unsigned (as the
    # orchestrator builds it), so announcing an older version's manifest wakes it for the rollback too
    follower = a.follow(fleet, fleet.subscriber(poll_s=30.0, signed=False))

    # the no-swap baseline: the same actor's ticks over a full episode and a half
    until(lambda: len(a.episodes) >= 1, 30, "the first episode")
    base0 = misses(actor)
    until(lambda: len(a.episodes) >= 2, 30, "the baseline episode")
    until(mid_episode(a, at_step=8), 30, "the middle of an episode")
    baseline = misses(actor) - base0

    swapped = np.zeros(2, np.int64)
    waits = []
    episode = len(a.episodes)  # the episode each swap lands in: one per swap, so every version runs a while
    for target, rollback in ((2, False), (3, False), (2, True)):  # two new versions, then back to the first
        until(
            lambda e=episode: len(a.episodes) >= e and mid_episode(a)(), 30, "the start of the next episode"
        )
        episode = len(a.episodes) + 1
        before = misses(actor)
        fetches = sum(fleet.weights.fetches.values())
        if rollback:  # the gate puts the previous champion back (and, here, says so at once)
            fleet.rollout.rollback(to_version=target)
            fleet.announcer.announce(fleet.weights.manifest(target))
        else:
            m = fleet.publish(payloads.pop(target), parent=actor.policy_version)
            assert m.version == target
            fleet.promote(m)
        waits.append(until(lambda t=target: actor.policy_version == t, 10, f"v{target} running"))
        at_swap = actor.clock.ticks
        # the new version's first chunk has been merged and run, and the one after it requested
        until(
            lambda n=at_swap: actor.clock.ticks >= n + 2 * FRANKA.chunk_horizon, 30, "chunks after the swap"
        )
        swapped += misses(actor) - before
        read = sum(fleet.weights.fetches.values()) - fetches
        assert read == (0 if rollback else 1), (
            f"v{target}: {read} reads from the store (rollback: {rollback})"
        )
    until(lambda e=episode: len(a.episodes) >= e, 30, "the episode the rollback landed in")
    a.stop()

    # zero ticks missed because of a swap: the swap windows miss no more than the baseline's rate allows (plus
    # one for a loaded machine); a swap that blocked the loop for one period would miss at least one per swap
    allowed = 1 + 2 * baseline[1] * swapped[0] / max(1, baseline[0])
    assert swapped[1] <= allowed, (
        f"{swapped[1]} missed ticks in {swapped[0]} ticks around 3 swaps; the no-swap baseline missed "
        f"{baseline[1]} in {baseline[0]}"
    )
    assert follower.swaps == 3 and actor.stats().swaps == 3 and follower.rejected == set()
    assert fleet.weights.fetches == Counter({2: 1, 3: 1}), "v1 never read (running), v2 read once"
    assert max(waits) < 5.0, f"announcement to swap took {waits}"
    # the version stamped into the recorded episodes follows the swaps, in order
    stamped = a.recorded_versions()
    assert stamped == a.episodes and stamped[:2] == [1, 1] and stamped[-1] == 2, stamped
    changes = [v for i, v in enumerate(stamped) if i == 0 or v != stamped[i - 1]]
    # in swap order; on a slow machine a version may run under half of every episode it touches
    order = iter([1, 2, 3, 2])
    assert changes[0] == 1 and changes[-1] == 2 and all(v in order for v in changes), stamped
    # the arm now runs v2's exact weights
    running_now = st_load(trainable_bytes(actor.worker.client.policy))
    v2_tensors = st_load(fleet.weights.fetch(2)[1])
    assert running_now.keys() == v2_tensors.keys()
    assert all(torch.equal(running_now[k], v2_tensors[k]) for k in v2_tensors)


def test_corrupted_and_forged_versions_are_refused_and_never_read_again(
    fleet: Fleet, running: Callable[[InProcessPolicyClient], tuple[ActorThread, RobotActor]]
) -> None:
    client, seed_bytes = seeded_policy()
    client.version = 0  # the seed policy an actor starts from (its checkpoint), before any version
    champion = fleet.publish(variant(seed_bytes, seed=1))
    fleet.promote(champion, announce=False)
    # (b) a canary with one flipped byte in its stored payload (the sha256 must catch it), put on this robot
    # while it was down: when it comes up it must refuse the canary and run the champion, not stay on its seed
    corrupt = fleet.publish(variant(seed_bytes, seed=2), parent=champion.version)
    path = Path(fleet.weights._path(corrupt.version, "safetensors"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fleet.rollout.start_canary(corrupt.version, {"franka": [ROBOT]})
    a, actor = running(client)
    follower = a.follow(fleet, fleet.subscriber(poll_s=POLL_S))
    until(lambda: actor.policy_version == champion.version, 15, "the champion running")
    assert follower.rejected == {corrupt.version} and "sha256" in follower.last_error

    # (e) the champion's manifest re-signed with another secret (its payload swapped for one of the same size)
    forged = fleet.publish(variant(seed_bytes, seed=3), parent=champion.version)
    other = variant(seed_bytes, seed=4)
    Path(fleet.weights._path(forged.version, "safetensors")).write_bytes(other)
    fake = forged.model_copy(update={"sha256": hashlib.sha256(other).hexdigest()})
    fleet.client.hset(
        "mf:weights:manifests", str(forged.version), sign(fake, b"not-the-secret").model_dump_json()
    )
    fleet.promote(forged)
    until(lambda: forged.version in follower.rejected, 10, "the forged version refused")
    assert "signature" in follower.last_error

    # (f) signed and intact, but a tensor of another shape: refused at load, before a weight of the standby (the
    # seed policy, kept for a rollback) was touched, and that standby kept
    standby = follower._standby
    assert isinstance(standby, InProcessPolicyClient)
    kept = {n: p.detach().clone() for n, p in standby.policy.named_parameters()}
    unfit = fleet.publish(misfit(variant(seed_bytes, seed=6)), parent=champion.version)
    fleet.promote(unfit)
    until(lambda: unfit.version in follower.rejected, 10, "the unfit version refused")
    assert "does not load" in follower.last_error and "do not fit" in follower.last_error
    assert follower._standby is standby and standby.version == 0
    assert all(torch.equal(p, kept[n]) for n, p in standby.policy.named_parameters())

    chunks, ticks = actor.chunks, actor.clock.ticks
    time.sleep(4 * POLL_S)  # several polls with the refused version still the target
    assert actor.policy_version == champion.version and follower.swaps == 1  # the old version keeps running
    assert actor.chunks > chunks and actor.clock.ticks > ticks and actor.stats().inference_errors == 0
    refused = (corrupt.version, forged.version, unfit.version)
    refused_reads = {v: fleet.weights.fetches[v] for v in refused}
    assert refused_reads == dict.fromkeys(refused, 1), "a refused version was read again"
    # counted where the fleet sees it: the actor's heartbeat, the status board
    assert actor.rejected_versions == 3 and actor.heartbeat().rejected_versions == 3
    events = [(e.version, e.embodiment) for e in fleet.board.version_events() if e.kind == "rejected"]
    assert events == [(v, "franka") for v in refused]

    # the follower is still at work: the next good version goes in
    good = fleet.publish(variant(seed_bytes, seed=5), parent=champion.version)
    fleet.promote(good)
    until(lambda: actor.policy_version == good.version, 10, "the next good version running")
    until(lambda: len(a.episodes) >= 2, 30, "two episodes")
    a.stop()
    assert fleet.weights.fetches == Counter({v: 1 for v in (1, 2, 3, 4, 5)})
    # no episode was ever run by a refused version
    assert set(a.recorded_versions()) <= {0, champion.version, good.version}


@pytest.mark.parametrize("missed", ["restart", "partition", "no_socket"])
def test_an_actor_that_missed_the_announcement_converges_by_polling(
    fleet: Fleet, running: Callable[[InProcessPolicyClient], tuple[ActorThread, RobotActor]], missed: str
) -> None:
    client, v1_bytes = seeded_policy()
    v1 = fleet.publish(v1_bytes)
    fleet.promote(v1, announce=False)
    a, actor = running(client)
    until(lambda: actor.clock.ticks > 5, 30, "the loop running")
    v2 = fleet.publish(variant(v1_bytes, seed=2), parent=1)
    if missed == "restart":  # the follower (re)starts after the announcement went out: it syncs on start
        fleet.promote(v2)
        time.sleep(0.2)
        follower = a.follow(fleet, fleet.subscriber(poll_s=POLL_S))
        until(  # the sync is noted once it returns, a moment after the actor runs v2
            lambda: actor.policy_version == v2.version and follower.syncs, 30, "v2 running after the restart"
        )
        assert follower.syncs[0][1], "the first sync after the restart did not swap"
    else:  # following all along, but deaf: a PUB endpoint nobody announces on, or no socket at all
        silent = WeightAnnouncer("tcp://127.0.0.1:0")
        try:
            follower = a.follow(
                fleet, fleet.subscriber(silent.endpoint if missed == "partition" else None, poll_s=POLL_S)
            )
            until(lambda: len(follower.syncs) >= 2, 10 * POLL_S, "a poll after the first sync")
            assert follower.swaps == 0
            promoted = time.monotonic()
            fleet.promote(v2)
            until(  # the sync is noted once it returns, a moment after the actor runs v2
                lambda: actor.policy_version == v2.version and any(s for _, s in follower.syncs),
                30,
                "v2 running after polling",
            )
        finally:
            silent.close()
        # noticed at the next poll: the sync that swapped began within a poll interval (plus a loaded machine's
        # scheduling slack); fetching, verifying and loading take what they take after that
        noticed = next(t for t, swapped in follower.syncs if swapped) - promoted
        assert noticed <= 2 * POLL_S, f"noticed {noticed:.2f} s after the promotion, polling every {POLL_S} s"
    assert follower.swaps == 1 and fleet.weights.fetches == Counter({v2.version: 1})
