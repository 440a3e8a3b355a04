"""`FleetSimEnv`: one embodiment doing one task in MuJoCo, as a Gymnasium environment.

Observation (a Dict):
- "images": {camera: (H, W, 3) uint8}, main camera first (only when rendering)
- "depth": (H, W) float32, metres along the main camera's view axis (only when rendering)
- "state": (S,) float32 joint positions (rad) and gripper closures in [0, 1], in the embodiment's dof order
Action: (A,) float32 absolute joint targets in the same layout, clipped to the joint limits.
Reward: 1.0 on the step the task succeeds (the episode then terminates), else 0.0.
Info: "success", "instruction", "task", "embodiment", "step".

The language instruction is `env.unwrapped.instruction` and is also in every info dict. Seeding follows
Gymnasium: `reset(seed=...)` reseeds `np_random`, which lays out the episode.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from actors.embodiments import get_embodiment
from actors.sim.rendering import CameraRenderer
from actors.sim.scene import Scene, build_scene
from actors.sim.tasks import TASKS, TASKS_BY_EMBODIMENT, Task

STATE_MARGIN = 0.5  # rad beyond the joint limits that the state space admits


class FleetSimEnv(gym.Env):
    """A simulated robot of the fleet doing one task."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        embodiment: str,
        task: str,
        image_size: int = 96,
        render: bool = True,
        render_mode: str | None = None,
        time_limit_s: float | None = None,
    ) -> None:
        emb = get_embodiment(embodiment)
        if task not in TASKS_BY_EMBODIMENT[emb.name]:
            raise ValueError(f"{emb.name} does not do {task!r}; it does {TASKS_BY_EMBODIMENT[emb.name]}")
        if not 16 <= image_size <= 1024:
            raise ValueError(f"image_size {image_size} must be in [16, 1024] pixels")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        if render_mode is not None and not render:
            raise ValueError("render_mode needs render=True")
        self.embodiment = emb
        self.task: Task = TASKS[task]()
        self.scene: Scene = build_scene(emb, self.task, image_size)
        self.image_size = image_size
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": emb.control_hz}
        limit = time_limit_s if time_limit_s is not None else self.task.time_limit_s
        self.max_steps = round(limit * emb.control_hz)
        self.renderer = (
            CameraRenderer(self.scene.model, emb.cameras, image_size, image_size, emb.main_camera)
            if render
            else None
        )
        self.action_space = spaces.Box(emb.action_low, emb.action_high, dtype=np.float32)
        # Joints can overshoot their limits a little (MuJoCo's limits are soft): the state box leaves room.
        self._state_low = emb.action_low - STATE_MARGIN
        self._state_high = emb.action_high + STATE_MARGIN
        obs: dict[str, spaces.Space] = {
            "state": spaces.Box(self._state_low, self._state_high, dtype=np.float32),
        }
        if render:
            shape = (image_size, image_size, 3)
            obs["images"] = spaces.Dict(
                {c: spaces.Box(0, 255, shape=shape, dtype=np.uint8) for c in emb.cameras}
            )
            far = self.scene.model.vis.map.zfar * self.scene.model.stat.extent  # where nothing is hit, m
            obs["depth"] = spaces.Box(
                0.0, np.float32(far * 1.001), shape=(image_size, image_size), dtype=np.float32
            )
        self.observation_space = spaces.Dict(obs)
        self.instruction = ""
        self.steps = 0
        self._last_images: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------------------------- gymnasium

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        scene = self.scene
        # Nothing of the last episode leaks into this one (solver warm starts, time): it depends on its seed only.
        mujoco.mj_resetData(scene.model, scene.data)
        scene.set_state(scene.home_state())
        self.instruction = self.task.reset(scene, self.np_random)
        scene.set_state(scene.home_state())  # also recomputes contacts and poses with the new objects
        self.steps = 0
        return self._observation(), self._info(success=False)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape}, expected {self.action_space.shape}")
        self.scene.apply_action(action)
        self.scene.step()
        self.steps += 1
        success = self.task.success(self.scene)
        truncated = not success and self.steps >= self.max_steps
        return self._observation(), float(success), success, truncated, self._info(success)

    def render(self) -> np.ndarray | None:
        """The main camera's last image (rgb_array), or None without a render mode."""
        if self.render_mode != "rgb_array":
            return None
        if not self._last_images:
            self._observation()
        return self._last_images[self.embodiment.main_camera]

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    # ------------------------------------------------------------------------------------- pieces

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"state": np.clip(self.scene.state(), self._state_low, self._state_high)}
        if self.renderer is not None:
            images, depth = self.renderer.render(self.scene.data)
            self._last_images = images
            obs["images"] = images
            obs["depth"] = depth
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": bool(success),
            "instruction": self.instruction,
            "task": self.task.name,
            "embodiment": self.embodiment.name,
            "step": self.steps,
        }
