"""Bounded, cached reads of the store's outcome buckets, rolled up into display intervals.

The store keeps outcome counts per raw time bucket (``replay.stats_bucket_s``, 60 s by default) and per
(embodiment, task, version, robot). Months of that are tens of thousands of buckets, too many to read on every
poll, so the reader:
- rolls raw buckets up into intervals of the display width ``W`` (a multiple of the raw width), one small
  per-dimension table per interval, and keeps them in an LRU cache keyed by (W, interval start);
- learns which intervals changed from the store's new-episode event stream (each event carries the episode's end
  time), so a late episode from a spool backlog invalidates exactly its interval; if it falls too far behind the
  stream, or the stream was trimmed past it, it drops the whole cache;
- reads at most ``max_raw_buckets`` raw buckets per request, newest first, and reports ``partial`` when older
  intervals are still missing: the next poll continues from the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from fleet.config import DashboardConfig
from fleet.replay import ReplayStore

DIMS = ("all", "embodiment", "task", "version", "robot", "embodiment_version")
# one accumulator per (dimension, value): [episodes, successes, interventions, steps, bytes]
N, OK, INT, STEPS, BYTES = range(5)
Rollup = dict[str, dict[str, list[int]]]
# new episodes read per poll to find changed intervals; more than that: drop the cache
EVENTS_PER_SYNC = 20_000


@dataclass
class Window:
    width: int  # seconds per interval
    starts: list[int]  # interval start times, oldest first
    rollups: dict[int, Rollup]  # start -> rollup, for intervals read completely
    partial: bool  # some intervals (the oldest) are not read yet

    def counts(self, dim: str, value: str) -> list[list[int] | None]:
        """Per interval: the accumulator of ``dim=value`` (zeros where nothing happened), None where unread."""
        out: list[list[int] | None] = []
        for t0 in self.starts:
            roll = self.rollups.get(t0)
            out.append(None if roll is None else roll.get(dim, {}).get(value, [0, 0, 0, 0, 0]))
        return out

    def totals(self, dim: str) -> dict[str, list[int]]:
        """Sum over the window per value of ``dim``."""
        tot: dict[str, list[int]] = {}
        for roll in self.rollups.values():
            for value, acc in roll.get(dim, {}).items():
                t = tot.setdefault(value, [0, 0, 0, 0, 0])
                for i, v in enumerate(acc):
                    t[i] += v
        return tot


def add_row(roll: Rollup, row: dict[str, object]) -> None:
    vals = (row["episodes"], row["successes"], row["interventions"], row["steps"], row["bytes"])
    keys = (
        ("all", "all"),
        ("embodiment", row["embodiment"]),
        ("task", row["task"]),
        ("version", str(row["version"])),
        ("robot", row["robot"]),
        # the rollout panel compares versions within an embodiment
        ("embodiment_version", f"{row['embodiment']}|{row['version']}"),
    )
    for dim, value in keys:
        acc = roll.setdefault(dim, {}).setdefault(str(value), [0, 0, 0, 0, 0])
        for i, v in enumerate(vals):
            acc[i] += int(v)  # type: ignore[call-overload]


def _stream_id(s: str) -> tuple[int, int]:
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


class OutcomeReader:
    """Rolled-up outcome counts for time windows. Thread-safe (one lock: reads are short and bounded)."""

    def __init__(self, store: ReplayStore, cfg: DashboardConfig):
        self.store = store
        self.cfg = cfg
        self.base = store.cfg.stats_bucket_s
        self._cache: OrderedDict[tuple[int, int], Rollup] = OrderedDict()
        self._widths: set[int] = set()
        self._last_event: str | None = None  # newest event id seen; None: not synced yet
        self._lock = threading.Lock()

    def window(self, width: int, since: float, until: float) -> Window:
        if width % self.base:
            raise ValueError(f"width {width} s is not a multiple of the store's {self.base} s buckets")
        first, last = int(since // width * width), int(until // width * width)
        starts = list(range(first, last + 1, width))
        with self._lock:
            self._sync()
            partial = self._fill(width, starts)
            rollups = {}
            for t0 in starts:
                roll = self._cache.get((width, t0))
                if roll is not None:
                    self._cache.move_to_end((width, t0))
                    rollups[t0] = roll
        return Window(width, starts, rollups, partial)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._widths.clear()

    # ------------------------------------------------------------------------------------------ cache upkeep

    def _sync(self) -> None:
        """Drop the cached intervals that new episodes (by their end time) landed in."""
        r, key = self.store.r, f"{self.store.p}:events"
        if self._last_event is None:
            newest = r.xrevrange(key, count=1)
            self._last_event = newest[0][0].decode() if newest else "0-0"
            return
        entries = r.xrange(key, min=f"({self._last_event}", count=EVENTS_PER_SYNC + 1)
        oldest = r.xrange(key, count=1)
        # the event we saw last was trimmed away: others after it may have gone too
        lost = (
            bool(oldest)
            and self._last_event != "0-0"
            and _stream_id(oldest[0][0].decode()) > _stream_id(self._last_event)
        )
        wiped = not oldest and self._last_event != "0-0"
        if len(entries) > EVENTS_PER_SYNC or lost or wiped:
            # fell behind the stream (or it was trimmed / flushed): start over from what is stored now
            self._cache.clear()
            self._widths.clear()
            newest = r.xrevrange(key, count=1)
            self._last_event = newest[0][0].decode() if newest else "0-0"
            return
        for eid, fields in entries:
            t = float(fields[b"t"])
            bucket = int(t // self.base * self.base)
            for w in self._widths:
                self._cache.pop((w, bucket // w * w), None)
            self._last_event = eid.decode()

    def _fill(self, width: int, starts: list[int]) -> bool:
        """Read missing intervals, newest runs first, within the raw-bucket budget. True if some stay missing."""
        missing = [t0 for t0 in starts if (width, t0) not in self._cache]
        runs: list[list[int]] = []
        for t0 in missing:
            if runs and runs[-1][-1] + width == t0:
                runs[-1].append(t0)
            else:
                runs.append([t0])
        budget = self.cfg.max_raw_buckets
        self._widths.add(width)
        for run in reversed(runs):
            if budget <= 0:
                return True
            lo, hi = run[0], run[-1] + width - self.base
            rows = self.store.outcome_buckets(since=lo, until=hi, max_buckets=budget)
            fresh: dict[int, Rollup] = {t0: {} for t0 in run}
            buckets = set()
            for row in rows:
                b = int(row["bucket"])  # type: ignore[call-overload]
                buckets.add(b)
                add_row(fresh[b // width * width], row)
            budget -= len(buckets)
            truncated = budget <= 0 and len(buckets) > 0
            # a truncated read holds the newest buckets only: the interval of the oldest one may be incomplete
            complete_from = (min(buckets) // width * width + width) if truncated else lo
            for t0, roll in fresh.items():
                if t0 >= complete_from:
                    self._put((width, t0), roll)
            if truncated:
                return True
        return False

    def _put(self, key: tuple[int, int], roll: Rollup) -> None:
        self._cache[key] = roll
        self._cache.move_to_end(key)
        while len(self._cache) > self.cfg.cache_intervals:
            self._cache.popitem(last=False)
