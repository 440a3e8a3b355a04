"""A simulated workcell: table, lights, main camera and the embodiment's arms, built in code with MjSpec.

`build_scene` composes the static parts here with the objects a task adds, compiles, and returns a `Scene`:
the compiled model and data plus the bookkeeping that maps the embodiment's state/action vectors onto MuJoCo
joints and actuators. Objects and tasks live in `tasks.py`; this module knows nothing about them.

World frame: the table top is z = 0, the (first) arm's base sits near the origin and faces +x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from actors.embodiments import Embodiment
from actors.sim.arms import (
    ARM_MODEL_OF,
    ARM_MODELS,
    WORLD_CONAFFINITY,
    WORLD_CONTYPE,
    BuiltArm,
    build_arm,
    tune_servos,
)

if TYPE_CHECKING:
    from actors.sim.tasks import Task

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]

PHYSICS_DT_MAX = 0.0025  # s: the largest physics step that keeps grasps stable with these contact settings
SERVO_HZ = 6.0  # natural frequency of the joint servos: a target is reached in ~1/(2 pi 6) = 27 ms


@dataclass(frozen=True)
class CameraPlacement:
    """A fixed camera looking from `pos` at `target`."""

    pos: Vec3  # m, world
    target: Vec3  # m, world: the point at the image centre
    fovy: float  # vertical field of view, degrees


@dataclass(frozen=True)
class SceneLayout:
    """Where things are in one embodiment's workcell (sizes scale with the arm's reach)."""

    arm_mounts: tuple[tuple[Vec3, float], ...]  # per arm: (base position on the table m, yaw deg)
    table_center: Vec2  # m
    table_half: Vec2  # table top half extents, m
    main_camera: CameraPlacement
    workspace_center: Vec2  # centre of the region where objects spawn, m
    workspace_half: Vec2  # half extents of that region, m
    object_half: float  # half size of a manipulated object (cube half edge), m
    hover_z: float  # tool height at which the fingertips clear every object and bin wall, m
    speed: float  # expert's tool speed, m/s (about a third of what the arm can do)


SCENE_LAYOUTS: dict[str, SceneLayout] = {
    "franka": SceneLayout(
        arm_mounts=(((0.0, 0.0, 0.0), 0.0),),
        table_center=(0.45, 0.0),
        table_half=(0.65, 0.6),
        main_camera=CameraPlacement((0.8, -0.5, 0.5), (0.45, 0.0, 0.12), 55.0),
        workspace_center=(0.5, 0.0),
        workspace_half=(0.08, 0.16),
        object_half=0.025,
        hover_z=0.17,
        speed=0.12,
    ),
    "yam_bimanual": SceneLayout(
        arm_mounts=(((0.0, 0.22, 0.0), 0.0), ((0.0, -0.22, 0.0), 0.0)),
        table_center=(0.3, 0.0),
        table_half=(0.5, 0.65),
        main_camera=CameraPlacement((0.1, 0.0, 0.5), (0.3, 0.0, 0.0), 62.0),
        workspace_center=(0.3, 0.0),
        workspace_half=(0.05, 0.14),
        object_half=0.022,
        hover_z=0.11,
        speed=0.1,
    ),
    "so100": SceneLayout(
        arm_mounts=(((0.0, 0.0, 0.0), 90.0),),
        table_center=(0.15, 0.0),
        table_half=(0.3, 0.3),
        main_camera=CameraPlacement((0.45, 0.0, 0.3), (0.16, 0.0, 0.02), 50.0),
        workspace_center=(0.18, 0.0),
        workspace_half=(0.035, 0.09),
        object_half=0.0125,
        hover_z=0.09,
        speed=0.05,
    ),
}
SCENE_LAYOUTS["so101"] = SCENE_LAYOUTS["so100"]


def look_at_quat(pos: Vec3, target: Vec3) -> list[float]:
    """Orientation of a camera at `pos` looking at `target` with image up towards world up.

    A MuJoCo camera looks along its -z axis with its y axis up in the image.
    """
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:  # looking straight down: image up is world +x
        right = np.array([0.0, -1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([right, up, -forward]).ravel())
    return quat.tolist()


def yaw_quat(deg: float) -> tuple[float, float, float, float]:
    h = math.radians(deg) / 2
    return (math.cos(h), 0.0, 0.0, math.sin(h))


class Scene:
    """A compiled workcell: model, data, and the maps between embodiment vectors and MuJoCo."""

    def __init__(
        self,
        spec: mujoco.MjSpec,
        embodiment: Embodiment,
        layout: SceneLayout,
        arms: tuple[BuiltArm, ...],
        substeps: int,
    ) -> None:
        self.spec = spec
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.embodiment = embodiment
        self.layout = layout
        self.arms = arms
        self.substeps = substeps
        m = self.model
        # Per arm joint (embodiment joint order): qpos address, dof address and servo actuator id.
        names = embodiment.joint_names
        self.joint_qpos = np.array([m.jnt_qposadr[m.joint(n).id] for n in names])
        self.joint_dof = np.array([m.jnt_dofadr[m.joint(n).id] for n in names])
        self.joint_act = np.array([m.actuator(f"{n}_servo").id for n in names])
        # Per gripper (embodiment gripper order): the two finger qpos addresses and actuator ids.
        self.finger_qpos = np.array([[m.jnt_qposadr[m.joint(f).id] for f in arm.fingers] for arm in arms])
        self.finger_act = np.array([[m.actuator(f"{f}_servo").id for f in arm.fingers] for arm in arms])
        self.strokes = np.array([arm.stroke for arm in arms])
        dof_names = embodiment.dof_names
        self._joint_slots = np.array([dof_names.index(n) for n in names])
        self._gripper_slots = np.array(embodiment.gripper_indices)
        self.tcp_site = np.array([m.site(arm.tcp_site).id for arm in arms])
        self.gripper_geoms = [np.array([m.geom(g).id for g in arm.gripper_geoms]) for arm in arms]
        self.finger_geoms = [np.array([m.geom(g).id for g in arm.finger_geoms]) for arm in arms]
        self.home = np.concatenate([np.asarray(ARM_MODELS[ARM_MODEL_OF[embodiment.name]].home) for _ in arms])
        self.set_state(self.home_state())
        tune_servos(m, self.data, self.joint_act, SERVO_HZ)

    # ------------------------------------------------------------------------------------- vectors

    def home_state(self) -> np.ndarray:
        """(S,) float32 start pose: the arm model's home joints, grippers open."""
        s = np.zeros(self.embodiment.state_dim, dtype=np.float32)
        s[self._joint_slots] = self.home
        return s

    def state(self) -> np.ndarray:
        """(S,) float32 joint positions (rad) and gripper closures in [0, 1] (0 open), in dof order."""
        s = np.empty(self.embodiment.state_dim, dtype=np.float32)
        s[self._joint_slots] = self.data.qpos[self.joint_qpos]
        s[self._gripper_slots] = self.gripper_closure()
        return s

    def gripper_closure(self) -> np.ndarray:
        """(G,) closure of each gripper from its fingers' travel: 0 open, 1 fingers touching."""
        opening = self.data.qpos[self.finger_qpos].mean(axis=1)
        return np.clip(1.0 - opening / self.strokes, 0.0, 1.0)

    def apply_action(self, action: np.ndarray) -> None:
        """Set the servo targets from an (A,) absolute joint-target action (clipped to the limits)."""
        a = np.clip(action, self.embodiment.action_low, self.embodiment.action_high)
        self.data.ctrl[self.joint_act] = a[self._joint_slots]
        opening = (1.0 - a[self._gripper_slots]) * self.strokes
        self.data.ctrl[self.finger_act] = opening[:, None]

    def set_state(self, state: np.ndarray) -> None:
        """Teleport the arms to `state` at rest, with servo targets holding it there."""
        d = self.data
        d.qpos[self.joint_qpos] = state[self._joint_slots]
        opening = (1.0 - state[self._gripper_slots]) * self.strokes
        d.qpos[self.finger_qpos] = opening[:, None]
        d.qvel[:] = 0.0
        self.apply_action(state)
        mujoco.mj_forward(self.model, d)

    def step(self) -> None:
        """Advance one control period."""
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    # ------------------------------------------------------------------------------------- queries

    @property
    def control_dt(self) -> float:
        return self.substeps * self.model.opt.timestep

    def tcp_pose(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        """Tool centre point of `arm`: position (3,) m and rotation matrix (3, 3), z = approach direction."""
        sid = self.tcp_site[arm]
        return self.data.site_xpos[sid].copy(), self.data.site_xmat[sid].reshape(3, 3).copy()

    def touching(self, geoms_a: np.ndarray, geoms_b: np.ndarray) -> bool:
        """True if any geom of `geoms_a` is in contact with any geom of `geoms_b` right now."""
        d = self.data
        if d.ncon == 0:
            return False
        g1, g2 = d.contact.geom1[: d.ncon], d.contact.geom2[: d.ncon]
        a1, a2 = np.isin(g1, geoms_a), np.isin(g2, geoms_a)
        b1, b2 = np.isin(g1, geoms_b), np.isin(g2, geoms_b)
        return bool(np.any((a1 & b2) | (a2 & b1)))


def build_scene(embodiment: Embodiment, task: Task, image_size: int) -> Scene:
    """Table, lights, main camera and arms for `embodiment`, plus the objects `task` adds, compiled."""
    layout = SCENE_LAYOUTS[embodiment.name]
    spec = mujoco.MjSpec()
    spec.modelname = f"{embodiment.name}_{task.name}"
    spec.compiler.degree = False  # joint ranges are in radians, like everything else here
    substeps = math.ceil(1.0 / (embodiment.control_hz * PHYSICS_DT_MAX))
    spec.option.timestep = 1.0 / (embodiment.control_hz * substeps)  # a whole number of steps per tick
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0  # stiffer friction: grasped objects do not creep out of the fingers
    spec.visual.quality.shadowsize = 0
    spec.visual.quality.offsamples = 0  # no multisampling: 2x faster at 96 px, and depth reads back exact
    spec.visual.global_.offwidth = max(640, image_size)
    spec.visual.global_.offheight = max(480, image_size)
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.45, 0.45, 0.45]
    spec.visual.map.znear = 0.005  # fraction of the model extent: wrist cameras see objects a few cm away

    world = spec.worldbody
    world.add_light(
        name="sun",
        type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        dir=[0.3, 0.2, -1.0],
        pos=[0, 0, 2.0],
        diffuse=[0.6, 0.6, 0.6],
        castshadow=False,
    )
    cx, cy = layout.table_center
    hx, hy = layout.table_half
    world.add_geom(
        name="table",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[hx, hy, 0.02],
        pos=[cx, cy, -0.02],
        rgba=[0.55, 0.47, 0.38, 1],
        friction=[1.0, 0.02, 0.002],
        contype=WORLD_CONTYPE,
        conaffinity=WORLD_CONAFFINITY,
    )
    cam = layout.main_camera
    world.add_camera(
        name=embodiment.main_camera, pos=list(cam.pos), fovy=cam.fovy, quat=look_at_quat(cam.pos, cam.target)
    )

    wrist_cameras = [c for c in embodiment.cameras if c != embodiment.main_camera]
    if len(wrist_cameras) != len(embodiment.arms):
        raise ValueError(f"{embodiment.name}: expected one wrist camera per arm, got {wrist_cameras}")
    model = ARM_MODELS[ARM_MODEL_OF[embodiment.name]]
    arms = tuple(
        build_arm(spec, model, embodiment, i, pos, yaw_quat(yaw), wrist_cameras[i])
        for i, (pos, yaw) in enumerate(layout.arm_mounts)
    )
    task.add_objects(spec, layout)
    scene = Scene(spec, embodiment, layout, arms, substeps)
    task.bind(scene)
    return scene
