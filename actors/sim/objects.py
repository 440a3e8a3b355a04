"""Things on the table that tasks place each episode: coloured shapes, a bin and a bar.

Shapes and colours change per episode without recompiling the model (a recompile would also mean a new GL
context, far over the reset budget): an object slot carries one geom per shape and shows only the one in use;
the others leave the collision groups and move to a geom group no camera draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from actors.sim.arms import GRASP_SOLIMP, GRASP_SOLREF, WORLD_CONAFFINITY, WORLD_CONTYPE
from actors.sim.rendering import HIDDEN_GROUP

# Clear, well separated colours, named as an instruction would name them.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.12, 0.1),
    "green": (0.1, 0.72, 0.2),
    "blue": (0.12, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.8),
}
SHAPES: tuple[str, ...] = ("cube", "ball", "cylinder")
OBJECT_FRICTION = (1.0, 0.02, 0.002)  # sliding, torsional, rolling


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class ObjectSlot:
    """A free-floating object that can be any of `SHAPES` (half size `half`) in any colour."""

    def __init__(self, spec: mujoco.MjSpec, name: str, half: float, mass: float) -> None:
        self.name, self.half = name, half
        body = spec.worldbody.add_body(name=name, pos=[0, 0, half])
        body.add_freejoint(name=f"{name}_free")
        # One inertia for every shape (the cube's): the physics of a push differs little, and it stays fixed.
        body.explicitinertial = True
        body.mass = mass
        body.ipos = [0.0, 0.0, 0.0]  # centre of mass at the centre: an offset one makes a ball roll away
        body.iquat = [1.0, 0.0, 0.0, 0.0]
        body.inertia = [mass * (2 * half) ** 2 / 6] * 3
        sizes = {"cube": [half, half, half], "ball": [half, 0, 0], "cylinder": [half, half, 0]}
        types = {
            "cube": mujoco.mjtGeom.mjGEOM_BOX,
            "ball": mujoco.mjtGeom.mjGEOM_SPHERE,
            "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
        }
        for shape in SHAPES:
            body.add_geom(
                name=f"{name}_{shape}",
                type=types[shape],
                size=sizes[shape],
                friction=list(OBJECT_FRICTION),
                condim=4,
                contype=WORLD_CONTYPE,
                conaffinity=WORLD_CONAFFINITY,
                solref=list(GRASP_SOLREF),
                solimp=list(GRASP_SOLIMP),
            )
        self.shape, self.colour = SHAPES[0], next(iter(COLOURS))

    def bind(self, model: mujoco.MjModel) -> None:
        self._model = model
        self.body_id = model.body(self.name).id
        self.qpos_adr = model.jnt_qposadr[model.joint(f"{self.name}_free").id]
        self.dof_adr = model.jnt_dofadr[model.joint(f"{self.name}_free").id]
        self.geom_ids = {s: model.geom(f"{self.name}_{s}").id for s in SHAPES}

    @property
    def geom(self) -> np.ndarray:
        """(1,) id of the geom in use, the thing a gripper touches."""
        return np.array([self.geom_ids[self.shape]])

    def place(self, data: mujoco.MjData, shape: str, colour: str, xy: np.ndarray, yaw: float) -> None:
        """Show `shape` in `colour`, resting on the table at `xy` turned by `yaw` rad."""
        m = self._model
        self.shape, self.colour = shape, colour
        for s, gid in self.geom_ids.items():
            used = s == shape
            m.geom_contype[gid] = WORLD_CONTYPE if used else 0
            m.geom_conaffinity[gid] = WORLD_CONAFFINITY if used else 0
            m.geom_group[gid] = 0 if used else HIDDEN_GROUP
            m.geom_rgba[gid] = (*COLOURS[colour], 1.0)
        data.qpos[self.qpos_adr : self.qpos_adr + 3] = (xy[0], xy[1], self.half)
        data.qpos[self.qpos_adr + 3 : self.qpos_adr + 7] = _yaw_quat(yaw)
        data.qvel[self.dof_adr : self.dof_adr + 6] = 0.0

    def position(self, data: mujoco.MjData) -> np.ndarray:
        return data.xpos[self.body_id].copy()

    def rotation(self, data: mujoco.MjData) -> np.ndarray:
        return data.xmat[self.body_id].reshape(3, 3).copy()

    def yaw(self, data: mujoco.MjData) -> float:
        r = self.rotation(data)
        return float(np.arctan2(r[1, 0], r[0, 0]))


@dataclass(frozen=True)
class BinGeometry:
    inner_half: float  # half width of the inside, m
    wall_height: float  # m
    wall_thickness: float  # m


class Bin:
    """An open box fixed to the table; it moves between episodes by editing its body position."""

    def __init__(self, spec: mujoco.MjSpec, name: str, geometry: BinGeometry) -> None:
        self.name, self.geometry = name, geometry
        g = geometry
        body = spec.worldbody.add_body(name=name, pos=[0, 0, 0])
        outer = g.inner_half + g.wall_thickness
        walls = [
            ([outer, outer, g.wall_thickness / 2], [0, 0, g.wall_thickness / 2]),  # floor
            (
                [g.wall_thickness / 2, outer, g.wall_height / 2],
                [outer - g.wall_thickness / 2, 0, g.wall_height / 2],
            ),
            (
                [g.wall_thickness / 2, outer, g.wall_height / 2],
                [-outer + g.wall_thickness / 2, 0, g.wall_height / 2],
            ),
            (
                [outer, g.wall_thickness / 2, g.wall_height / 2],
                [0, outer - g.wall_thickness / 2, g.wall_height / 2],
            ),
            (
                [outer, g.wall_thickness / 2, g.wall_height / 2],
                [0, -outer + g.wall_thickness / 2, g.wall_height / 2],
            ),
        ]
        for i, (size, pos) in enumerate(walls):
            body.add_geom(
                name=f"{name}_wall{i}",
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=size,
                pos=pos,
                contype=WORLD_CONTYPE,
                conaffinity=WORLD_CONAFFINITY,
            )
        self.colour = next(iter(COLOURS))

    def bind(self, model: mujoco.MjModel) -> None:
        self._model = model
        self.body_id = model.body(self.name).id
        self.geom_ids = np.array([model.geom(f"{self.name}_wall{i}").id for i in range(5)])

    def place(self, xy: np.ndarray, colour: str) -> None:
        self.colour = colour
        self._model.body_pos[self.body_id] = (xy[0], xy[1], 0.0)
        self._model.geom_rgba[self.geom_ids] = (*COLOURS[colour], 1.0)

    def center(self) -> np.ndarray:
        return self._model.body_pos[self.body_id].copy()

    def contains(self, point: np.ndarray, margin: float) -> bool:
        """True if `point` is inside the bin's walls by at least `margin` and below their top."""
        c, g = self.center(), self.geometry
        inside = np.all(np.abs(point[:2] - c[:2]) <= g.inner_half - margin)
        return bool(inside and point[2] < c[2] + g.wall_height)


class Bar:
    """A long box (half extents `half`: x thin, y long, z thin) that needs two hands to lift level."""

    def __init__(self, spec: mujoco.MjSpec, name: str, half: tuple[float, float, float], mass: float) -> None:
        self.name, self.half = name, half
        body = spec.worldbody.add_body(name=name, pos=[0, 0, half[2]])
        body.add_freejoint(name=f"{name}_free")
        body.add_geom(
            name=f"{name}_geom",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=list(half),
            mass=mass,
            friction=list(OBJECT_FRICTION),
            condim=4,
            contype=WORLD_CONTYPE,
            conaffinity=WORLD_CONAFFINITY,
            solref=list(GRASP_SOLREF),
            solimp=list(GRASP_SOLIMP),
        )
        self.colour = next(iter(COLOURS))

    def bind(self, model: mujoco.MjModel) -> None:
        self._model = model
        self.body_id = model.body(self.name).id
        self.qpos_adr = model.jnt_qposadr[model.joint(f"{self.name}_free").id]
        self.dof_adr = model.jnt_dofadr[model.joint(f"{self.name}_free").id]
        self.geom = np.array([model.geom(f"{self.name}_geom").id])

    def place(self, data: mujoco.MjData, colour: str, xy: np.ndarray, yaw: float) -> None:
        self.colour = colour
        self._model.geom_rgba[self.geom] = (*COLOURS[colour], 1.0)
        data.qpos[self.qpos_adr : self.qpos_adr + 3] = (xy[0], xy[1], self.half[2])
        data.qpos[self.qpos_adr + 3 : self.qpos_adr + 7] = _yaw_quat(yaw)
        data.qvel[self.dof_adr : self.dof_adr + 6] = 0.0

    def position(self, data: mujoco.MjData) -> np.ndarray:
        return data.xpos[self.body_id].copy()

    def rotation(self, data: mujoco.MjData) -> np.ndarray:
        return data.xmat[self.body_id].reshape(3, 3).copy()
