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
"""

from __future__ import annotations

import json
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
    ) -> EmbodimentStats:
        """Compute and store one embodiment's statistics. states: (N, S); actions: (N, A) or (N, T, A)."""
        actions = np.asarray(actions)
        states = np.asarray(states)
        entry = EmbodimentStats(
            action_stats=FeatureStats.from_array(actions.reshape(-1, actions.shape[-1])),
            state_stats=FeatureStats.from_array(states.reshape(-1, states.shape[-1])),
            action_dim=int(actions.shape[-1]),
            state_dim=int(states.shape[-1]),
            action_horizon=int(action_horizon),
            n_action_steps=int(n_action_steps or action_horizon),
            setup_type=setup_type,
            control_mode=control_mode,
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

    def normalize_action(self, tag: str, action: np.ndarray) -> np.ndarray:
        """(..., A) real units -> [-1, 1]."""
        return self._normalize(action, self[tag].action_stats)

    def unnormalize_action(self, tag: str, action: np.ndarray) -> np.ndarray:
        """(..., A) in [-1, 1] -> real units."""
        return self._unnormalize(action, self[tag].action_stats)

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
