"""SO-100 / SO-101 follower arms through LeRobot's robot classes (`lerobot.robots.so_follower`).

`SOJointMap` is the whole translation between LeRobot's units and ours, kept pure so it is testable without a
serial bus: LeRobot reports and takes `{"<joint>.pos": degrees}` (with `use_degrees=True`, 0 degrees is the
middle of the calibrated range, as the simulated arm's 0 rad is) and `gripper.pos` in 0-100 of the calibrated
gripper range; we use radians and a gripper closure in [0, 1] (0 open).

LeRobot is imported only when a robot is built, so the simulated fleet never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actors.embodiments import get_embodiment
from actors.hardware.base import HardwareEnv, require_module

SO_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")


@dataclass(frozen=True)
class SOJointMap:
    """LeRobot SO follower units <-> the fleet's (radians, gripper closure)."""

    joints: tuple[str, ...] = SO_JOINTS  # LeRobot motor names, in the embodiment's joint order
    gripper: str = "gripper"  # LeRobot motor name of the gripper
    signs: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)  # per joint: -1 where a motor turns the other way
    offsets_rad: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # ours = sign * theirs + offset, rad
    gripper_open_pct: float = 100.0  # LeRobot gripper.pos with the jaw fully open
    gripper_closed_pct: float = 0.0  # LeRobot gripper.pos with the jaw closed

    def __post_init__(self) -> None:
        n = len(self.joints)
        if len(self.signs) != n or len(self.offsets_rad) != n:
            raise ValueError(f"signs and offsets_rad need one entry per joint ({n})")
        if self.gripper_open_pct == self.gripper_closed_pct:
            raise ValueError("gripper_open_pct and gripper_closed_pct must differ")

    def to_state(self, observation: dict[str, Any]) -> np.ndarray:
        """(6,) float32 state from a LeRobot observation {"<motor>.pos": value, ...} (other keys ignored)."""
        deg = np.array([float(observation[f"{j}.pos"]) for j in self.joints])
        rad = np.asarray(self.signs) * np.deg2rad(deg) + np.asarray(self.offsets_rad)
        pct = float(observation[f"{self.gripper}.pos"])
        closure = (self.gripper_open_pct - pct) / (self.gripper_open_pct - self.gripper_closed_pct)
        return np.array([*rad, np.clip(closure, 0.0, 1.0)], dtype=np.float32)

    def to_action(self, action: np.ndarray) -> dict[str, float]:
        """A LeRobot action {"<motor>.pos": value} from a (6,) action of joint targets (rad) and closure."""
        rad = np.asarray(action[: len(self.joints)], dtype=np.float64)
        deg = np.rad2deg((rad - np.asarray(self.offsets_rad)) / np.asarray(self.signs))
        closure = float(np.clip(action[len(self.joints)], 0.0, 1.0))
        pct = self.gripper_open_pct - closure * (self.gripper_open_pct - self.gripper_closed_pct)
        out = {f"{j}.pos": float(v) for j, v in zip(self.joints, deg, strict=True)}
        out[f"{self.gripper}.pos"] = pct
        return out


@dataclass
class SOFollowerConfig:
    """How to reach one SO-100/101 follower arm."""

    port: str = "/dev/ttyACM0"  # serial port of the Feetech bus
    robot_id: str = "follower"  # LeRobot calibration id (file <calibration_dir>/<robot_id>.json)
    calibration_dir: Path | None = None  # None: LeRobot's default under ~/.cache/huggingface/lerobot
    cameras: dict[str, Any] = field(default_factory=dict)  # our camera name -> lerobot CameraConfig
    max_relative_target: float | None = 10.0  # degrees: LeRobot clips each command this close to the present
    calibrate: bool = False  # run LeRobot's interactive calibration if the motors disagree with the file


class SOFollowerEnv(HardwareEnv):
    """An SO-100 or SO-101 follower arm (+ its cameras) as a fleet environment."""

    def __init__(
        self,
        embodiment: str = "so101",
        instruction: str = "",
        config: SOFollowerConfig | None = None,
        joint_map: SOJointMap | None = None,
        robot: Any = None,
        **kwargs: Any,
    ) -> None:
        emb = get_embodiment(embodiment)
        if emb.name not in ("so100", "so101"):
            raise ValueError(f"SOFollowerEnv drives so100 or so101, not {emb.name}")
        super().__init__(emb, instruction, **kwargs)
        self.config = config or SOFollowerConfig()
        self.joint_map = joint_map or SOJointMap()
        # `robot` is any object with LeRobot's Robot interface; None builds a lerobot SOFollower on connect.
        self.robot = robot

    def build_robot(self) -> Any:
        """A LeRobot SOFollower for `config` (imports LeRobot here, not at module import)."""
        so = require_module("lerobot.robots.so_follower", "SOFollowerEnv", "pip install lerobot")
        cfg = self.config
        missing = set(self.embodiment.cameras) - set(cfg.cameras)
        if missing:
            raise ValueError(
                f"{self.embodiment.name} needs cameras {self.embodiment.cameras}; "
                f"add {sorted(missing)} to SOFollowerConfig.cameras"
            )
        robot_cfg = so.SOFollowerRobotConfig(
            port=cfg.port,
            id=cfg.robot_id,
            calibration_dir=cfg.calibration_dir,
            cameras=dict(cfg.cameras),
            max_relative_target=cfg.max_relative_target,
            use_degrees=True,
        )
        return so.SOFollower(robot_cfg)

    def _connect(self) -> None:
        if self.robot is None:
            self.robot = self.build_robot()
        if not self.robot.is_connected:
            self.robot.connect(calibrate=self.config.calibrate)

    def _read(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        obs = self.robot.get_observation()
        images = {c: np.asarray(obs[c]) for c in self.embodiment.cameras if c in obs}
        return self.joint_map.to_state(obs), images

    def _send(self, action: np.ndarray) -> None:
        self.robot.send_action(self.joint_map.to_action(action))

    def _disconnect(self) -> None:
        if self.robot is not None and self.robot.is_connected:
            self.robot.disconnect()
