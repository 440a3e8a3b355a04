"""The control loop's clock: ticks at absolute deadlines and measures how well it keeps them.

Deadline k is ``t0 + k * period``, never ``last wake-up + period``: a late tick does not push every later tick
back, so the rate cannot drift however the work per tick varies. A tick that finishes after the next deadline
is an overrun; the loop then runs the next tick at once (catching up), and when it is a whole period or more
behind it skips the missed deadlines instead of firing a burst of back-to-back ticks, which on an arm would
replay stale targets in a rush.

Jitter is the wake-up lateness (actual start of a tick minus its deadline), kept over a sliding window so a
long run reports its recent p50/p99 rather than its history.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClockStats:
    """What the clock measured since it was created (rate) and over its recent window (jitter)."""

    ticks: int  # ticks run
    rate_hz: float  # achieved ticks per second of running time (pauses between episodes excluded)
    target_hz: float  # the rate asked for (after time scaling)
    jitter_p50_ms: float  # median wake-up lateness over the recent window, ms
    jitter_p99_ms: float  # 99th percentile wake-up lateness over the recent window, ms
    jitter_max_ms: float  # worst lateness in the recent window, ms
    overruns: int  # ticks whose work ran past the next deadline
    skipped: int  # deadlines skipped because the loop was a whole period or more behind


class ControlClock:
    """Absolute-deadline ticker. ``start()`` at the beginning of a run, ``wait()`` at the end of every tick."""

    def __init__(
        self,
        hz: float,
        window: int = 4096,
        spin_s: float = 0.0,
        now: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if hz <= 0:
            raise ValueError(f"control rate must be > 0 Hz, got {hz}")
        self.hz = hz
        self.period = 1.0 / hz
        self.spin_s = spin_s  # busy-wait the last spin_s before a deadline: tighter wake-ups for a little CPU
        self._now = now
        self._sleep = sleep
        self._late: deque[float] = deque(maxlen=window)  # recent wake-up lateness, s
        self._t0 = 0.0  # deadline origin: deadline k is _t0 + k * period
        self._seg_start = 0.0  # when the current run started (reanchor moves _t0, not this)
        self._k = 0  # index of the deadline the current tick started at
        self._running_s = 0.0  # running time of finished segments (between start/stop), s
        self._segment_ticks = 0
        self.ticks = 0
        self.overruns = 0
        self.skipped = 0
        self.tick_start = 0.0  # when the current tick started (clock time)

    def start(self) -> float:
        """Begin a run: the first tick starts now. Returns the start time."""
        self._t0 = self._seg_start = self._now()
        self._k = 0
        self._segment_ticks = 1
        self.tick_start = self._t0
        self.ticks += 1
        self._late.append(0.0)
        return self._t0

    def wait(self) -> float:
        """End the current tick: sleep until the next deadline. Returns the new tick's lateness, s."""
        now = self._now()
        nxt = self._k + 1
        deadline = self._t0 + nxt * self.period
        if now > deadline:
            self.overruns += 1
            behind = int((now - deadline) // self.period)
            if behind >= 1:  # a whole period or more behind: skip those deadlines rather than burst
                self.skipped += behind
                nxt += behind
                deadline = self._t0 + nxt * self.period
        else:
            remaining = deadline - now - self.spin_s
            if remaining > 0:
                self._sleep(remaining)
            while self._now() < deadline:  # the spin tail (or the sleep came back early)
                pass
        self._k = nxt
        self.tick_start = self._now()
        late = max(0.0, self.tick_start - deadline)
        self._late.append(late)
        self.ticks += 1
        self._segment_ticks += 1
        return late

    def reanchor(self) -> None:
        """Restart the deadlines from now after a deliberate pause (synchronous inference) without counting
        the pause as overruns; the pause still counts against the achieved rate."""
        now = self._now()
        self._t0 = now - self._k * self.period
        self.tick_start = now

    def stop(self) -> None:
        """End a run (an episode): its time counts towards the achieved rate, the gap to the next does not."""
        if self._segment_ticks:
            self._running_s += self._segment_s()
            self._segment_ticks = 0

    def _segment_s(self) -> float:
        # a run of n on-time ticks spans n periods: count up to the next deadline, or to now if later
        return max(self._now(), self._t0 + (self._k + 1) * self.period) - self._seg_start

    @property
    def step(self) -> int:
        """Deadline index of the current tick since start (counts skipped deadlines)."""
        return self._k

    def stats(self) -> ClockStats:
        # list() copies the deque in one C call: safe while the control thread appends (heartbeats read this)
        late = np.asarray(list(self._late) or [0.0], dtype=np.float64) * 1e3
        running = self._running_s + (self._segment_s() if self._segment_ticks else 0.0)
        return ClockStats(
            ticks=self.ticks,
            rate_hz=self.ticks / running if running > 0 else 0.0,
            target_hz=self.hz,
            jitter_p50_ms=float(np.percentile(late, 50)),
            jitter_p99_ms=float(np.percentile(late, 99)),
            jitter_max_ms=float(late.max()),
            overruns=self.overruns,
            skipped=self.skipped,
        )
