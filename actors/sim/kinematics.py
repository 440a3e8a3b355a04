"""Inverse kinematics and tool motion for one arm, from MuJoCo's Jacobians.

`ArmIK` solves for joint positions that put an arm's tool centre point (TCP) at a position and orientation:
damped least squares on a scratch copy of the state (the live simulation is never touched), joint limits
enforced each iteration, and for a redundant arm (Franka) a pull towards the home posture in the null space.
`ArmIK.toward` is what experts call each control tick: it moves the TCP a bounded step along a straight line
(and rotates it a bounded angle) towards a goal, so the joint targets it returns change smoothly.
"""

from __future__ import annotations

import mujoco
import numpy as np

from actors.sim.scene import Scene

DOWN = np.array([0.0, 0.0, -1.0])


def top_down_quat(yaw: float) -> np.ndarray:
    """(4,) TCP orientation with the approach axis pointing down and the closing axis at `yaw` - 90 deg."""
    c, s = np.cos(yaw), np.sin(yaw)
    mat = np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])  # columns: x, y (closing), z (approach)
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.ravel())
    return q


def rotation_angle(qa: np.ndarray, qb: np.ndarray) -> float:
    """Angle (rad) of the rotation between two orientations."""
    v = np.zeros(3)
    mujoco.mju_subQuat(v, qa, qb)
    return float(np.linalg.norm(v))


class ArmIK:
    """Inverse kinematics of one arm of a scene."""

    def __init__(self, scene: Scene, arm: int, rot_weight: float = 0.3, damping: float = 0.01) -> None:
        self.scene, self.arm = scene, arm
        self.model = scene.model
        self.scratch = mujoco.MjData(scene.model)
        names = scene.embodiment.joint_names
        mine = [i for i, n in enumerate(names) if n in scene.arms[arm].joints]
        self.qadr = scene.joint_qpos[mine]
        self.dadr = scene.joint_dof[mine]
        self.act = scene.joint_act[mine]
        self.home = scene.home[mine]
        self.low = self.model.jnt_range[[self.model.joint(names[i]).id for i in mine], 0]
        self.high = self.model.jnt_range[[self.model.joint(names[i]).id for i in mine], 1]
        self.site = scene.tcp_site[arm]
        self.rot_weight = rot_weight  # m per rad: trades orientation error against position error
        self.damping = damping
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def joints(self) -> np.ndarray:
        """(n,) this arm's measured joint positions, rad."""
        return self.scene.data.qpos[self.qadr].copy()

    def tcp(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured TCP position (3,) m and orientation quaternion (4,)."""
        pos, mat = self.scene.tcp_pose(self.arm)
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, mat.ravel())
        return pos, q

    def solve(
        self, pos: np.ndarray, quat: np.ndarray, seed: np.ndarray, iters: int = 40, tol: float = 5e-4
    ) -> tuple[np.ndarray, float]:
        """Joint positions (n,) reaching (pos, quat) from `seed`, and the remaining weighted error."""
        m, d = self.model, self.scratch
        d.qpos[:] = self.scene.data.qpos
        q = seed.copy()
        err_norm = np.inf
        cur = np.zeros(4)
        rot_err = np.zeros(3)
        for _ in range(iters):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            x = d.site_xpos[self.site]
            mat = d.site_xmat[self.site].reshape(3, 3)
            mujoco.mju_mat2Quat(cur, d.site_xmat[self.site])
            mujoco.mju_subQuat(rot_err, quat, cur)  # in the TCP frame
            err = np.concatenate([pos - x, self.rot_weight * (mat @ rot_err)])
            prev, err_norm = err_norm, float(np.linalg.norm(err))
            if err_norm < tol or err_norm > 0.97 * prev:  # done, or stalled (a limit or an unreachable pose)
                break
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.dadr], self.rot_weight * self._jacr[:, self.dadr]])  # (6, n)
            jjt = jac @ jac.T + self.damping**2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            if jac.shape[1] > 6:  # redundant: drift towards the home posture without moving the TCP
                null = np.eye(jac.shape[1]) - np.linalg.pinv(jac) @ jac
                dq += null @ (0.1 * (self.home - q))
            dq *= min(1.0, 0.3 / (np.abs(dq).max() + 1e-12))  # at most 0.3 rad per iteration
            q = np.clip(q + dq, self.low, self.high)
        return q, err_norm

    def toward(
        self, goal_pos: np.ndarray, goal_quat: np.ndarray, speed: float, dt: float, angular_speed: float = 1.5
    ) -> tuple[np.ndarray, float]:
        """Joint targets (n,) one control tick along a straight line from the TCP towards a goal.

        The step is at most `speed` * `dt` metres and `angular_speed` * `dt` radians. It starts from where
        the servos are being sent (the current joint targets, part of the simulation state), not from the
        lagging measured pose, so the tool moves at `speed` and consecutive targets change by equal steps;
        when the targets are far from the measured pose (a policy sent the arm somewhere wild) it starts from
        the measured pose instead. Also returns the IK error of that step (large: the path is blocked).
        """
        max_step = speed * dt
        measured_pos, _ = self.tcp()
        q_base = self.scene.data.ctrl[self.act].copy()
        pos, quat = self.forward(q_base)
        if np.linalg.norm(pos - measured_pos) > 3 * max_step:
            q_base = self.joints()
            pos, quat = self.tcp()
        delta = goal_pos - pos
        dist = np.linalg.norm(delta)
        way_pos = goal_pos if dist <= max_step else pos + delta * (max_step / dist)
        rot = np.zeros(3)
        mujoco.mju_subQuat(rot, goal_quat, quat)
        angle = np.linalg.norm(rot)
        max_angle = angular_speed * dt
        if angle > max_angle:
            rot *= max_angle / angle
        way_quat = quat.copy()
        mujoco.mju_quatIntegrate(way_quat, rot, 1.0)
        return self.solve(way_pos, way_quat, q_base)

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and quaternion (4,) at joint positions `q` (n,)."""
        d = self.scratch
        d.qpos[:] = self.scene.data.qpos
        d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, d)
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, d.site_xmat[self.site])
        return d.site_xpos[self.site].copy(), quat
