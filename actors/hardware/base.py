"""`HardwareEnv`: the simulated environments' interface over a real robot.

Same action space (absolute joint targets), same state layout and units (radians, gripper closure in [0, 1])
and same info keys as `FleetSimEnv`, so an actor runs a real arm exactly as it runs a simulated one. What a real
robot cannot say by itself is success: the operator (or a success detector) calls `mark_success()`.
Observations hold no depth unless a subclass has a depth camera. Subclasses implement four methods:
`_connect`, `_read` (state and images), `_send` (an action) and `_disconnect`, in their vendor's units.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from actors.embodiments import Embodiment, get_embodiment

STATE_MARGIN = 0.5  # rad beyond the joint limits that the state space admits (as in the simulator)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 camera frame to (size, size, 3): centre crop to a square, then resize."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))


class HardwareEnv(gym.Env, ABC):
    """A real robot of one embodiment behind the Gymnasium interface of the simulated fleet."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        embodiment: str | Embodiment,
        instruction: str,
        task: str = "operator",
        image_size: int = 96,
        time_limit_s: float = 60.0,
        pace: bool = True,
    ) -> None:
        self.embodiment = get_embodiment(embodiment) if isinstance(embodiment, str) else embodiment
        emb = self.embodiment
        self.instruction = instruction
        self.task_name = task
        self.image_size = image_size
        self.max_steps = round(time_limit_s * emb.control_hz)
        self.pace = pace  # hold the control rate in step(); off for tests and replays
        self.action_space = spaces.Box(emb.action_low, emb.action_high, dtype=np.float32)
        self._state_low, self._state_high = emb.action_low - STATE_MARGIN, emb.action_high + STATE_MARGIN
        shape = (image_size, image_size, 3)
        self.observation_space = spaces.Dict(
            {
                "state": spaces.Box(self._state_low, self._state_high, dtype=np.float32),
                "images": spaces.Dict(
                    {c: spaces.Box(0, 255, shape=shape, dtype=np.uint8) for c in emb.cameras}
                ),
            }
        )
        self.steps = 0
        self._success = False
        self._connected = False
        self._next_tick = 0.0

    # ------------------------------------------------------------------------------------- vendor side

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(S,) state in the embodiment's layout and units, and {camera: (H, W, 3) uint8} at any size."""

    @abstractmethod
    def _send(self, action: np.ndarray) -> None:
        """Send (A,) absolute joint targets (already clipped to the limits)."""

    @abstractmethod
    def _disconnect(self) -> None: ...

    # ------------------------------------------------------------------------------------- gymnasium

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        if not self._connected:
            self._connect()
            self._connected = True
        if options and "instruction" in options:
            self.instruction = str(options["instruction"])
        self.steps, self._success = 0, False
        self._next_tick = time.monotonic()
        return self._observation(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self._connected:
            raise RuntimeError("step() before reset(): the robot is not connected")
        action = np.clip(np.asarray(action, dtype=np.float32), self.action_space.low, self.action_space.high)
        self._send(action)
        if self.pace:
            self._next_tick += 1.0 / self.embodiment.control_hz
            delay = self._next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:  # overran the tick: start counting again from now rather than rushing to catch up
                self._next_tick = time.monotonic()
        self.steps += 1
        obs = self._observation()
        truncated = not self._success and self.steps >= self.max_steps
        return obs, float(self._success), self._success, truncated, self._info()

    def mark_success(self) -> None:
        """The operator says the task is done: the next step() terminates the episode with success."""
        self._success = True

    def close(self) -> None:
        if self._connected:
            self._disconnect()
            self._connected = False

    # ------------------------------------------------------------------------------------- pieces

    def _observation(self) -> dict[str, Any]:
        state, frames = self._read()
        missing = set(self.embodiment.cameras) - set(frames)
        if missing:
            raise RuntimeError(f"{type(self).__name__}: no frame from cameras {sorted(missing)}")
        images = {c: fit_image(frames[c], self.image_size) for c in self.embodiment.cameras}
        state = np.clip(np.asarray(state, dtype=np.float32), self._state_low, self._state_high)
        return {"state": state, "images": images}

    def _info(self) -> dict[str, Any]:
        return {
            "success": self._success,
            "instruction": self.instruction,
            "task": self.task_name,
            "embodiment": self.embodiment.name,
            "step": self.steps,
        }


def require_module(module: str, user: str, install: str) -> Any:
    """Import a vendor SDK lazily, or fail with an error that says what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{user} needs the vendor SDK `{module}`, which is not importable ({e}). "
            f"Install it with: {install}"
        ) from e
