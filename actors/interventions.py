"""Supervisor takeover (Fleet-DAgger / Sirius): someone better than the policy takes the arm mid-episode.

On hardware the supervisor is a person on a teleop device; in simulation it is the scripted expert, and a
`TakeoverRule` decides when it steps in so fleet data carries realistic intervention rates:

- stalled progress: the task distance (tool to target, cube to bin, ...) has not improved by
  ``min_progress_m`` for ``stall_s`` seconds of policy control, the usual reason an operator grabs a robot;
- random takeovers at ``random_per_s`` per second of policy control (a Poisson hazard), for operators who
  step in for reasons the data cannot see;
- at most ``max_per_episode`` takeovers, none within ``grace_s`` of the start or of a hand-back, each lasting
  ``takeover_s`` seconds of control time.

The actor asks ``wants_control`` every tick and, while it is True, executes ``act`` instead of the policy's
queue and flags the step as an intervention. Times are control time (step / rate), so a rule behaves the
same however fast the simulation is clocked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from actors.sim.scene import Scene
from actors.sim.tasks import LiftTask, PickPlaceTask, ReachTask, Task
from fleet.config import InterventionConfig


class Supervisor(ABC):
    """Whoever may take the arm from the policy: a teleop operator, or the scripted expert in sim."""

    takeovers: int = 0  # takeovers started in the current episode

    @abstractmethod
    def reset(self, seed: int | None) -> None:
        """A new episode begins."""

    @abstractmethod
    def wants_control(self, t: float, obs: Mapping[str, Any]) -> bool:
        """Called every tick at control time ``t`` (s since the episode start): True while it takes over."""

    @abstractmethod
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """(A,) absolute joint targets for this tick (only called while it has control)."""


# --------------------------------------------------------------------------------------------- task progress


def _reach_distance(scene: Scene, task: ReachTask) -> float:
    target = task.target.position(scene.data)
    return min(float(np.linalg.norm(scene.tcp_pose(a)[0] - target)) for a in range(len(scene.arms)))


def _pick_place_distance(scene: Scene, task: PickPlaceTask) -> float:
    cube = task.cube.position(scene.data)
    tool = float(np.linalg.norm(scene.tcp_pose(0)[0] - cube))
    return tool + float(np.linalg.norm(cube[:2] - task.bin.center()[:2]))


def _lift_distance(scene: Scene, task: LiftTask) -> float:
    bar = task.bar.position(scene.data)
    tools = sum(float(np.linalg.norm(scene.tcp_pose(a)[0] - bar)) for a in range(len(scene.arms)))
    return tools + max(0.0, task.bar.half[2] + task.lift_height - float(bar[2]))


# task name -> "how far from done" in metres: progress is this going down
TASK_DISTANCE: dict[str, Callable[[Any, Any], float]] = {
    "reach": _reach_distance,
    "pick_place": _pick_place_distance,
    "lift": _lift_distance,
}


# --------------------------------------------------------------------------------------------- sim supervisor


class TakeoverRule:
    """When a simulated operator takes over and hands back (see the module docstring)."""

    def __init__(self, config: InterventionConfig, distance: Callable[[], float], rng: np.random.Generator):
        self.cfg = config
        self.distance = distance
        self.rng = rng
        self.reset()

    def reset(self) -> None:
        self.in_control = False
        self.takeovers = 0
        self.reason = ""
        self._since = 0.0  # start of the current phase (policy or supervisor), control time s
        self._last_t = 0.0
        self._best = np.inf  # best task distance in the current policy phase, m
        self._best_t = 0.0  # when it last improved

    def update(self, t: float) -> bool:
        c = self.cfg
        dt, self._last_t = max(0.0, t - self._last_t), t
        if self.in_control:
            if t - self._since < c.takeover_s:
                return True
            # hand back; the policy's phase starts now, measured from here
            self.in_control = False
            self._since = t
            self._best = np.inf
        d = self.distance() if c.stall_s > 0 else 0.0
        if d < self._best - c.min_progress_m:
            self._best, self._best_t = d, t
        if self.takeovers >= c.max_per_episode or t - self._since < c.grace_s:
            return False
        stalled = c.stall_s > 0 and t - self._best_t >= c.stall_s
        random = c.random_per_s > 0 and self.rng.random() < -np.expm1(-c.random_per_s * dt)
        if stalled or random:
            self.in_control = True
            self.takeovers += 1
            self.reason = "stalled" if stalled else "random"
            self._since = t
        return self.in_control


class ScriptedSupervisor(Supervisor):
    """The sim's scripted expert as the operator: it reads the live physics, so it can take over anywhere."""

    def __init__(self, scene: Scene, task: Task, config: InterventionConfig, seed: int = 0):
        from actors.sim.experts import EXPERTS

        if task.name not in TASK_DISTANCE:
            raise ValueError(f"no progress measure for task {task.name!r}; known: {sorted(TASK_DISTANCE)}")
        self.expert = EXPERTS[task.name](scene, task)
        self._seed = seed
        measure = TASK_DISTANCE[task.name]
        self.rule = TakeoverRule(config, lambda: measure(scene, task), np.random.default_rng(seed))

    @classmethod
    def for_env(cls, env: Any, config: InterventionConfig, seed: int = 0) -> ScriptedSupervisor:
        sim = env.unwrapped
        return cls(sim.scene, sim.task, config, seed)

    @property
    def takeovers(self) -> int:  # type: ignore[override]
        return self.rule.takeovers

    def reset(self, seed: int | None) -> None:
        # the takeover dice follow the episode seed, so a re-run episode gets the same interventions
        self.rule.rng = np.random.default_rng([self._seed, seed or 0])
        self.rule.reset()

    def wants_control(self, t: float, obs: Mapping[str, Any]) -> bool:
        return self.rule.update(t)

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        return self.expert.act(obs)
