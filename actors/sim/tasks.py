"""Tasks: what is on the table, the language instruction, and the physical check of success.

A task adds its objects to the scene before compiling (`add_objects`), finds them in the compiled model
(`bind`), lays out an episode from a random generator (`reset`, returns the instruction) and judges success
from the physics state alone (`success`): contacts and object poses, never from what an expert believes.

Tasks are deliberately small (few objects, clear colours, one instruction template) so that a tiny policy can
learn them from tens of demonstrations; the instruction names what only vision can find (colour and shape).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import mujoco
import numpy as np

from actors.sim.objects import COLOURS, SHAPES, Bar, Bin, BinGeometry, ObjectSlot
from actors.sim.scene import Scene, SceneLayout


def sample_separated(
    rng: np.random.Generator, n: int, center: tuple[float, float], half: tuple[float, float], min_dist: float
) -> np.ndarray:
    """(n, 2) points uniform in the rectangle, pairwise at least `min_dist` apart (rejection sampling)."""
    c, h = np.asarray(center), np.asarray(half)
    for _ in range(1000):
        pts = c + rng.uniform(-1.0, 1.0, size=(n, 2)) * h
        dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n) * 1e9
        if dist.min() >= min_dist:
            return pts
    raise RuntimeError(f"cannot place {n} objects {min_dist} m apart in a {2 * h[0]}x{2 * h[1]} m region")


def object_mass(half: float) -> float:
    """kg: a wooden cube of half edge `half` (600 kg/m^3), at least 30 g so that contacts stay stiff."""
    return max(0.03, 600.0 * (2 * half) ** 3)


class Task(ABC):
    """One kind of episode on one scene. Holds the current episode's layout (target, colours)."""

    name: ClassVar[str]
    time_limit_s: ClassVar[float]  # episode length limit in control time, s (about twice the expert's)

    def __init__(self) -> None:
        self.instruction = ""

    @abstractmethod
    def add_objects(self, spec: mujoco.MjSpec, layout: SceneLayout) -> None: ...

    @abstractmethod
    def bind(self, scene: Scene) -> None: ...

    @abstractmethod
    def reset(self, scene: Scene, rng: np.random.Generator) -> str:
        """Lay out a new episode (objects only: the env puts the arm home) and return its instruction."""

    @abstractmethod
    def success(self, scene: Scene) -> bool:
        """Whether the task is done, from the physics state (called after every control tick)."""

    def all_gripper_geoms(self, scene: Scene) -> np.ndarray:
        return np.concatenate(scene.gripper_geoms)


class ReachTask(Task):
    """Touch the named object among distractors with the gripper, and stay on it for `hold_s`.

    Staying on it is what separates reaching from flailing: an arm swept at random brushes objects often,
    but rarely rests its gripper on one.
    """

    name = "reach"
    time_limit_s = 6.0
    n_objects = 3
    hold_s = 0.3  # s of continuous gripper contact with the target

    def add_objects(self, spec: mujoco.MjSpec, layout: SceneLayout) -> None:
        self.layout = layout
        mass = object_mass(layout.object_half)
        self.objects = [
            ObjectSlot(spec, f"object{i}", layout.object_half, mass) for i in range(self.n_objects)
        ]
        self.target = self.objects[0]

    def bind(self, scene: Scene) -> None:
        for obj in self.objects:
            obj.bind(scene.model)

    def reset(self, scene: Scene, rng: np.random.Generator) -> str:
        lay = self.layout
        xy = sample_separated(
            rng, self.n_objects, lay.workspace_center, lay.workspace_half, 5.0 * lay.object_half
        )
        colours = rng.choice(list(COLOURS), size=self.n_objects, replace=False)
        shapes = rng.choice(SHAPES, size=self.n_objects)
        for obj, p, colour, shape in zip(self.objects, xy, colours, shapes, strict=True):
            obj.place(scene.data, str(shape), str(colour), p, float(rng.uniform(-np.pi, np.pi)))
        self.target = self.objects[int(rng.integers(self.n_objects))]
        self.instruction = f"touch the {self.target.colour} {self.target.shape}"
        self._touch_since: float | None = None
        return self.instruction

    def success(self, scene: Scene) -> bool:
        now = scene.data.time
        if not scene.touching(self.all_gripper_geoms(scene), self.target.geom):
            self._touch_since = None
            return False
        if self._touch_since is None:
            self._touch_since = now
        return now - self._touch_since >= self.hold_s - 1e-9


class PickPlaceTask(Task):
    """Pick up the cube and put it in the bin."""

    name = "pick_place"
    time_limit_s = 16.0

    def add_objects(self, spec: mujoco.MjSpec, layout: SceneLayout) -> None:
        self.layout = layout
        h = layout.object_half
        self.cube = ObjectSlot(spec, "cube", h, object_mass(h))
        self.bin = Bin(
            spec, "bin", BinGeometry(inner_half=3.2 * h, wall_height=2.0 * h, wall_thickness=0.4 * h)
        )

    def bind(self, scene: Scene) -> None:
        self.cube.bind(scene.model)
        self.bin.bind(scene.model)

    def reset(self, scene: Scene, rng: np.random.Generator) -> str:
        lay, h = self.layout, self.layout.object_half
        g = self.bin.geometry
        xy = sample_separated(
            rng, 2, lay.workspace_center, lay.workspace_half, g.inner_half + g.wall_thickness + 3.0 * h
        )
        cube_colour, bin_colour = rng.choice(list(COLOURS), size=2, replace=False)
        self.bin.place(xy[1], str(bin_colour))
        self.cube.place(scene.data, "cube", str(cube_colour), xy[0], float(rng.uniform(-np.pi, np.pi)))
        self.instruction = f"put the {cube_colour} cube in the {bin_colour} bin"
        return self.instruction

    def cube_in_bin(self, scene: Scene) -> bool:
        return self.bin.contains(self.cube.position(scene.data), margin=0.5 * self.cube.half)

    def success(self, scene: Scene) -> bool:
        released = not scene.touching(self.all_gripper_geoms(scene), self.cube.geom)
        return self.cube_in_bin(scene) and released


class LiftTask(Task):
    """Bimanual: grasp a long bar at both ends and lift it level."""

    name = "lift"
    time_limit_s = 8.0
    max_tilt_deg = 20.0

    def add_objects(self, spec: mujoco.MjSpec, layout: SceneLayout) -> None:
        self.layout = layout
        h = layout.object_half
        self.bar = Bar(spec, "bar", (h, 0.16, h), mass=0.2)  # square section: a roll changes nothing
        self.lift_height = 0.08  # m above its resting height

    def bind(self, scene: Scene) -> None:
        if len(scene.arms) != 2:
            raise ValueError("the lift task needs a two-armed embodiment")
        self.bar.bind(scene.model)

    def reset(self, scene: Scene, rng: np.random.Generator) -> str:
        lay = self.layout
        cx, cy = lay.workspace_center
        xy = np.array([cx + rng.uniform(-0.03, 0.03), cy + rng.uniform(-0.03, 0.03)])
        colour = str(rng.choice(list(COLOURS)))
        self.bar.place(scene.data, colour, xy, float(rng.uniform(-0.25, 0.25)))
        self.instruction = f"lift the {colour} bar with both arms"
        return self.instruction

    def held_by(self, scene: Scene, arm: int) -> bool:
        """Both fingers of `arm` press on the bar."""
        return all(scene.touching(np.array([f]), self.bar.geom) for f in scene.finger_geoms[arm])

    def success(self, scene: Scene) -> bool:
        pos, rot = self.bar.position(scene.data), self.bar.rotation(scene.data)
        lifted = pos[2] >= self.bar.half[2] + self.lift_height
        level = abs(rot[2, 1]) <= np.sin(np.deg2rad(self.max_tilt_deg))  # the long axis (y) stays horizontal
        return bool(lifted and level and self.held_by(scene, 0) and self.held_by(scene, 1))


TASKS: dict[str, type[Task]] = {"reach": ReachTask, "pick_place": PickPlaceTask, "lift": LiftTask}

TASKS_BY_EMBODIMENT: dict[str, tuple[str, ...]] = {
    "franka": ("reach", "pick_place"),
    "yam_bimanual": ("reach", "lift"),
    "so100": ("reach", "pick_place"),
    "so101": ("reach", "pick_place"),
}
