"""Held-out evaluation: run a policy on fixed scene seeds with no supervisor and no real-time clock.

This is how versions are compared on equal terms (same tasks, same seeds, no interventions). It executes each
chunk's first ``execute_fraction`` of actions before asking again, as the actor's queue threshold does.
"""

from __future__ import annotations

from collections.abc import Iterable

from actors.embodiments import get_embodiment
from actors.policy_client import PolicyClient
from actors.sim.env import FleetSimEnv


def evaluate(client: PolicyClient, embodiment: str, task: str, seeds: Iterable[int], image_size: int = 96,
             execute_fraction: float = 0.5) -> list[bool]:
    """Success of one episode per seed."""
    emb = get_embodiment(embodiment)
    env = FleetSimEnv(emb.name, task, image_size=image_size, render=True)
    results = []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            instruction = env.unwrapped.instruction
            success, done = False, False
            while not done:
                chunk = client.infer(client.sample_from(obs, instruction, emb.norm_tag))
                for action in chunk[: max(1, int(len(chunk) * execute_fraction))]:
                    obs, _, terminated, truncated, info = env.step(action)
                    success = success or bool(info.get("success"))
                    done = success or terminated or truncated
                    if done:
                        break
            results.append(success)
    finally:
        env.close()
    return results
