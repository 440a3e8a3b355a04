"""Held-out evaluation: every seed runs to its end in real MuJoCo, and ``on_step`` sees each step of each."""

from __future__ import annotations

import numpy as np

from actors.evaluation import evaluate, evaluate_fleet
from actors.policy_client import PolicyClient
from actors.sim.env import FleetSimEnv
from policy.processor import PolicySample


class HoldStill(PolicyClient):
    """Chunks that keep the arm where it is: it never touches anything, so no episode succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, sample: PolicySample) -> np.ndarray:
        self.calls += 1
        return np.repeat(np.asarray(sample.state, np.float32)[None], 8, axis=0)


def test_every_seed_runs_to_its_time_limit_and_on_step_sees_each_step() -> None:
    steps: dict[int, int] = {}
    envs: dict[int, FleetSimEnv] = {}

    def count(i: int, env: FleetSimEnv) -> None:
        steps[i] = steps.get(i, 0) + 1
        assert envs.setdefault(i, env) is env  # one env per seed for the whole episode

    client = HoldStill()
    assert evaluate(client, "franka", "reach", [900_000, 900_001], image_size=32, on_step=count) == [False, False]
    limit = envs[0].max_steps
    assert steps == {0: limit, 1: limit}  # no early end: the arm held still to the time limit
    assert client.calls == 2 * -(-limit // 4)  # half of each 8-action chunk runs before the next round


def test_evaluate_fleet_keys_rates_by_embodiment_and_task() -> None:
    client = HoldStill()
    rates = evaluate_fleet(client, [("franka", "reach"), ("franka", "pick_place"), ("so101", "reach"), ("so101", "reach")],
                           [900_000], image_size=32)
    # franka runs two tasks: keyed per task; so101 one (listed twice, run once); fleet = mean of the three
    assert rates == {"franka/reach": 0.0, "franka/pick_place": 0.0, "so101": 0.0, "fleet": 0.0}
