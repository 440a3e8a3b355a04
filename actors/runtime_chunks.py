"""The action queue between asynchronous inference and the control loop: actions keyed by absolute control step.

A chunk predicted from the observation of step ``s`` holds the actions for steps ``s, s+1, ..., s+H-1``. It
lands some steps later, at step ``now``; merging it:

1. latency compensation: its actions for steps before ``now`` are in the past and are dropped;
2. overlap: for steps the queue already holds (the tail of the previous chunk) the two plans are merged:
   - ``latest``: the new chunk replaces the old plan outright (most reactive, but the joint targets jump at
     the switch by however much the two plans disagree);
   - ``weighted`` (default): a temporal ensemble that cross-fades over the overlap, the new chunk's weight
     rising linearly from ~0 at the next executed step to ~1 at the end of the overlap, so the executed
     trajectory is continuous across chunk boundaries and still ends on the fresher plan;
3. the new chunk is the authority on the future: the queue ends where it ends.

Why ``weighted`` by default: actions are absolute joint targets, and a step change in targets is a velocity
spike; on a real Franka that trips libfranka's discontinuity reflexes and on the servo arms it is an audible
jerk. The cost is that for about half an overlap the arm follows a blend of an older plan, which at
queue_threshold 0.5 is a fraction of a second. ``latest`` remains available for embodiments or policies where
reaction time matters more than smoothness.

Each queued step also remembers the weights version whose chunk dominates it, so an episode can record the
version that produced most of its steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

MergeMode = Literal["latest", "weighted"]
MERGE_MODES: tuple[str, ...] = ("latest", "weighted")


@dataclass(frozen=True)
class MergeReport:
    """What one merge did."""

    stale: int  # actions of the new chunk that were already in the past (dropped)
    blended: int  # steps where the old and new plans overlapped
    queued: int  # actions in the queue after the merge


class ChunkQueue:
    """Queued actions for steps ``[start, start + len)``. Used from the control thread only."""

    def __init__(self, action_dim: int, mode: MergeMode = "weighted"):
        if mode not in MERGE_MODES:
            raise ValueError(f"merge mode {mode!r} unknown; choose one of {MERGE_MODES}")
        self.action_dim = action_dim
        self.mode = mode
        self._start = 0  # control step of _actions[0]
        self._actions = np.zeros((0, action_dim), np.float32)  # (N, A)
        self._versions = np.zeros(0, np.int64)  # (N,) weights version that dominates each queued action

    def __len__(self) -> int:
        return len(self._actions)

    def remaining(self, step: int) -> int:
        """Actions queued for ``step`` and later."""
        return max(0, self._start + len(self._actions) - max(step, self._start))

    def clear(self) -> None:
        self._actions = self._actions[:0]
        self._versions = self._versions[:0]

    def pop(self, step: int) -> tuple[np.ndarray, int] | None:
        """The action for ``step`` and its version, dropping everything before it; None if none is queued."""
        self._drop_before(step)
        if len(self._actions) == 0 or self._start != step:
            return None
        action, version = self._actions[0], int(self._versions[0])
        self._actions, self._versions = self._actions[1:], self._versions[1:]
        self._start = step + 1
        return action, version

    def peek(self, step: int) -> np.ndarray | None:
        """The action queued for ``step`` without removing it."""
        i = step - self._start
        return self._actions[i] if 0 <= i < len(self._actions) else None

    def merge(self, chunk: np.ndarray, first_step: int, now_step: int, version: int) -> MergeReport:
        """Merge a chunk predicted for steps ``first_step ...`` into the queue at control step ``now_step``.

        chunk: (H, A) actions in real units; first_step: the step whose observation it was predicted from.
        """
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk shape {chunk.shape}, expected (H, {self.action_dim})")
        stale = min(len(chunk), max(0, now_step - first_step))
        new = chunk[stale:]  # (H', A) for steps [begin, begin + H')
        begin = first_step + stale
        self._drop_before(begin)
        if len(new) == 0:  # the whole chunk is in the past: keep what is queued
            return MergeReport(stale=stale, blended=0, queued=self.remaining(now_step))
        new_versions = np.full(len(new), version, np.int64)
        # after _drop_before the old plan starts at or after `begin`: it overlaps new[offset:offset + L]
        offset = self._start - begin
        overlap = max(0, min(len(self._actions), len(new) - offset)) if len(self._actions) else 0
        if self.mode == "weighted" and overlap:
            # new weight (j + 1) / (L + 1), j = 0..L-1: mostly the old plan at the next step, mostly the new
            # one at the end of the overlap, and exactly the new one after it
            w = (np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1))[:, None]  # (L, 1)
            sl = slice(offset, offset + overlap)
            new = new.copy()
            new[sl] = w * new[sl] + (1.0 - w) * self._actions[:overlap]
            new_versions[sl] = np.where(w[:, 0] < 0.5, self._versions[:overlap], version)
        self._start = begin
        self._actions = new
        self._versions = new_versions
        return MergeReport(stale=stale, blended=overlap, queued=len(new))

    def _drop_before(self, step: int) -> None:
        n = step - self._start
        if n <= 0:
            return
        if n >= len(self._actions):
            self.clear()
        else:
            self._actions, self._versions = self._actions[n:], self._versions[n:]
        self._start = step
