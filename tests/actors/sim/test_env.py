"""FleetSimEnv: every embodiment loads, steps and renders offline; images see motion; depth is metric."""

import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from actors.embodiments import EMBODIMENTS
from actors.sim import TASKS_BY_EMBODIMENT, make_env
from actors.sim.rendering import HIDDEN_GROUP


@pytest.mark.parametrize("embodiment", sorted(EMBODIMENTS))
def test_each_embodiment_loads_steps_and_renders(embodiment):
    emb = EMBODIMENTS[embodiment]
    env = make_env(embodiment, TASKS_BY_EMBODIMENT[embodiment][0], seed=0, image_size=48)
    try:
        obs, info = env.reset()
        assert env.observation_space.contains(obs)
        assert list(obs["images"]) == list(emb.cameras)
        assert info["instruction"] == env.unwrapped.instruction and info["instruction"]
        assert info["success"] is False and info["embodiment"] == embodiment
        hold = obs["state"].copy()
        for _ in range(3):
            obs, *_ = env.step(hold)
        assert env.observation_space.contains(obs)
        for cam, img in obs["images"].items():
            assert img.shape == (48, 48, 3) and img.dtype == np.uint8
            assert img.std() > 5, f"{cam} image is blank"
        assert np.all(np.isfinite(obs["depth"])) and obs["depth"].min() > 0
        # Holding still keeps the arm where it was: actions are absolute joint targets.
        np.testing.assert_allclose(obs["state"], hold, atol=0.02)
    finally:
        env.close()


def test_seed_makes_episodes_reproducible():
    a, b = make_env("so101", "reach", render=False), make_env("so101", "reach", render=False)
    _, info_a = a.reset(seed=7)
    _, info_b = b.reset(seed=7)
    assert info_a["instruction"] == info_b["instruction"]
    np.testing.assert_array_equal(a.scene.data.qpos, b.scene.data.qpos)
    layouts = set()
    for seed in range(5):
        a.reset(seed=seed)
        layouts.add(tuple(np.round(a.scene.data.qpos, 4)))
    assert len(layouts) == 5  # every seed lays the table out differently


def test_images_change_when_an_object_moves():
    env = make_env("franka", "reach", seed=3, image_size=64)
    try:
        scene, target = env.scene, env.task.target
        before, _ = env.renderer.render(scene.data)
        again, _ = env.renderer.render(scene.data)
        np.testing.assert_array_equal(before["external"], again["external"])  # nothing moved: same pixels
        scene.data.qpos[target.qpos_adr : target.qpos_adr + 2] += (0.0, 0.08)
        mujoco.mj_forward(scene.model, scene.data)
        after, _ = env.renderer.render(scene.data)
        changed = np.abs(after["external"].astype(int) - before["external"].astype(int)).sum(-1) > 30
        assert 3 < changed.sum() < 0.2 * changed.size  # the object's old and new place, not the whole frame
    finally:
        env.close()


def _ray_depth(model, data, cam_id, row, col, size):
    """Distance along the camera's view axis to the first visible geom through pixel (row, col)."""
    tan = np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2)
    d_cam = np.array(
        [(col + 0.5 - size / 2) / (size / 2) * tan, -(row + 0.5 - size / 2) / (size / 2) * tan, -1.0]
    )
    d_world = data.cam_xmat[cam_id].reshape(3, 3) @ d_cam
    groups = np.ones(6, dtype=np.uint8)
    groups[HIDDEN_GROUP] = 0
    geom = np.zeros(1, dtype=np.int32)
    dist = mujoco.mj_ray(
        model, data, data.cam_xpos[cam_id], d_world / np.linalg.norm(d_world), groups, 1, -1, geom
    )
    return None if dist < 0 else dist / np.linalg.norm(d_cam)


@pytest.mark.parametrize("embodiment", ["franka", "so101"])
def test_depth_is_metric(embodiment):
    size = 64
    env = make_env(embodiment, "reach", seed=1, image_size=size)
    try:
        obs, _ = env.reset()
        m, d = env.scene.model, env.scene.data
        cam = m.camera(env.embodiment.main_camera).id
        errors = []
        for row in range(4, size, 8):
            for col in range(4, size, 8):
                truth = _ray_depth(m, d, cam, row, col, size)
                if truth is not None:
                    errors.append(abs(float(obs["depth"][row, col]) - truth))
        assert len(errors) > 20
        assert np.median(errors) < 1e-3 and np.quantile(errors, 0.9) < 5e-3  # mm-level, edges aside
        # And a distance known by construction: the table top is the plane z = 0, so along the view axis
        # it lies camera height / cos(tilt) away; the image centre looks at the table in these scenes.
        axis = -d.cam_xmat[cam].reshape(3, 3)[:, 2]
        to_table = d.cam_xpos[cam][2] / -axis[2]
        c = size // 2
        assert _ray_depth(m, d, cam, c, c, size) == pytest.approx(
            to_table, abs=0.03
        )  # the table, not an object
        assert float(obs["depth"][c - 1 : c + 1, c - 1 : c + 1].mean()) == pytest.approx(to_table, abs=0.005)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("embodiment", "task", "render"), [("so101", "reach", True), ("yam_bimanual", "lift", False)]
)
def test_gymnasium_env_checker_passes(embodiment, task, render):
    env = make_env(
        embodiment, task, image_size=32, render=render, render_mode="rgb_array" if render else None
    )
    try:
        check_env(env, skip_render_check=not render)
    finally:
        env.close()


def test_mesh_model_hook_reports_only_installed_packages():
    from actors.sim.mesh_models import MESH_MODEL_SOURCES, available_mesh_models, find_mesh_model

    assert set(MESH_MODEL_SOURCES) == set(EMBODIMENTS)
    assert find_mesh_model("not_a_robot") is None
    for embodiment, path in available_mesh_models().items():  # empty in the default install
        assert embodiment in EMBODIMENTS and path.suffix == ".xml" and path.is_file()


def test_an_episode_depends_only_on_its_seed():
    from actors.sim import make_expert

    env = make_env("so101", "pick_place", render=False)
    expert = make_expert(env)

    def states(seed):
        obs, _ = env.reset(seed=seed)
        out = []
        for _ in range(40):
            obs, *_ = env.step(expert.act(obs))
            out.append(obs["state"])
        return np.array(out)

    first = states(3)
    states(5)  # another episode in between leaves nothing behind (solver warm starts, time, servo targets)
    np.testing.assert_array_equal(states(3), first)
