"""Names for the simulated environments and the functions that make them.

Registration is explicit: nothing registers itself on import. `register_envs()` adds every embodiment-task pair
to Gymnasium (`gymnasium.make("molmofleet/Franka-Reach-v0")`), `register_rllib_envs()` to RLlib's registry
under the same ids. `make_env` and `make_expert` are the direct path the actors and tests use.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from actors.sim.env import FleetSimEnv
from actors.sim.experts import EXPERTS, ScriptedExpert
from actors.sim.tasks import TASKS_BY_EMBODIMENT

_EMBODIMENT_IDS = {"franka": "Franka", "yam_bimanual": "YAM", "so100": "SO100", "so101": "SO101"}
_TASK_IDS = {"reach": "Reach", "pick_place": "PickPlace", "lift": "Lift"}

# (embodiment, task) -> environment id, e.g. ("franka", "reach") -> "molmofleet/Franka-Reach-v0".
ENV_IDS: dict[tuple[str, str], str] = {
    (emb, task): f"molmofleet/{_EMBODIMENT_IDS[emb]}-{_TASK_IDS[task]}-v0"
    for emb, tasks in TASKS_BY_EMBODIMENT.items()
    for task in tasks
}


def make_env(
    embodiment: str,
    task: str,
    seed: int | None = None,
    image_size: int = 96,
    render: bool = True,
    **kwargs: Any,
) -> FleetSimEnv:
    """A simulated `embodiment` doing `task`.

    With a `seed` the env is reset once with it (and its action space seeded), so the episodes that follow
    from plain `reset()` calls form a reproducible stream. `render=False` drops images and depth from the
    observation: 5-10x faster, for experts, success statistics and state-only learners.
    """
    env = FleetSimEnv(embodiment, task, image_size=image_size, render=render, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_expert(env: gym.Env) -> ScriptedExpert:
    """The scripted expert for the task of `env` (any wrapper of a `FleetSimEnv`)."""
    sim = env.unwrapped
    if not isinstance(sim, FleetSimEnv):
        raise TypeError(f"make_expert needs a FleetSimEnv, got {type(sim).__name__}")
    return EXPERTS[sim.task.name](sim.scene, sim.task)


class StateOnlyObservation(gym.ObservationWrapper):
    """Observation = the (S,) joint state vector alone: for state-based learners such as RLlib's PPO."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = env.observation_space["state"]

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return observation["state"]


def register_envs() -> list[str]:
    """Register every embodiment-task pair with Gymnasium (idempotent); returns the ids."""
    for (emb, task), env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id, entry_point="actors.sim.env:FleetSimEnv", kwargs={"embodiment": emb, "task": task}
            )
    return list(ENV_IDS.values())


def _rllib_creator(embodiment: str, task: str):
    def create(config: dict[str, Any] | None = None) -> gym.Env:
        config = dict(config or {})
        state_only = bool(config.pop("state_only", False))
        render = bool(config.pop("render", True)) and not state_only
        env = FleetSimEnv(embodiment, task, render=render, **config)
        return StateOnlyObservation(env) if state_only else env

    return create


def register_rllib_envs() -> list[str]:
    """Register every embodiment-task pair with RLlib (`ray.tune.registry`) under the Gymnasium ids.

    The env config may hold `state_only=True` (observation = joint state vector, no rendering) and any
    `FleetSimEnv` keyword (`image_size`, `render`, `time_limit_s`).
    """
    from ray.tune.registry import register_env  # lazy: Ray is heavy and only RLlib users need it

    for (emb, task), env_id in ENV_IDS.items():
        register_env(env_id, _rllib_creator(emb, task))
    return list(ENV_IDS.values())
