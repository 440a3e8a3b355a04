"""Simulated fleet: MuJoCo scenes of every embodiment, tasks, scripted experts and Gymnasium environments.

from actors.sim import make_env, make_expert
env = make_env("so101", "reach", seed=0)          # a FleetSimEnv, already reset with the seed
expert = make_expert(env)
obs, info = env.reset()
obs, reward, terminated, truncated, info = env.step(expert.act(obs))
"""

import os

# Headless offscreen rendering (EGL; Mesa's llvmpipe on a CPU-only machine). MuJoCo reads this when it is first
# imported, so it is set before anything below imports mujoco; an explicit setting wins.
os.environ.setdefault("MUJOCO_GL", "egl")

from actors.sim.env import FleetSimEnv
from actors.sim.experts import EXPERTS, ScriptedExpert
from actors.sim.registration import (
    ENV_IDS,
    StateOnlyObservation,
    make_env,
    make_expert,
    register_envs,
    register_rllib_envs,
)
from actors.sim.tasks import TASKS, TASKS_BY_EMBODIMENT

__all__ = [
    "ENV_IDS",
    "EXPERTS",
    "TASKS",
    "TASKS_BY_EMBODIMENT",
    "FleetSimEnv",
    "ScriptedExpert",
    "StateOnlyObservation",
    "make_env",
    "make_expert",
    "register_envs",
    "register_rllib_envs",
]
