"""Hot swap on the actor side: keep one robot on the version the rollout assigns it, without stopping its loop.

A background thread wakes on a weight announcement (ZeroMQ) or every poll interval (missed announcements,
restarts, partitions), reads the rollout state from Redis, and when the robot's target version differs from
what it runs: fetches the version in chunks into a receive buffer it keeps, verifies sha256 and signature (a bad
version, or one that does not load into this model, is rejected, logged, counted in the heartbeat, recorded on
the status board, and never retried; the robot keeps running the champion meanwhile), copies it from that
buffer into a standby copy of the policy (no intermediate tensors), and hands that copy to the actor, which
switches between two chunks. The client it replaced is kept as the standby, so going back one version (a
rollback) is a swap with no fetch at all.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

from actors.policy_client import InProcessPolicyClient, PolicyClient
from actors.runtime import RobotActor
from fleet.status import StatusBoard, VersionEvent
from fleet.weights import WeightStore, WeightSubscriber, WeightVerificationError

log = logging.getLogger(__name__)


class WeightFollower:
    def __init__(
        self, actor: RobotActor, weights: WeightStore, board: StatusBoard, subscriber: WeightSubscriber
    ):
        self.actor = actor
        self.weights = weights
        self.board = board
        self.sub = subscriber
        self.rejected: set[int] = set()
        self.swaps = 0
        self.last_error = ""
        self._standby: PolicyClient | None = None  # the client swapped out last (instant rollback)
        # every fetched version lands here and is loaded from here: no fresh allocation (page faults) per swap
        self._receive = bytearray()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WeightFollower:
        self._thread = threading.Thread(target=self._run, name=f"weights-{self.actor.robot_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # stuck in a fetch or a swap: its socket is still in use, leave it
                log.warning(
                    "%s: weight follower still busy after 10 s; not waiting for it", self.actor.robot_id
                )
                return
        self.sub.close()
        if self._standby is not None:
            self._standby.close()

    def target(self) -> int:
        """The version the rollout assigns this robot; the champion instead while that is a version this robot
        refused (a canary that failed verification must not leave it on whatever it ran before: the seed
        policy, after a restart)."""
        st = self.board.rollout_state()
        target = st.target_version(self.actor.robot_id)
        return st.champion if target in self.rejected else target

    def _reject(self, version: int, reason: str, current: int) -> None:
        self.rejected.add(version)
        self.actor.rejected_versions = len(self.rejected)  # reported in the actor's heartbeats
        self.last_error = reason
        log.error("%s: rejected version %d: %s; still on v%d", self.actor.robot_id, version, reason, current)
        try:
            self.board.version_event(
                VersionEvent(
                    version=version,
                    kind="rejected",
                    embodiment=self.actor.embodiment.name,
                    robot=self.actor.robot_id,
                    detail=f"{self.actor.robot_id}: {reason}"[:500],
                )
            )
        except Exception as e:  # the board is a report; the rejection itself stands without it
            log.warning("%s: could not record the rejection of v%d: %s", self.actor.robot_id, version, e)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as e:  # Redis away, store unreachable: keep running the current version, retry
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning(
                    "%s: weight sync failed (%s); still on v%d",
                    self.actor.robot_id,
                    self.last_error,
                    self.actor.policy_version,
                )
            self._wait()

    def _wait(self) -> None:
        """Until a message arrives or the poll interval passes, in short slices so that stop() is prompt (and
        never closes the socket under a poll) however long the interval."""
        deadline = time.monotonic() + self.sub.poll_s
        dropped = self.sub.dropped
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.sub.wait(min(left, 0.2)) is not None or self.sub.dropped != dropped:
                return

    def sync(self) -> bool:
        """Bring the actor to its target version; True if a swap was made."""
        target = self.target()
        current = self.actor.policy_version
        if target == current or target in self.rejected:
            return False
        client = self.actor.worker.client
        if not isinstance(client, InProcessPolicyClient):  # a policy server holds the versions: re-route
            self.actor.swap_policy(None, target).result(timeout=60)
            self.swaps += 1
            return True
        standby = self._standby if self._standby is not None and self._standby.version == target else None
        if standby is None:
            try:
                _, payload = self.weights.fetch_into(target, self._receive)
            except WeightVerificationError as e:
                self._reject(target, str(e), current)
                return False
            standby = (
                self._standby
                if self._standby is not None
                else InProcessPolicyClient(copy.deepcopy(client.policy), version=current)
            )
            try:
                # checks format, architecture, names and shapes before touching a weight: on failure the
                # standby still holds its old version intact
                standby.load_weights(payload, target)
            except Exception as e:  # signed and intact but not for this model: retrying cannot fix it
                self._standby = standby  # still its old version, whole: reusable
                self._reject(target, f"does not load: {type(e).__name__}: {e}", current)
                return False
            finally:
                del payload  # the receive buffer can grow for a bigger version only with no view on it
        released = self.actor.swap_policy(standby, target).result(timeout=60)
        self._standby = released if isinstance(released, PolicyClient) and released is not standby else None
        self.swaps += 1
        log.info("%s: now running v%d (was v%d)", self.actor.robot_id, target, current)
        return True
