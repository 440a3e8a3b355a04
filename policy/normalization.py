"""Per-embodiment normalisation statistics in the released `norm_stats.json` layout.

The file is keyed by embodiment tag (the only place a robot appears in the model):

    {"norm_mode": "q01_q99",
     "metadata_by_tag": {"franka": {"action_stats": {"mean": [...], "std": [...], "min": [...], "max": [...],
                                                     "q01": [...], "q99": [...]},
                                    "state_stats": {...}, "action_dim": 8, "state_dim": 8,
                                    "action_horizon": 15, "n_action_steps": 15,
                                    "setup_type": "", "control_mode": ""}}}

With `q01_q99`, x -> 2 (x - q01) / (q99 - q01) - 1 clipped to [-1, 1]; dimensions that never move in the data
(min == max) normalise to 0 and come back as their constant. Statistics are computed from numpy arrays and
travel with every checkpoint.

Delta actions (our extension, as openpi's delta joint actions): an entry with `delta_action_mask` predicts those
action dimensions relative to the same state dimension at the chunk's first observation (joints), the others
absolute (grippers). Normalised over the small range of in-chunk motion instead of the whole workspace, the same
normalised error is several times smaller in radians, and a chunk starts where the arm is. Released files have no
mask: absolute, as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

_EPS = 1e-6


class FeatureStats(BaseModel):
    """Per-dimension statistics of one feature (state or action)."""

    model_config = ConfigDict(extra="allow")  # released files may carry more (e.g. q10/q90, mask)

    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    q01: list[float]
    q99: list[float]

    @classmethod
    def from_array(cls, x: np.ndarray) -> FeatureStats:
        """x: (N, D) samples."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.asarray(x).shape[-1])
        if x.shape[0] == 0:
            raise ValueError("cannot compute normalisation statistics from zero samples")
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        return cls(
            mean=x.mean(0).tolist(),
            std=x.std(0).tolist(),
            min=x.min(0).tolist(),
            max=x.max(0).tolist(),
            q01=q01.tolist(),
            q99=q99.tolist(),
        )

    @property
    def dim(self) -> int:
        return len(self.q01)


class EmbodimentStats(BaseModel):
    """Statistics and chunk shape of one embodiment tag."""

    model_config = ConfigDict(extra="allow")

    action_stats: FeatureStats
    state_stats: FeatureStats
    action_dim: int  # real action width (before padding to max_action_dim)
    state_dim: int  # real state width
    action_horizon: int  # chunk length the policy predicts for this embodiment
    n_action_steps: int  # steps of each chunk an actor executes before the next one
    setup_type: str = ""  # free text for the prompt's setup clause (released metadata)
    control_mode: str = ""  # free text for the prompt's control-mode clause (released metadata)
    delta_action_mask: list[bool] | None = None  # per action dim: relative to the chunk's first state (None: all
    # absolute)


class NormStats(BaseModel):
    """All embodiments' statistics: what `norm_stats.json` holds."""

    model_config = ConfigDict(extra="allow")

    norm_mode: Literal["q01_q99"] = "q01_q99"
    metadata_by_tag: dict[str, EmbodimentStats] = {}

    # ---- building -------------------------------------------------------------------------------------------
    def add(
        self,
        tag: str,
        states: np.ndarray,
        actions: np.ndarray,
        *,
        action_horizon: int,
        n_action_steps: int | None = None,
        setup_type: str = "",
        control_mode: str = "",
        delta_mask: Sequence[bool] | None = None,
    ) -> EmbodimentStats:
        """Compute and store one embodiment's statistics. states: (N, S); actions: (N, A) or (N, T, A).

        delta_mask: per action dim, predict it relative to the state; then actions must be chunks (N, T, A)
        and states (N, S) the state at each chunk's first step (the statistics are of the deltas).
        """
        actions = np.asarray(actions)
        states = np.asarray(states)
        mask = None
        if delta_mask is not None:
            mask = [bool(m) for m in delta_mask]
            if actions.ndim != 3 or len(states) != len(actions) or len(mask) != actions.shape[-1]:
                raise ValueError(f"delta statistics need chunks (N, T, A) with one state (N, S) per chunk and a "
                                 f"mask of A entries: got actions {actions.shape}, states {states.shape}, "
                                 f"mask of {len(mask)}")
            if actions.shape[-1] > states.shape[-1]:
                raise ValueError(f"delta actions need a state entry per action dim: {actions.shape[-1]} action "
                                 f"dims, {states.shape[-1]} state dims")
            actions = actions - states[:, None, : actions.shape[-1]] * np.asarray(mask, dtype=actions.dtype)
        entry = EmbodimentStats(
            action_stats=FeatureStats.from_array(actions.reshape(-1, actions.shape[-1])),
            state_stats=FeatureStats.from_array(states.reshape(-1, states.shape[-1])),
            action_dim=int(actions.shape[-1]),
            state_dim=int(states.shape[-1]),
            action_horizon=int(action_horizon),
            n_action_steps=int(n_action_steps or action_horizon),
            setup_type=setup_type,
            control_mode=control_mode,
            delta_action_mask=mask,
        )
        self.metadata_by_tag[tag] = entry
        return entry

    def __getitem__(self, tag: str) -> EmbodimentStats:
        try:
            return self.metadata_by_tag[tag]
        except KeyError:
            known = ", ".join(sorted(self.metadata_by_tag)) or "none"
            raise KeyError(
                f"no normalisation statistics for embodiment {tag!r}; known tags: {known}"
            ) from None

    @property
    def tags(self) -> list[str]:
        return sorted(self.metadata_by_tag)

    # ---- transforms (numpy, float32) ------------------------------------------------------------------------
    @staticmethod
    def _normalize(x: np.ndarray, stats: FeatureStats) -> np.ndarray:
        lo, hi = np.asarray(stats.q01), np.asarray(stats.q99)
        out = 2.0 * (np.asarray(x, dtype=np.float64) - lo) / np.maximum(hi - lo, _EPS) - 1.0
        out = np.clip(out, -1.0, 1.0)
        frozen = np.asarray(stats.min) == np.asarray(stats.max)
        return np.where(frozen, 0.0, out).astype(np.float32)

    @staticmethod
    def _unnormalize(x: np.ndarray, stats: FeatureStats) -> np.ndarray:
        lo, hi = np.asarray(stats.q01), np.asarray(stats.q99)
        x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
        return ((x + 1.0) * (hi - lo) / 2.0 + lo).astype(np.float32)

    def normalize_state(self, tag: str, state: np.ndarray) -> np.ndarray:
        """(..., S) real units -> [-1, 1]."""
        return self._normalize(state, self[tag].state_stats)

    def _delta_offset(self, tag: str, action: np.ndarray, state: np.ndarray | None) -> np.ndarray | float:
        """What a delta entry subtracts from (T, A) or (B, T, A) actions: the masked chunk-start state."""
        mask = self[tag].delta_action_mask
        if mask is None:
            return 0.0
        if state is None:
            raise ValueError(f"{tag!r} predicts delta actions: its actions need the chunk's first state")
        state = np.asarray(state, dtype=np.float64)
        a = np.asarray(action).shape[-1]
        offset = state[..., :a] * np.asarray(mask, dtype=np.float64)
        return offset if np.asarray(action).ndim == state.ndim else np.expand_dims(offset, -2)

    def normalize_action(self, tag: str, action: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """(T, A) or (B, T, A) real units -> [-1, 1]. state: (S,) or (B, S), the chunk's first state (needed
        when the entry has a delta mask)."""
        return self._normalize(np.asarray(action, np.float64) - self._delta_offset(tag, action, state),
                               self[tag].action_stats)

    def action_range_excess(self, tag: str, action: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """(T, A) real units -> (T, A) how far each value lies outside the q01..q99 range that `normalize_action`
        clips to (0 inside), in action units: what the clip would take away from a training target."""
        stats = self[tag].action_stats
        x = np.asarray(action, np.float64) - self._delta_offset(tag, action, state)
        return np.maximum(0.0, np.maximum(np.asarray(stats.q01) - x, x - np.asarray(stats.q99)))

    def unnormalize_action(self, tag: str, action: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """(T, A) or (B, T, A) in [-1, 1] -> real units (the inverse of `normalize_action`)."""
        out = self._unnormalize(action, self[tag].action_stats) + self._delta_offset(tag, action, state)
        return np.asarray(out, dtype=np.float32)

    # ---- files ----------------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        return cls.from_json_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_json_dict(cls, payload: dict) -> NormStats:
        """Read our file or a released one (whose entries may lack dims, which follow from the stats)."""
        payload = dict(payload)
        mode = payload.get("norm_mode", "q01_q99")
        if mode != "q01_q99":
            raise ValueError(f"norm_mode {mode!r} is not supported; MolmoAct2 fleet stats use 'q01_q99'")
        tags = {}
        for tag, meta in dict(payload.get("metadata_by_tag") or {}).items():
            meta = dict(meta)
            for feature, dim_key in (("action_stats", "action_dim"), ("state_stats", "state_dim")):
                if meta.get(feature) is None:
                    raise ValueError(f"norm stats for {tag!r} lack {feature}")
                meta.setdefault(dim_key, len(meta[feature]["q01"]))
            meta.setdefault("action_horizon", 30)
            meta.setdefault("n_action_steps", meta["action_horizon"])
            tags[tag] = meta
        return cls.model_validate({**payload, "norm_mode": mode, "metadata_by_tag": tags})
