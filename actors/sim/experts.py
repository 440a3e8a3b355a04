"""Scripted experts: they make demonstrations and play the operator who takes over mid-episode.

Each `act()` reads the physics state (arm joints, servo targets, tool pose, object poses, contacts) and decides
from it what to do next, so an expert can take over from wherever a policy left the arm (DAgger-style
intervention) and recovers when a grasp slips. Its only memory is whether an arm is on its way back home after
being found somewhere the straight paths cannot start from (see `ScriptedExpert.move`). Motions are straight
tool paths at a bounded speed, turned into absolute joint targets by inverse kinematics (`ArmIK.toward`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.sim.arms import ARM_MODEL_OF, ARM_MODELS
from actors.sim.kinematics import ArmIK, rotation_angle, top_down_quat
from actors.sim.scene import Scene
from actors.sim.tasks import LiftTask, PickPlaceTask, ReachTask, Task

OPEN, CLOSED = 0.0, 1.0
MAX_TILT = np.deg2rad(35.0)  # rad: tool axis further than this from vertical triggers a joint-space recovery
REACH_TOL = 0.015  # weighted IK error (m) of one tick's step above which the straight path counts as blocked
HOME_TOL = 0.1  # rad: a recovery ends when every joint is this close to home


class ScriptedExpert:
    """Base of the task experts: per-arm inverse kinematics and the grasp routine they share."""

    def __init__(self, scene: Scene, task: Task) -> None:
        self.scene, self.task = scene, task
        self.iks = [ArmIK(scene, i) for i in range(len(scene.arms))]
        self.gripper_model = ARM_MODELS[ARM_MODEL_OF[scene.embodiment.name]].gripper
        h = scene.layout.object_half
        self.h = h
        self.hover_z = scene.layout.hover_z
        self.tol_xy = 0.4 * h  # m: the tool is over the object
        self.tol_z = 0.3 * h  # m: the tool is at the height it was sent to
        self.speed = scene.layout.speed
        self.dt = scene.control_dt
        self.max_joint_step = 2.0 * self.dt  # rad per tick: never more than 2 rad/s whatever the IK says
        # The one piece of memory: per arm, whether a joint-space return home is under way (see `move`).
        self.recovering = [False] * len(self.iks)
        self._last_time = -1.0
        self.home_quats = [ik.forward(ik.home)[1] for ik in self.iks]

    def act(self, obs: Any = None) -> np.ndarray:
        """(A,) float32 absolute joint targets for the next tick, from the current physics state.

        `obs` is accepted so an expert can stand in for a policy; it is not needed (the expert sees the
        simulator's state, which is what a human operator looking at the scene sees too).
        """
        if self.scene.data.time < self._last_time:  # the episode was reset since the last call
            self.recovering = [False] * len(self.iks)
        self._last_time = self.scene.data.time
        targets = self.plan()
        action = np.empty(self.scene.embodiment.action_dim, dtype=np.float32)
        emb = self.scene.embodiment
        for arm, (q, grip) in enumerate(targets):
            arm_joints = self.scene.arms[arm].joints
            measured = self.iks[arm].joints()
            q = measured + np.clip(q - measured, -self.max_joint_step, self.max_joint_step)  # safety net
            for name, value in zip(arm_joints, q, strict=True):
                action[emb.dof_names.index(name)] = value
            action[emb.gripper_indices[arm]] = grip
        return action

    def plan(self) -> list[tuple[np.ndarray, float]]:
        """Per arm: joint targets (n,) and gripper command in [0, 1]."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- motions

    def hold_home(self, arm: int) -> tuple[np.ndarray, float]:
        return self.iks[arm].home.copy(), OPEN

    def move(self, arm: int, pos: np.ndarray, quat: np.ndarray, grip: float) -> tuple[np.ndarray, float]:
        """A straight tool path towards (pos, quat), or a joint-space return home when that cannot work.

        A policy or a disturbance can leave the arm tilted or in another inverse-kinematics branch (elbow
        flipped, a wrist at its limit) from which straight tool paths run into joint limits. Then the arm goes
        back to its home posture in joint space, all the way (deciding afresh each tick would dither at the
        edge of the trouble), and the straight paths start again from there.
        """
        ik = self.iks[arm]
        _, mat = self.scene.tcp_pose(arm)
        q_meas = ik.joints()
        if self.recovering[arm]:
            if np.abs(ik.home - q_meas).max() > HOME_TOL:
                return self._toward_home(arm), grip
            self.recovering[arm] = False
        q, err = ik.toward(pos, quat, self.speed, self.dt)
        if mat[2, 2] > -np.cos(MAX_TILT) or err > REACH_TOL:
            self.recovering[arm] = True
            return self._toward_home(arm), grip
        return q, grip

    def _toward_home(self, arm: int) -> np.ndarray:
        ik = self.iks[arm]
        q = ik.joints()
        return q + np.clip(ik.home - q, -self.max_joint_step / 2, self.max_joint_step / 2)

    def best_quat(self, arm: int, yaw: float, symmetry: float) -> np.ndarray:
        """Top-down orientation at `yaw` + k * `symmetry` nearest to the tool's orientation at home.

        Nearest to home rather than to the current orientation: home sits mid-range on the wrist's roll
        joint, so the choice never asks the wrist to turn past its limit.
        """
        candidates = [top_down_quat(yaw + k * symmetry) for k in range(round(2 * np.pi / symmetry))]
        return min(candidates, key=lambda q: rotation_angle(q, self.home_quats[arm]))

    def approach(
        self, arm: int, target: np.ndarray, quat: np.ndarray, low_z: float, grip: float
    ) -> tuple[tuple[np.ndarray, float], bool]:
        """Go over `target` at hover height, turn to `quat`, then down to `low_z`; True once there."""
        pos, cur = self.iks[arm].tcp()
        over = np.linalg.norm(pos[:2] - target[:2]) < self.tol_xy
        turned = rotation_angle(quat, cur) < 0.12
        if over and turned and pos[2] < self.hover_z + self.tol_z:
            arrived = abs(pos[2] - low_z) < self.tol_z
            return self.move(arm, np.array([target[0], target[1], low_z]), quat, grip), arrived
        if pos[2] < self.hover_z - 2 * self.tol_z and np.linalg.norm(pos[:2] - target[:2]) > 2 * self.tol_xy:
            # Low and not over the target: rise first, so the tool never sweeps through the objects.
            return self.move(arm, np.array([pos[0], pos[1], self.hover_z]), quat, grip), False
        return self.move(arm, np.array([target[0], target[1], self.hover_z]), quat, grip), False

    def grasp(
        self, arm: int, center: np.ndarray, quat: np.ndarray, half_width: float, held: bool
    ) -> tuple[np.ndarray, float]:
        """One tick of picking up an object of `half_width` (across the fingers) at `center`."""
        closure = self.scene.gripper_closure()[arm]
        contact_closure = 1.0 - half_width / self.gripper_model.stroke  # the fingers meet the object here
        pos, _ = self.iks[arm].tcp()
        grasp_z = max(center[2], self.gripper_model.finger_length / 2 + 0.004)
        if closure > contact_closure + 0.2 and not held:
            # Closed on nothing (the object slipped out): open while rising, then try again.
            return self.move(arm, np.array([pos[0], pos[1], self.hover_z]), quat, OPEN)
        closing = (
            closure > 0.15
            and abs(pos[2] - grasp_z) < 2 * self.tol_z
            and np.linalg.norm(pos[:2] - center[:2]) < 2 * self.tol_xy
        )
        if closing:
            return self.move(arm, np.array([center[0], center[1], grasp_z]), quat, CLOSED)
        (q, _), arrived = self.approach(arm, center, quat, grasp_z, OPEN)
        return q, CLOSED if arrived else OPEN

    def holds(self, arm: int, geom: np.ndarray, half_width: float) -> bool:
        """Both fingers of `arm` press on `geom` with the gripper closed onto it."""
        closure = self.scene.gripper_closure()[arm]
        contact_closure = 1.0 - half_width / self.gripper_model.stroke
        fingers = self.scene.finger_geoms[arm]
        touching = all(self.scene.touching(np.array([f]), geom) for f in fingers)
        # A closure far past the object's width means the fingers slid off (or sank in): not a hold.
        return touching and contact_closure - 0.1 < closure < contact_closure + 0.15


class ReachExpert(ScriptedExpert):
    """Touch the named object from above with the closed gripper, using the arm nearest to it."""

    task: ReachTask

    def plan(self) -> list[tuple[np.ndarray, float]]:
        target = self.task.target
        p = target.position(self.scene.data)
        arm = self.nearest_arm(p)
        quat = self.best_quat(arm, target.yaw(self.scene.data), np.pi / 2)
        # The closed fingertips press a little into the object's top, so the contact lasts.
        touch_z = 2 * target.half + self.gripper_model.finger_length / 2 - 0.3 * target.half
        plans = [self.hold_home(i) for i in range(len(self.iks))]
        plans[arm], _ = self.approach(arm, p, quat, touch_z, CLOSED)
        return plans

    def nearest_arm(self, p: np.ndarray) -> int:
        bases = [np.asarray(pos) for pos, _ in self.scene.layout.arm_mounts]
        return int(np.argmin([np.linalg.norm(p[:2] - b[:2]) for b in bases]))


class PickPlaceExpert(ScriptedExpert):
    """Grasp the cube from above, carry it over the bin, lower it and let go."""

    task: PickPlaceTask

    def plan(self) -> list[tuple[np.ndarray, float]]:
        task, data = self.task, self.scene.data
        cube = task.cube.position(data)
        quat = self.best_quat(0, task.cube.yaw(data), np.pi / 2)
        pos, cur = self.iks[0].tcp()
        held = self.holds(0, task.cube.geom, task.cube.half)
        if task.cube_in_bin(self.scene) and not held:
            return [self.move(0, np.array([pos[0], pos[1], self.hover_z]), cur, OPEN)]
        if not held:
            return [self.grasp(0, cube, quat, task.cube.half, held)]
        bin_xy = task.bin.center()[:2]
        release_z = task.bin.geometry.wall_height + 2.0 * task.cube.half
        if np.linalg.norm(pos[:2] - bin_xy) < 0.3 * task.bin.geometry.inner_half:
            if pos[2] < release_z + self.tol_z:
                return [self.move(0, np.array([*bin_xy, release_z]), cur, OPEN)]
            return [self.move(0, np.array([*bin_xy, release_z]), cur, CLOSED)]
        if pos[2] < self.hover_z - 2 * self.tol_z:
            return [self.move(0, np.array([pos[0], pos[1], self.hover_z]), cur, CLOSED)]
        return [self.move(0, np.array([*bin_xy, self.hover_z]), cur, CLOSED)]


class LiftExpert(ScriptedExpert):
    """Each arm grasps its end of the bar; once both hold it, both rise together."""

    task: LiftTask

    def plan(self) -> list[tuple[np.ndarray, float]]:
        task, data = self.task, self.scene.data
        bar = task.bar
        center, rot = bar.position(data), bar.rotation(data)
        along = rot[:, 1] if rot[1, 1] >= 0 else -rot[:, 1]  # unit vector along the bar, towards the left arm
        bar_yaw = float(np.arctan2(along[1], along[0]))  # fingers close across the bar at this tool yaw
        reach = bar.half[1] - 0.045  # grasp this far from the centre, m
        half_width = bar.half[0]
        held = [self.holds(arm, bar.geom, half_width) for arm in (0, 1)]
        plans = []
        for arm, sign in ((0, 1.0), (1, -1.0)):
            point = center + sign * reach * along
            quat = self.best_quat(arm, bar_yaw, np.pi)
            pos, cur = self.iks[arm].tcp()
            if all(held):
                lift_z = bar.half[2] + task.lift_height + 0.03
                plans.append(self.move(arm, np.array([pos[0], pos[1], lift_z]), cur, CLOSED))
            elif held[arm]:
                plans.append(self.move(arm, pos, cur, CLOSED))  # wait for the other hand
            else:
                plans.append(self.grasp(arm, point, quat, half_width, held[arm]))
        return plans


EXPERTS: dict[str, type[ScriptedExpert]] = {
    "reach": ReachExpert,
    "pick_place": PickPlaceExpert,
    "lift": LiftExpert,
}
