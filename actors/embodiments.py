"""The embodiments of the fleet: the one place where each robot's joints, grippers, cameras and rates are defined.

Everything else reads these: the simulated arms (`actors/sim/arms.py`) take joint names and limits from here,
the hardware adapters map their vendor units onto these joint names, and the data plane sees each embodiment
through `Embodiment.schema` (an `fleet.episode.EmbodimentSchema`).

Conventions shared by every embodiment:
- state and action are vectors laid out as `dof_names`: arm joints in radians, then each arm's gripper as a
  closure in [0, 1] (0 fully open, 1 fully closed); bimanual arms are left arm first, then right arm.
- actions are absolute joint targets in the same layout and units as the state.
- cameras are listed main camera first; the main camera is the one whose depth is recorded.

Joint limits come from the vendors' public specs: Franka's datasheet, i2rt's YAM model, and TheRobotStudio's
SO-ARM100 models, re-centred for SO-100/101 so that 0 is the middle of each joint's range, which is what
LeRobot's calibration calls 0 degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleet.episode import EmbodimentSchema


@dataclass(frozen=True)
class Embodiment:
    """One kind of robot: its state/action layout, limits, cameras and rates."""

    name: str  # registry key, also the episode's `embodiment` field
    dof_names: tuple[str, ...]  # state/action layout: arm joints and grippers, in vector order
    grippers: tuple[str, ...]  # which of `dof_names` are grippers (closure in [0, 1], 0 open)
    joint_limits: tuple[tuple[float, float], ...]  # (low, high) radians per arm joint, in `joint_names` order
    arms: tuple[tuple[str, ...], ...]  # per arm, its entries of `dof_names` (joints then gripper)
    control_hz: float  # control loop rate, Hz: one action per tick
    cameras: tuple[str, ...]  # camera names, main camera first
    chunk_horizon: int  # actions per predicted chunk (MolmoAct2 pads to 30 inside the model)
    norm_tag: str  # which per-embodiment normalisation statistics the policy uses

    def __post_init__(self) -> None:
        joints = self.joint_names
        if len(joints) != len(self.joint_limits):
            raise ValueError(f"{self.name}: {len(joints)} joints but {len(self.joint_limits)} joint limits")
        if not set(self.grippers) <= set(self.dof_names):
            raise ValueError(f"{self.name}: grippers {self.grippers} are not all in dof_names")
        if sorted(n for arm in self.arms for n in arm) != sorted(self.dof_names):
            raise ValueError(f"{self.name}: arms {self.arms} must partition dof_names {self.dof_names}")
        for low, high in self.joint_limits:
            if not low < high:
                raise ValueError(f"{self.name}: joint limit ({low}, {high}) is empty")
        if not self.cameras:
            raise ValueError(f"{self.name}: needs at least one camera (the main camera first)")

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Arm joints (no grippers), in vector order."""
        return tuple(n for n in self.dof_names if n not in self.grippers)

    @property
    def state_dim(self) -> int:
        return len(self.dof_names)

    @property
    def action_dim(self) -> int:
        return len(self.dof_names)

    @property
    def main_camera(self) -> str:
        return self.cameras[0]

    @property
    def gripper_indices(self) -> tuple[int, ...]:
        return tuple(self.dof_names.index(g) for g in self.grippers)

    @property
    def action_low(self) -> np.ndarray:
        """(A,) float32 lower bound of an action: joint lower limits, 0 for grippers."""
        return self._bounds(0)

    @property
    def action_high(self) -> np.ndarray:
        """(A,) float32 upper bound of an action: joint upper limits, 1 for grippers."""
        return self._bounds(1)

    def _bounds(self, side: int) -> np.ndarray:
        limits = dict(zip(self.joint_names, self.joint_limits, strict=True))
        out = [float(side) if n in self.grippers else limits[n][side] for n in self.dof_names]
        return np.asarray(out, dtype=np.float32)

    @property
    def schema(self) -> EmbodimentSchema:
        return EmbodimentSchema(
            name=self.name, state_dim=self.state_dim, action_dim=self.action_dim, cameras=self.cameras
        )


# Franka Emika Panda, limits from the FR3/Panda datasheet (rad).
_FRANKA_LIMITS = (
    (-2.8973, 2.8973),
    (-1.7628, 1.7628),
    (-2.8973, 2.8973),
    (-3.0718, -0.0698),
    (-2.8973, 2.8973),
    (-0.0175, 3.7525),
    (-2.8973, 2.8973),
)

# i2rt YAM, limits from i2rt's MJCF (rad); joint2/joint3 start at 0 = folded.
_YAM_LIMITS = (
    (-2.618, 3.13),
    (0.0, 3.65),
    (0.0, 3.13),
    (-1.5708, 1.5708),
    (-1.5708, 1.5708),
    (-2.0944, 2.0944),
)

_SO_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
# SO-101 (new calibration): symmetric about the middle of each joint's range.
_SO101_LIMITS = (
    (-1.91986, 1.91986),
    (-1.74533, 1.74533),
    (-1.69, 1.69),
    (-1.65806, 1.65806),
    (-2.74385, 2.84121),
)
# SO-100: the widths of its published ranges, centred on 0 like LeRobot's degrees mode does.
_SO100_LIMITS = ((-2.0, 2.0), (-1.75, 1.75), (-1.5708, 1.5708), (-1.85, 1.85), (-3.1416, 3.1416))


def _franka() -> Embodiment:
    joints = tuple(f"joint{i}" for i in range(1, 8))
    dofs = (*joints, "gripper")
    return Embodiment(
        name="franka",
        dof_names=dofs,
        grippers=("gripper",),
        joint_limits=_FRANKA_LIMITS,
        arms=(dofs,),
        control_hz=15.0,
        cameras=("external", "wrist"),
        chunk_horizon=15,
        norm_tag="franka",
    )


def _yam_bimanual() -> Embodiment:
    arms = tuple(
        (*(f"{side}_joint{i}" for i in range(1, 7)), f"{side}_gripper") for side in ("left", "right")
    )
    return Embodiment(
        name="yam_bimanual",
        dof_names=arms[0] + arms[1],
        grippers=("left_gripper", "right_gripper"),
        joint_limits=_YAM_LIMITS + _YAM_LIMITS,
        arms=arms,
        control_hz=30.0,
        cameras=("top", "left_wrist", "right_wrist"),
        chunk_horizon=30,
        norm_tag="yam_bimanual",
    )


def _so(name: str, limits: tuple[tuple[float, float], ...]) -> Embodiment:
    dofs = (*_SO_JOINTS, "gripper")
    return Embodiment(
        name=name,
        dof_names=dofs,
        grippers=("gripper",),
        joint_limits=limits,
        arms=(dofs,),
        control_hz=30.0,
        cameras=("front", "wrist"),
        chunk_horizon=30,
        norm_tag="so100_so101",  # same joints and units: one set of statistics serves both
    )


EMBODIMENTS: dict[str, Embodiment] = {
    "franka": _franka(),
    "yam_bimanual": _yam_bimanual(),
    "so100": _so("so100", _SO100_LIMITS),
    "so101": _so("so101", _SO101_LIMITS),
}


def get_embodiment(name: str) -> Embodiment:
    """The embodiment called `name`, or an error listing the known ones."""
    try:
        return EMBODIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown embodiment {name!r}; known: {sorted(EMBODIMENTS)}") from None


def schemas() -> dict[str, EmbodimentSchema]:
    """The data plane's view of every embodiment, keyed by name."""
    return {name: e.schema for name, e in EMBODIMENTS.items()}
