"""Held-out evaluation: run a policy on fixed scene seeds with no supervisor and no real-time clock.

This is how versions are compared on equal terms (same tasks, same seeds, no interventions). All seeds run side
by side, one env each, and every round asks the policy for all live episodes' chunks in one batch; each chunk's
first ``execute_fraction`` of actions run before the next round, as the actor's queue threshold does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from actors.embodiments import get_embodiment
from actors.policy_client import PolicyClient
from actors.sim.env import FleetSimEnv


def evaluate(client: PolicyClient, embodiment: str, task: str, seeds: Iterable[int], image_size: int = 96,
             execute_fraction: float = 0.5,
             on_step: Callable[[int, FleetSimEnv], None] | None = None) -> list[bool]:
    """Success of one episode per seed, in the order of ``seeds``. ``on_step(i, env)`` runs after every step of
    the i-th seed's episode (for measurements beyond success)."""
    emb = get_embodiment(embodiment)
    seeds = list(seeds)
    envs = [FleetSimEnv(emb.name, task, image_size=image_size, render=True) for _ in seeds]
    try:
        obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
        instructions = [env.unwrapped.instruction for env in envs]
        success = [False] * len(envs)
        live = list(range(len(envs)))
        while live:
            chunks = client.infer_batch([client.sample_from(obs[i], instructions[i], emb.norm_tag) for i in live])
            still = []
            for i, chunk in zip(live, chunks, strict=True):
                done = False
                for action in chunk[: max(1, int(len(chunk) * execute_fraction))]:
                    obs[i], _, terminated, truncated, info = envs[i].step(action)
                    if on_step is not None:
                        on_step(i, envs[i])
                    success[i] = success[i] or bool(info.get("success"))
                    done = success[i] or terminated or truncated
                    if done:
                        break
                if not done:
                    still.append(i)
            live = still
        return success
    finally:
        for env in envs:
            env.close()


def evaluate_fleet(client: PolicyClient, pairs: Iterable[tuple[str, str]], seeds: Iterable[int],
                   image_size: int = 96) -> dict[str, float]:
    """Success rate per (embodiment, task) pair on the same ``seeds``, keyed by embodiment (``embodiment/task``
    where an embodiment runs several tasks), and their mean as ``fleet``."""
    pairs = list(dict.fromkeys(pairs))
    seeds = list(seeds)
    tasks_of = Counter(emb for emb, _ in pairs)
    rates = {(emb if tasks_of[emb] == 1 else f"{emb}/{task}"):
             sum(evaluate(client, emb, task, seeds, image_size)) / max(len(seeds), 1)
             for emb, task in pairs}
    rates["fleet"] = sum(rates.values()) / max(len(rates), 1)
    return rates
