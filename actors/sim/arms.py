"""Fast primitive-geometry models of the fleet's arms, built into a MuJoCo MjSpec.

Each arm is a kinematic chain copied from the vendor's public model (joint frames, axes and link offsets;
joint limits come from `actors/embodiments.py`), drawn with capsules between joint origins, with a parallel
two-finger gripper whose frame has z along the approach direction and y along the closing direction. The
capsules stand in for meshes: they render at hundreds of frames per second on a CPU, and collide with the
table and objects (not with each other: the experts keep the links apart, and adjacent capsules overlap).

Sources of the chains (public specs):
- Franka Panda: Craig's modified DH parameters from Franka's documentation, flange 0.107 m, hand -45 deg
  about the flange axis, fingertip centre 0.1034 m from the hand.
- YAM: i2rt's `yam_4310_linear` MJCF body frames (upper arm 0.264 m, forearm 0.245 m), grasp point 0.1347 m
  from link 6.
- SO-101: TheRobotStudio's `so101_new_calib` URDF joint origins (upper arm 0.1126 m, forearm 0.1349 m), whose
  zero pose is LeRobot's calibrated 0 degrees. SO-100 has the same link lengths; it differs in limits.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from actors.embodiments import Embodiment

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]

# Collision groups: arm geoms touch the world and objects but not each other.
ARM_CONTYPE, ARM_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 3
# Stiff contacts between fingers and objects: MuJoCo's default (0.02 s time constant) scales contact stiffness
# with the objects' mass, and a 50 g cube squeezed by a 15 N gripper would sink centimetres into the fingers.
GRASP_SOLREF = (0.004, 1.0)  # time constant (s, at least 2 physics steps), damping ratio
GRASP_SOLIMP = (0.95, 0.99, 0.001, 0.5, 2.0)


def quat_from_rpy(roll: float, pitch: float, yaw: float) -> Quat:
    """URDF roll-pitch-yaw (fixed axes x, y, z) as a MuJoCo (w, x, y, z) quaternion."""
    q = np.zeros(4)
    mujoco.mju_euler2Quat(q, np.array([roll, pitch, yaw], dtype=float), "XYZ")
    return tuple(float(v) for v in q)  # type: ignore[return-value]


def _rot_x(deg: float) -> Quat:
    h = np.deg2rad(deg) / 2
    return (float(np.cos(h)), float(np.sin(h)), 0.0, 0.0)


@dataclass(frozen=True)
class LinkFrame:
    """One moving body: where its joint sits in the parent body's frame and how thick it is drawn."""

    pos: Vec3  # joint origin in the parent frame, m
    quat: Quat  # joint frame orientation in the parent frame (w, x, y, z); the joint turns about its z
    radius: float  # capsule radius drawn from this origin to the next one, m
    mass: float  # kg


@dataclass(frozen=True)
class GripperModel:
    """A parallel gripper mounted on the last link; its frame: z = approach, y = closing direction."""

    mount_pos: Vec3  # mount origin in the last link's frame, m
    mount_quat: Quat  # mount orientation in the last link's frame
    tcp_depth: float  # mount origin to the fingertip centre along z, m (the tool centre point)
    finger_length: float  # along z, m
    finger_width: float  # along x, m
    finger_thickness: float  # along y, m
    stroke: float  # travel of each finger from closed (touching) to open, m
    grip_force: float  # force limit of each finger servo, N


@dataclass(frozen=True)
class ArmModel:
    """One arm's geometry: its chain, gripper and start pose."""

    base_pos: Vec3  # first joint's parent frame origin relative to the arm's mount point on the table, m
    base_quat: Quat
    base_radius: float  # pedestal cylinder drawn under the first joint, m
    links: tuple[LinkFrame, ...]  # one per arm joint, in joint order
    gripper: GripperModel
    home: tuple[float, ...]  # joint positions of the start pose, rad
    armature: float  # reflected rotor inertia added to each joint, kg m^2 (keeps the servos stiff and stable)


_FRANKA = ArmModel(
    base_pos=(0.0, 0.0, 0.0),
    base_quat=(1.0, 0.0, 0.0, 0.0),
    base_radius=0.08,
    links=(
        LinkFrame((0.0, 0.0, 0.333), (1.0, 0.0, 0.0, 0.0), 0.06, 3.0),
        LinkFrame((0.0, 0.0, 0.0), _rot_x(-90), 0.06, 3.0),
        LinkFrame((0.0, -0.316, 0.0), _rot_x(90), 0.055, 2.5),
        LinkFrame((0.0825, 0.0, 0.0), _rot_x(90), 0.055, 2.5),
        LinkFrame((-0.0825, 0.384, 0.0), _rot_x(-90), 0.05, 2.0),
        LinkFrame((0.0, 0.0, 0.0), _rot_x(90), 0.045, 1.5),
        LinkFrame((0.088, 0.0, 0.0), _rot_x(90), 0.04, 0.5),
    ),
    gripper=GripperModel(
        mount_pos=(0.0, 0.0, 0.107),
        mount_quat=(0.9238795, 0.0, 0.0, -0.3826834),  # -45 deg about the flange axis
        tcp_depth=0.1034,
        finger_length=0.045,
        finger_width=0.02,
        finger_thickness=0.012,
        stroke=0.04,
        grip_force=15.0,
    ),
    home=(0.0, -0.31, 0.0, -2.35, 0.0, 2.04, 0.785),  # tool 0.35 m over the table, pointing down
    armature=0.1,
)

_YAM = ArmModel(
    base_pos=(0.0, 0.0, 0.0631),
    base_quat=(0.7071068, 0.0, 0.0, 0.7071068),
    base_radius=0.045,
    links=(
        LinkFrame((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), 0.035, 0.3),
        LinkFrame((2.5e-05, -0.02, 0.0409), (0.5, 0.5, 0.5, 0.5), 0.035, 1.2),
        LinkFrame((0.264, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), 0.03, 0.9),
        LinkFrame((-0.245, -0.06, 0.0), (1.0, 0.0, 0.0, 0.0), 0.03, 0.45),
        LinkFrame((-0.074, -0.0395, 2.5e-05), (0.5, -0.5, 0.5, 0.5), 0.028, 0.35),
        LinkFrame((0.0, 0.0353, 0.0395), (0.7071068, -0.7071068, 0.0, 0.0), 0.028, 0.3),
    ),
    gripper=GripperModel(
        mount_pos=(0.0, 0.0, 0.0),
        mount_quat=(1.0, 0.0, 0.0, 0.0),
        tcp_depth=0.1347,
        finger_length=0.05,
        finger_width=0.02,
        finger_thickness=0.012,
        stroke=0.0475,
        grip_force=15.0,
    ),
    home=(0.0, 1.6, 1.43, -1.4, 0.0, 0.0),  # tool 0.14 m over the table, pointing down
    armature=0.05,
)

# The URDF's base-to-pan offset is (0.0208, -0.0231, 0.0949) m; the mount point here sits under the pan axis.
_SO = ArmModel(
    base_pos=(0.0, 0.0, 0.0948817),
    base_quat=quat_from_rpy(-3.14159, 0.0, 1.5708),
    base_radius=0.03,
    links=(
        LinkFrame((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), 0.02, 0.1),
        LinkFrame((-0.0303992, -0.0182778, -0.0542), quat_from_rpy(-1.5708, -1.5708, 0.0), 0.018, 0.1),
        LinkFrame((-0.11257, -0.028, 0.0), quat_from_rpy(0.0, 0.0, 1.5708), 0.016, 0.1),
        LinkFrame((-0.1349, 0.0052, 0.0), quat_from_rpy(0.0, 0.0, -1.5708), 0.015, 0.08),
        LinkFrame((0.0, -0.0611, 0.0181), quat_from_rpy(1.5708, 0.0, 3.14159), 0.015, 0.08),
    ),
    gripper=GripperModel(
        mount_pos=(0.0, 0.0, 0.0),
        mount_quat=(0.0, 1.0, 0.0, 0.0),  # the jaws point along the gripper link's -z
        tcp_depth=0.085,
        finger_length=0.035,
        finger_width=0.014,
        finger_thickness=0.008,
        stroke=0.025,
        grip_force=4.0,
    ),
    home=(0.0, -0.26, 0.52, 1.32, 0.0),  # tool 0.09 m over the table, pointing down
    armature=0.002,
)

ARM_MODELS: dict[str, ArmModel] = {"franka": _FRANKA, "yam": _YAM, "so100": _SO, "so101": _SO}
# Which arm model each embodiment's arms use.
ARM_MODEL_OF: dict[str, str] = {"franka": "franka", "yam_bimanual": "yam", "so100": "so100", "so101": "so101"}


@dataclass(frozen=True)
class BuiltArm:
    """Names inside the compiled model for one arm (the prefix keeps two arms apart)."""

    joints: tuple[str, ...]  # arm joint names, in embodiment order
    fingers: tuple[str, str]  # finger slide joints
    actuators: tuple[str, ...]  # arm joint actuators, then the two finger actuators
    tcp_site: str  # tool centre point between the fingertips: z = approach, y = closing
    gripper_geoms: tuple[str, ...]  # palm and finger geoms (what counts as the gripper touching)
    finger_geoms: tuple[str, str]
    wrist_camera: str
    stroke: float  # finger travel, m


def build_arm(
    spec: mujoco.MjSpec,
    model: ArmModel,
    embodiment: Embodiment,
    arm_index: int,
    mount_pos: Vec3,
    mount_quat: Quat,
    wrist_camera: str,
    rgba: tuple[float, float, float, float] = (0.85, 0.85, 0.88, 1.0),
) -> BuiltArm:
    """Add one arm to `spec` at `mount_pos` on the table; names come from the embodiment's dof names."""
    dofs = embodiment.arms[arm_index]
    joint_names = tuple(n for n in dofs if n not in embodiment.grippers)
    (gripper_name,) = tuple(n for n in dofs if n in embodiment.grippers)
    if len(joint_names) != len(model.links):
        raise ValueError(f"arm model has {len(model.links)} joints, embodiment arm has {joint_names}")
    limits = dict(zip(embodiment.joint_names, embodiment.joint_limits, strict=True))

    mount = spec.worldbody.add_body(name=f"{gripper_name}_mount", pos=list(mount_pos), quat=list(mount_quat))
    # Pedestal from the table up to the first joint's frame (static, part of the world).
    base_top = np.asarray(model.base_pos)
    mount.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[model.base_radius, base_top[2] / 2 if base_top[2] > 0 else 0.01, 0],
        pos=[base_top[0], base_top[1], base_top[2] / 2 if base_top[2] > 0 else 0.01],
        rgba=[0.25, 0.25, 0.28, 1],
        contype=0,
        conaffinity=0,
    )
    parent = mount.add_body(name=f"{gripper_name}_base", pos=list(model.base_pos), quat=list(model.base_quat))
    bodies = []
    for i, (name, link) in enumerate(zip(joint_names, model.links, strict=True)):
        body = parent.add_body(name=f"{name}_link", pos=list(link.pos), quat=list(link.quat), gravcomp=1.0)
        body.add_joint(
            name=name,
            type=mujoco.mjtJoint.mjJNT_HINGE,
            axis=[0, 0, 1],
            range=list(limits[name]),
            armature=model.armature,
            damping=model.armature * 2.0,  # a little passive damping against ringing between servo updates
        )
        end = model.links[i + 1].pos if i + 1 < len(model.links) else model.gripper.mount_pos
        _add_segment(body, np.zeros(3), np.asarray(end), link.radius, link.mass, rgba)
        bodies.append(body)
        parent = body

    g = model.gripper
    hand = parent.add_body(
        name=f"{gripper_name}_hand", pos=list(g.mount_pos), quat=list(g.mount_quat), gravcomp=1.0
    )
    palm_len = g.tcp_depth - g.finger_length / 2
    palm_half = (g.finger_width, g.stroke + g.finger_thickness, max(palm_len / 2, 0.005))
    palm = f"{gripper_name}_palm"
    hand.add_geom(
        name=palm,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=list(palm_half),
        pos=[0, 0, palm_half[2]],
        rgba=[0.2, 0.2, 0.22, 1],
        mass=0.3 * model.links[-1].mass,
        contype=ARM_CONTYPE,
        conaffinity=ARM_CONAFFINITY,
    )
    hand.add_site(name=f"{gripper_name}_tcp", pos=[0, 0, g.tcp_depth], size=[0.004, 0, 0], rgba=[1, 0, 0, 0])
    fingers, finger_geoms = [], []
    for side, sign in (("a", 1.0), ("b", -1.0)):
        finger = hand.add_body(name=f"{gripper_name}_finger_{side}", pos=[0, 0, g.tcp_depth], gravcomp=1.0)
        joint = f"{gripper_name}_finger_{side}"
        finger.add_joint(
            name=joint,
            type=mujoco.mjtJoint.mjJNT_SLIDE,
            axis=[0, sign, 0],
            range=[0.0, g.stroke],
            armature=0.01,
            damping=1.0,
        )
        geom = f"{gripper_name}_finger_{side}_pad"
        finger.add_geom(
            name=geom,
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[g.finger_width / 2, g.finger_thickness / 2, g.finger_length / 2],
            pos=[0, sign * g.finger_thickness / 2, 0],
            rgba=[0.15, 0.15, 0.15, 1],
            mass=0.02,
            friction=[1.5, 0.02, 0.002],
            condim=4,
            solref=list(GRASP_SOLREF),
            solimp=list(GRASP_SOLIMP),
            contype=ARM_CONTYPE,
            conaffinity=ARM_CONAFFINITY,
        )
        fingers.append(joint)
        finger_geoms.append(geom)
    # Wrist camera behind the palm on its +x side, looking along the approach direction, tilted towards the
    # fingertips so they stay in view (the way wrist cameras are mounted on the real arms).
    cam_quat = np.zeros(4)
    mujoco.mju_euler2Quat(cam_quat, np.array([np.pi, np.deg2rad(-25), 0.0]), "xyz")
    hand.add_camera(
        name=wrist_camera,
        pos=[g.finger_width + 0.03, 0, max(palm_len - 0.02, 0.0)],
        quat=list(cam_quat),
        fovy=75.0,
    )

    actuators = []
    for name in joint_names:
        act = spec.add_actuator(name=f"{name}_servo", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=1.0, kv=0.0)  # gains are tuned after compiling, see `tune_servos`
        act.ctrlrange = list(limits[name])
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuators.append(act.name)
    for joint in fingers:
        act = spec.add_actuator(name=f"{joint}_servo", target=joint, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        # Full force once the finger is held 30% of the stroke short of its target (by the object).
        act.set_to_position(kp=g.grip_force / (0.3 * g.stroke), dampratio=1.0)
        act.ctrlrange = [0.0, g.stroke]
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.forcerange = [-g.grip_force, g.grip_force]
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuators.append(act.name)
    return BuiltArm(
        joints=joint_names,
        fingers=(fingers[0], fingers[1]),
        actuators=tuple(actuators),
        tcp_site=f"{gripper_name}_tcp",
        gripper_geoms=(palm, *finger_geoms),
        finger_geoms=(finger_geoms[0], finger_geoms[1]),
        wrist_camera=wrist_camera,
        stroke=g.stroke,
    )


def _add_segment(
    body: mujoco.MjsBody,
    start: np.ndarray,
    end: np.ndarray,
    radius: float,
    mass: float,
    rgba: tuple[float, float, float, float],
) -> None:
    """A capsule from `start` to `end` (a sphere when they nearly coincide), colliding with the world."""
    common = dict(rgba=list(rgba), mass=mass, contype=ARM_CONTYPE, conaffinity=ARM_CONAFFINITY)
    if np.linalg.norm(end - start) < 1e-3:
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[radius, 0, 0], pos=list(start), **common)
    else:
        body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CAPSULE,
            size=[radius, 0, 0],
            fromto=[*start.tolist(), *end.tolist()],
            **common,
        )


def tune_servos(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    actuator_ids: np.ndarray,
    natural_hz: float,
    damping_ratio: float = 1.0,
) -> None:
    """Set each joint servo's stiffness from the joint's inertia at the current pose.

    kp = m * (2 pi f)^2 and kv = 2 zeta sqrt(kp m), with m the joint's diagonal entry of the mass matrix: every
    joint then settles in about the same time (~1 / (2 pi f) s), from a 1 kg Franka shoulder to a 20 g SO wrist.
    """
    mujoco.mj_forward(model, data)
    mass = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, mass)
    omega = 2 * np.pi * natural_hz
    for a in actuator_ids:
        dof = model.jnt_dofadr[model.actuator_trnid[a, 0]]
        m = mass[dof, dof]
        kp = m * omega**2
        kv = 2 * damping_ratio * np.sqrt(kp * m)
        model.actuator_gainprm[a, 0] = kp
        model.actuator_biasprm[a, 1] = -kp
        model.actuator_biasprm[a, 2] = -kv
