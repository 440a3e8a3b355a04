"""Scripted experts succeed (judged by physics), random actions rarely do, and experts take over mid-episode."""

import mujoco
import numpy as np
import pytest

from actors.sim import TASKS_BY_EMBODIMENT, make_env, make_expert

PAIRS = [(emb, task) for emb, tasks in TASKS_BY_EMBODIMENT.items() for task in tasks]


def _run(env, expert, seed, perturb_steps=0, noise=0.0):
    """One episode; the first `perturb_steps` ticks are the expert's actions plus Gaussian noise (rad)."""
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    done = False
    while not done:
        action = expert.act(obs)
        if env.unwrapped.steps < perturb_steps:
            action = np.clip(action + rng.normal(0.0, noise, action.shape), low, high).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return info["success"]


@pytest.mark.parametrize(("embodiment", "task"), PAIRS)
def test_expert_succeeds_at_least_90_percent(embodiment, task):
    env = make_env(embodiment, task, render=False)  # success is physics: images are not needed
    expert = make_expert(env)
    successes = sum(_run(env, expert, seed) for seed in range(20))
    assert successes >= 18, f"{embodiment}/{task}: expert succeeded {successes}/20"


def test_random_actions_rarely_succeed():
    successes = episodes = 0
    for embodiment, task in PAIRS:
        env = make_env(embodiment, task, render=False, seed=0)
        for seed in range(4):
            env.reset(seed=seed)
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(env.action_space.sample())
                done = terminated or truncated
            successes += info["success"]
            episodes += 1
    assert successes <= 0.1 * episodes, f"random actions succeeded {successes}/{episodes}"


@pytest.mark.parametrize(
    ("embodiment", "task"), [("so101", "reach"), ("franka", "pick_place"), ("yam_bimanual", "lift")]
)
def test_expert_takes_over_from_a_perturbed_arm(embodiment, task):
    env = make_env(embodiment, task, render=False, time_limit_s=20.0)
    expert = make_expert(env)
    # 15 ticks of noisy control leave the arm somewhere the expert never planned for; then it takes over.
    successes = sum(_run(env, expert, seed, perturb_steps=15, noise=0.2) for seed in range(10))
    assert successes >= 8, f"{embodiment}/{task}: takeover succeeded {successes}/10"


def test_expert_actions_are_smooth_absolute_joint_targets():
    env = make_env("franka", "pick_place", render=False)
    expert = make_expert(env)
    obs, _ = env.reset(seed=0)
    actions = []
    for _ in range(60):
        actions.append(expert.act(obs))
        obs, *_ = env.step(actions[-1])
    actions = np.array(actions)
    assert all(env.action_space.contains(a) for a in actions)
    joint_steps = np.abs(np.diff(actions[:, :7], axis=0))
    assert joint_steps.max() <= 2.0 / env.embodiment.control_hz + 1e-4  # never faster than 2 rad/s
    np.testing.assert_allclose(actions[-1][:7], obs["state"][:7], atol=0.05)  # the servos track the targets


def test_success_is_judged_from_physics_alone():
    env = make_env("franka", "pick_place", render=False, seed=0)
    scene, task = env.scene, env.task
    assert not task.success(scene)
    bin_centre = task.bin.center()
    adr = task.cube.qpos_adr
    scene.data.qpos[adr : adr + 3] = (
        bin_centre[0],
        bin_centre[1],
        task.bin.geometry.wall_thickness + task.cube.half,
    )
    mujoco.mj_forward(scene.model, scene.data)
    assert task.success(scene)  # no expert involved: a cube resting in the bin is a success

    lift = make_env("yam_bimanual", "lift", render=False, seed=0)
    adr = lift.task.bar.qpos_adr
    lift.scene.data.qpos[adr + 2] += 0.2
    mujoco.mj_forward(lift.scene.model, lift.scene.data)
    assert not lift.task.success(lift.scene)  # high enough, but nobody holds it
