"""Gymnasium and RLlib registration, and the make_env / make_expert shortcuts."""

import gymnasium as gym
import numpy as np
import pytest

from actors.sim import (
    ENV_IDS,
    TASKS_BY_EMBODIMENT,
    FleetSimEnv,
    StateOnlyObservation,
    make_env,
    make_expert,
    register_envs,
    register_rllib_envs,
)
from actors.sim.experts import PickPlaceExpert


def test_every_embodiment_task_pair_has_an_id():
    assert set(ENV_IDS) == {(e, t) for e, tasks in TASKS_BY_EMBODIMENT.items() for t in tasks}
    assert ENV_IDS[("franka", "reach")] == "molmofleet/Franka-Reach-v0"
    assert ENV_IDS[("yam_bimanual", "lift")] == "molmofleet/YAM-Lift-v0"
    assert ENV_IDS[("so101", "reach")] == "molmofleet/SO101-Reach-v0"


def test_gymnasium_make_after_register():
    ids = register_envs()
    assert register_envs() == ids  # idempotent
    env = gym.make("molmofleet/SO100-PickPlace-v0", render=False)
    try:
        obs, info = env.reset(seed=0)
        assert isinstance(env.unwrapped, FleetSimEnv) and env.unwrapped.task.name == "pick_place"
        assert obs["state"].shape == (6,) and "cube" in info["instruction"]
    finally:
        env.close()


def test_make_env_seed_starts_a_reproducible_stream():
    a, b = (
        make_env("franka", "reach", seed=5, render=False),
        make_env("franka", "reach", seed=5, render=False),
    )
    assert [a.reset()[1]["instruction"] for _ in range(3)] == [b.reset()[1]["instruction"] for _ in range(3)]
    np.testing.assert_array_equal(a.action_space.sample(), b.action_space.sample())


def test_make_expert_finds_the_task_through_wrappers():
    env = StateOnlyObservation(make_env("so101", "pick_place", seed=0, render=False))
    assert isinstance(make_expert(env), PickPlaceExpert)
    obs, _ = env.reset()
    assert obs.shape == (6,) and env.observation_space.contains(obs)
    with pytest.raises(TypeError, match="FleetSimEnv"):
        make_expert(gym.make("CartPole-v1"))


def test_rllib_trains_one_ppo_iteration():
    ray = pytest.importorskip("ray")
    from ray.rllib.algorithms.ppo import PPOConfig

    ids = register_rllib_envs()
    assert "molmofleet/SO101-Reach-v0" in ids
    owns_ray = not ray.is_initialized()  # another test may have started Ray: reuse it, leave it running
    if owns_ray:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        config = (
            PPOConfig()
            .environment("molmofleet/SO101-Reach-v0", env_config={"state_only": True})
            .env_runners(num_env_runners=0, rollout_fragment_length=64)
            .learners(num_learners=0)
            .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
            .rl_module(model_config={"fcnet_hiddens": [32, 32]})
            .debugging(seed=0)
        )
        algo = config.build_algo()
        try:
            result = algo.train()
        finally:
            algo.stop()
        assert result["training_iteration"] == 1
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 64
        assert np.isfinite(result["learners"]["default_policy"]["total_loss"])
    finally:
        if owns_ray:
            ray.shutdown()
