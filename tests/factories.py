"""Synthetic episodes for data-plane tests (the simulated fleet produces real ones in actor tests)."""

from __future__ import annotations

import time
import uuid

import numpy as np

from fleet.episode import EmbodimentSchema, Episode, EpisodeMeta

SCHEMAS = {
    "franka": EmbodimentSchema(name="franka", state_dim=8, action_dim=8, cameras=("external", "wrist")),
    "yam_bimanual": EmbodimentSchema(name="yam_bimanual", state_dim=14, action_dim=14,
                                     cameras=("top", "left_wrist", "right_wrist")),
    "so101": EmbodimentSchema(name="so101", state_dim=6, action_dim=6, cameras=("front", "wrist")),
}


def synthetic_episode(embodiment: str = "franka", steps: int = 40, size: int = 16, seed: int = 0,
                      success: bool = True, task: str = "reach", version: int = 0, robot: str | None = None,
                      end_time: float | None = None, depth: bool = False, interventions: int = 0,
                      source: str = "fleet") -> Episode:
    rng = np.random.default_rng(seed)
    s = SCHEMAS[embodiment]
    t0 = time.time() if end_time is None else end_time - steps / 15
    flags = np.zeros(steps, bool)
    flags[steps - interventions :] = True
    # images encode the step index so tests can check which frames came back
    images = {c: np.stack([np.full((size, size, 3), (i + 7 * k) % 256, np.uint8) for i in range(steps)])
              for k, c in enumerate(s.cameras)}
    return Episode(
        meta=EpisodeMeta(episode_id=uuid.UUID(int=rng.integers(1 << 62)).hex, robot_id=robot or f"{embodiment}-01",
                         embodiment=embodiment, task=task, instruction=f"{task} the red cube", policy_version=version,
                         fps=15.0, success=success, interventions=interventions, duration_s=steps / 15,
                         start_time=t0, end_time=t0 + steps / 15, seed=seed, source=source),
        images=images,
        state=np.arange(steps, dtype=np.float32)[:, None].repeat(s.state_dim, 1) + rng.normal(size=(steps, s.state_dim)).astype(np.float32) * 0,
        action=(np.arange(steps, dtype=np.float32)[:, None] + np.arange(s.action_dim, dtype=np.float32) / 100),
        intervention=flags,
        timestamp=np.arange(steps) / 15.0,
        depth=rng.uniform(0.2, 2.0, size=(steps, size, size)).astype(np.float32) if depth else None,
    )
