"""The actor's heartbeat: a background thread that posts the actor's health to the fleet's status board.

It runs beside the control loop, never in it: a slow or unreachable Redis delays a heartbeat, not a tick.
A failed beat is logged (once per outage) and retried at the next period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from fleet.status import Heartbeat, StatusBoard

log = logging.getLogger(__name__)


class HeartbeatSender:
    """Every ``period_s``, ``board.beat(snapshot())``."""

    def __init__(
        self,
        board: StatusBoard,
        snapshot: Callable[[], Heartbeat],
        period_s: float = 1.0,
        name: str = "heartbeat",
    ):
        if period_s <= 0:
            raise ValueError(f"heartbeat period must be > 0 s, got {period_s}")
        self.board = board
        self.snapshot = snapshot
        self.period_s = period_s
        self.sent = 0
        self.failures = 0
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> HeartbeatSender:
        self._thread.start()
        return self

    def beat(self) -> bool:
        """Send one heartbeat now; False if the board was unreachable."""
        try:
            self.board.beat(self.snapshot())
        except (redis.RedisError, OSError) as e:
            if not self._failing:  # once per outage, not once per period
                log.warning(
                    "heartbeat not delivered (%s: %s); retrying every %.1f s",
                    type(e).__name__,
                    e,
                    self.period_s,
                )
            self._failing = True
            self.failures += 1
            return False
        self._failing = False
        self.sent += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.period_s)

    def stop(self, final_beat: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if final_beat:
            self.beat()
