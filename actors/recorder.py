"""`EpisodeRecorder`: every control step into the episode schema, and the finished episode onto disk.

Per step it keeps what the robot saw (every camera, joint state, optionally the main camera's depth), what it
did (the executed action, whether the supervisor produced it) and when (control-time seconds since the
episode began). At the end it attaches the outcome (the env's success, or an operator's label on hardware),
the intervention count and the timing, encodes the episode once, validates the encoded bytes exactly as the
replay store will, and puts them into the spool. `finish` returns only after the spool has fsync'd the file:
from then on a SIGKILL of the actor cannot lose the episode (the next spool over that directory re-sends it).
An episode that fails validation is a bug in the actor: it raises, it is not silently dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleet.episode import (
    EmbodimentSchema,
    Episode,
    EpisodeMeta,
    encode_episode,
    parse_encoded,
    validate_encoded,
)
from fleet.spool import Spool

log = logging.getLogger(__name__)

OutcomeLabel = Callable[[Episode], bool]  # hardware: ask the operator whether the episode succeeded


class EpisodeRecorder:
    """Records one episode at a time for one robot."""

    def __init__(
        self,
        spool: Spool,
        schema: EmbodimentSchema,
        *,
        robot_id: str,
        task: str,
        fps: float,
        source: Literal["fleet", "eval", "demo", "rehearsal"] = "fleet",
        record_depth: bool = True,
        label_outcome: OutcomeLabel | None = None,
    ):
        self.spool = spool
        self.schema = schema
        self.robot_id = robot_id
        self.task = task
        self.fps = fps
        self.source = source
        self.record_depth = record_depth
        self.label_outcome = label_outcome
        self.recorded = 0  # episodes spooled by this recorder
        self.last_path: Path | None = None
        self._reset()

    def _reset(self) -> None:
        self._open = False
        self._images: dict[str, list[np.ndarray]] = {c: [] for c in self.schema.cameras}
        self._depth: list[np.ndarray] = []
        self._state: list[np.ndarray] = []
        self._action: list[np.ndarray] = []
        self._intervention: list[bool] = []
        self._timestamp: list[float] = []
        self._instruction = ""
        self._seed: int | None = None
        self._start_time = 0.0

    @property
    def steps(self) -> int:
        return len(self._state)

    @property
    def recording(self) -> bool:
        return self._open

    def begin(self, instruction: str, seed: int | None = None) -> None:
        """Start a new episode (dropping any unfinished one)."""
        if self._open and self.steps:
            log.warning("%s: discarding an unfinished episode of %d steps", self.robot_id, self.steps)
        self._reset()
        self._open = True
        self._instruction = instruction
        self._seed = seed
        self._start_time = time.time()

    def record(self, obs: Mapping[str, Any], action: np.ndarray, intervention: bool, t: float) -> None:
        """One step: the observation the action was chosen from, the executed action, who chose it, and the
        control time ``t`` (s since the episode began)."""
        if not self._open:
            raise RuntimeError("record() before begin()")
        images = obs["images"]
        for cam in self.schema.cameras:
            # a copy: hardware drivers may reuse their frame buffers (27 KB at 96 px, nothing next to a tick)
            self._images[cam].append(np.array(images[cam], dtype=np.uint8))
        if self.record_depth and obs.get("depth") is not None:
            self._depth.append(np.array(obs["depth"], dtype=np.float32))
        self._state.append(np.asarray(obs["state"], np.float32).copy())
        self._action.append(np.asarray(action, np.float32).copy())
        self._intervention.append(bool(intervention))
        self._timestamp.append(float(t))

    def discard(self) -> None:
        """Drop the current episode (the actor was stopped mid-episode: it has no outcome)."""
        self._reset()

    def build(self, success: bool, *, policy_version: int, reward: float = 0.0) -> Episode:
        n = self.steps
        if n == 0:
            raise ValueError("an episode needs at least one step")
        end = time.time()
        flags = np.asarray(self._intervention, bool)  # (T,)
        depth = None
        if self.record_depth and len(self._depth) == n:
            depth = np.stack(self._depth).astype(np.float32, copy=False)  # (T, H, W) metres
        meta = EpisodeMeta(
            robot_id=self.robot_id,
            embodiment=self.schema.name,
            task=self.task,
            instruction=self._instruction,
            policy_version=policy_version,
            fps=self.fps,
            success=bool(success),
            reward=float(reward),
            interventions=int(flags.sum()),
            duration_s=float(self._timestamp[-1] + 1.0 / self.fps),
            start_time=self._start_time,
            end_time=max(end, self._start_time),
            seed=self._seed,
            source=self.source,
        )
        return Episode(
            meta=meta,
            images={c: np.stack(self._images[c]) for c in self.schema.cameras},  # (T, H, W, 3) uint8
            state=np.stack(self._state),  # (T, S)
            action=np.stack(self._action),  # (T, A)
            intervention=flags,
            timestamp=np.asarray(self._timestamp, np.float64),  # (T,) control-time s
            depth=depth,
        )

    def finish(self, success: bool | None, *, policy_version: int, reward: float = 0.0) -> Episode:
        """Attach the outcome, validate, and spool durably. ``success=None`` asks ``label_outcome``."""
        if not self._open:
            raise RuntimeError("finish() before begin()")
        if success is None:
            if self.label_outcome is None:
                raise ValueError("no success signal from the env and no operator label: pass label_outcome")
            success = bool(
                self.label_outcome(self.build(False, policy_version=policy_version, reward=reward))
            )
        episode = self.build(success, policy_version=policy_version, reward=reward)
        blob = encode_episode(
            episode, chunk_steps=self.spool.chunk_steps
        )  # once: validated and spooled as is
        validate_encoded(parse_encoded(blob), {self.schema.name: self.schema})
        self.last_path = self.spool.put(blob)  # returns after fsync: the episode is safe from here
        self.recorded += 1
        self._reset()
        return episode
