"""Bimanual I2RT YAM through i2rt's Python SDK (`i2rt`, CAN bus, one channel per arm).

Thin on purpose: `get_yam_robot(channel)` per arm, `get_joint_pos()` and `command_joint_pos()` with 7 values
per arm (6 joints in radians, same zero and directions as the simulated arm's i2rt frames, then the gripper
normalised with 1 = open). Nothing here runs in CI except the unit mapping, driven through stand-in SDK
objects in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.hardware.base import HardwareEnv, require_module

I2RT_INSTALL = "pip install i2rt (from github.com/i2rt-robotics/i2rt) and bring up the CAN interfaces"


@dataclass
class YAMConfig:
    """How to reach the two YAM arms."""

    left_channel: str = "can0"  # CAN interface of the left arm
    right_channel: str = "can1"  # CAN interface of the right arm
    gripper_open_value: float = 1.0  # i2rt gripper reading with the gripper open
    gripper_closed_value: float = 0.0  # i2rt gripper reading with the gripper closed


class YAMHardwareEnv(HardwareEnv):
    """Two YAM arms; cameras come from `cameras` (name -> object with `read() -> (H, W, 3) uint8`)."""

    def __init__(
        self,
        instruction: str = "",
        config: YAMConfig | None = None,
        cameras: dict[str, Any] | None = None,
        arms: tuple[Any, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__("yam_bimanual", instruction, **kwargs)
        self.config = config or YAMConfig()
        self.cameras = cameras or {}
        self.arms = arms  # (left, right) i2rt robots or stand-ins; None builds them on connect

    def _connect(self) -> None:
        if self.arms is None:
            get_robot = require_module("i2rt.robots.get_robot", "YAMHardwareEnv", I2RT_INSTALL)
            self.arms = (
                get_robot.get_yam_robot(channel=self.config.left_channel),
                get_robot.get_yam_robot(channel=self.config.right_channel),
            )
        missing = set(self.embodiment.cameras) - set(self.cameras)
        if missing:
            raise ValueError(f"YAMHardwareEnv needs camera readers for {sorted(missing)}")

    def _closure(self, value: float) -> float:
        c = self.config
        return float(
            np.clip((c.gripper_open_value - value) / (c.gripper_open_value - c.gripper_closed_value), 0, 1)
        )

    def _gripper_value(self, closure: float) -> float:
        c = self.config
        return c.gripper_open_value - float(closure) * (c.gripper_open_value - c.gripper_closed_value)

    def _read(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        parts = []
        for arm in self.arms:
            q = np.asarray(arm.get_joint_pos(), dtype=np.float64)
            parts.append([*q[:6], self._closure(q[6])])
        state = np.asarray(parts[0] + parts[1], dtype=np.float32)
        return state, {name: cam.read() for name, cam in self.cameras.items()}

    def _send(self, action: np.ndarray) -> None:
        for i, arm in enumerate(self.arms):
            a = action[7 * i : 7 * (i + 1)]
            arm.command_joint_pos(np.array([*a[:6], self._gripper_value(a[6])], dtype=np.float64))

    def _disconnect(self) -> None:
        for arm in self.arms or ():
            if hasattr(arm, "close"):
                arm.close()
