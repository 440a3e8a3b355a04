"""Franka and YAM adapters: a clear error without their SDKs, and their unit mapping with stand-in SDK objects."""

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from actors.hardware import FrankaHardwareEnv, YAMHardwareEnv, fit_image


class Camera:
    def read(self):
        return np.full((480, 640, 3), 7, np.uint8)


@pytest.mark.skipif(importlib.util.find_spec("franky") is not None, reason="franky is installed here")
def test_franka_without_its_sdk_says_what_to_install():
    env = FrankaHardwareEnv("x", cameras={"external": Camera(), "wrist": Camera()}, pace=False)
    with pytest.raises(ImportError, match="franky"):
        env.reset()


@pytest.mark.skipif(importlib.util.find_spec("i2rt") is not None, reason="i2rt is installed here")
def test_yam_without_its_sdk_says_what_to_install():
    env = YAMHardwareEnv("x", pace=False)
    with pytest.raises(ImportError, match="i2rt"):
        env.reset()


def test_franka_mapping_with_stand_in_sdk():
    moves = []
    robot = SimpleNamespace(
        current_joint_state=SimpleNamespace(position=[0.1] * 7),
        move=lambda motion, asynchronous: moves.append((motion, asynchronous)),
    )
    widths = []
    gripper = SimpleNamespace(width=0.02, move_async=lambda w, s: widths.append(w))
    env = FrankaHardwareEnv(
        "pick", robot=robot, gripper=gripper, cameras={"external": Camera(), "wrist": Camera()}, pace=False
    )
    env._motion = lambda q: ("joint_motion", q)
    obs, _ = env.reset()
    np.testing.assert_allclose(obs["state"], [0.1] * 7 + [0.75], atol=1e-6)  # 2 of 8 cm open
    assert obs["images"]["external"].shape == (96, 96, 3)
    env.step(np.array([0, -0.5, 0, -2.0, 0, 1.5, 0.8, 0.25], np.float32))
    assert moves[-1][1] is True and moves[-1][0][1] == pytest.approx([0, -0.5, 0, -2.0, 0, 1.5, 0.8])
    assert widths[-1] == pytest.approx(0.06)


def test_yam_mapping_with_stand_in_sdk():
    commands = {0: [], 1: []}

    def arm(i, gripper_value):
        return SimpleNamespace(
            get_joint_pos=lambda: np.array([0.1 * i] * 6 + [gripper_value]),
            command_joint_pos=commands[i].append,
        )

    cams = {"top": Camera(), "left_wrist": Camera(), "right_wrist": Camera()}
    env = YAMHardwareEnv("lift", arms=(arm(0, 1.0), arm(1, 0.0)), cameras=cams, image_size=16, pace=False)
    obs, _ = env.reset()
    np.testing.assert_allclose(obs["state"], [0] * 6 + [0.0] + [0.1] * 6 + [1.0], atol=1e-6)
    action = env.action_space.low.copy()
    action[6], action[13] = 1.0, 0.0
    env.step(action)
    assert commands[0][-1][6] == 0.0 and commands[1][-1][6] == 1.0  # closure 1 = i2rt 0 (closed)
    np.testing.assert_allclose(commands[1][-1][:6], action[7:13])


def test_fit_image_centre_crops_and_resizes():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # the centre square
    out = fit_image(img, 20)
    assert out.shape == (20, 20, 3) and out.min() == 255
