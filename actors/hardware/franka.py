"""Franka (Panda / FR3) through `franky`, the Python wrapper of libfranka with online trajectory generation.

Thin on purpose: each tick sends the 7 joint targets as an asynchronous joint motion (franky re-plans
jerk-limited towards the newest target, which is what absolute-joint-target chunks need) and the gripper
width. It needs the robot's FCI enabled and a real-time kernel on this machine; nothing here runs in CI
except the unit mapping, which the tests drive through stand-in SDK objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.hardware.base import HardwareEnv, require_module

FRANKY_INSTALL = "pip install franky-control (and libfranka matching the robot's firmware)"


@dataclass
class FrankaConfig:
    """How to reach one Franka arm."""

    host: str = "172.16.0.2"  # FCI address of the robot's control box
    dynamics_factor: float = 0.1  # fraction of the robot's velocity/acceleration/jerk limits a motion may use
    gripper_speed: float = 0.1  # m/s finger speed
    max_width: float = 0.08  # m, gripper opening at closure 0


class FrankaHardwareEnv(HardwareEnv):
    """A Franka arm with its gripper; cameras come from `cameras` (name -> object with `read() -> (H,W,3)`)."""

    def __init__(
        self,
        instruction: str = "",
        config: FrankaConfig | None = None,
        cameras: dict[str, Any] | None = None,
        robot: Any = None,
        gripper: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__("franka", instruction, **kwargs)
        self.config = config or FrankaConfig()
        self.cameras = cameras or {}
        # `robot`/`gripper` are franky.Robot / franky.Gripper (or stand-ins); None builds them on connect.
        self.robot, self.gripper = robot, gripper
        self._motion: Any = None

    def _connect(self) -> None:
        if self.robot is None or self.gripper is None:
            franky = require_module("franky", "FrankaHardwareEnv", FRANKY_INSTALL)
            self.robot = franky.Robot(self.config.host)
            self.robot.relative_dynamics_factor = self.config.dynamics_factor
            self.gripper = franky.Gripper(self.config.host)
            self._motion = franky.JointMotion
        missing = set(self.embodiment.cameras) - set(self.cameras)
        if missing:
            raise ValueError(f"FrankaHardwareEnv needs camera readers for {sorted(missing)}")

    def _read(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        q = np.asarray(self.robot.current_joint_state.position, dtype=np.float32)
        closure = 1.0 - float(self.gripper.width) / self.config.max_width
        state = np.array([*q, np.clip(closure, 0.0, 1.0)], dtype=np.float32)
        return state, {name: cam.read() for name, cam in self.cameras.items()}

    def _send(self, action: np.ndarray) -> None:
        motion = self._motion or require_module("franky", "FrankaHardwareEnv", FRANKY_INSTALL).JointMotion
        self.robot.move(motion([float(v) for v in action[:7]]), asynchronous=True)
        width = (1.0 - float(action[7])) * self.config.max_width
        self.gripper.move_async(width, self.config.gripper_speed)

    def _disconnect(self) -> None:
        # franky holds no session to close; stopping the last asynchronous motion is enough.
        if self.robot is not None and hasattr(self.robot, "join_motion"):
            self.robot.join_motion(timeout=1.0)
