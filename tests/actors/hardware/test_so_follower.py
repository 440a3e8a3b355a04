"""The SO-100/101 adapter's unit mapping, through LeRobot's own SOFollower with a fake serial bus."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from actors.embodiments import EMBODIMENTS
from actors.hardware import SOFollowerConfig, SOFollowerEnv, SOJointMap

MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def import_so_follower():
    """lerobot.robots.so_follower, importable here through the learner's torchvision shim (lerobot's robot
    package imports torchvision, which this CPU-torch venv keeps outside; see learner/lerobot_compat.py)."""
    from learner.lerobot_compat import load_lerobot

    with contextlib.suppress(ImportError, OSError):  # no shim target: skipped below with lerobot's own reason
        load_lerobot()
    return pytest.importorskip("lerobot.robots.so_follower")


def test_joint_map_converts_degrees_and_gripper_percent():
    m = SOJointMap()
    obs = {
        "shoulder_pan.pos": 90.0,
        "shoulder_lift.pos": -45.0,
        "elbow_flex.pos": 0.0,
        "wrist_flex.pos": 30.0,
        "wrist_roll.pos": -180.0,
        "gripper.pos": 25.0,
        "front": "ignored",
    }
    state = m.to_state(obs)
    np.testing.assert_allclose(state, [np.pi / 2, -np.pi / 4, 0.0, np.pi / 6, -np.pi, 0.75], atol=1e-6)
    action = m.to_action(state)
    assert set(action) == {f"{n}.pos" for n in MOTORS}
    for key in obs:
        if key.endswith(".pos"):
            assert action[key] == pytest.approx(obs[key], abs=1e-4)  # round trip
    assert m.to_action(np.array([0, 0, 0, 0, 0, 0.0]))["gripper.pos"] == 100.0  # closure 0 = open
    assert m.to_action(np.array([0, 0, 0, 0, 0, 1.0]))["gripper.pos"] == 0.0


def test_joint_map_signs_offsets_and_a_reversed_gripper():
    m = SOJointMap(
        signs=(-1, 1, 1, 1, 1), offsets_rad=(0.1, 0, 0, 0, 0), gripper_open_pct=10.0, gripper_closed_pct=60.0
    )
    state = m.to_state(
        {**{f"{n}.pos": 0.0 for n in MOTORS[:5]}, "shoulder_pan.pos": 10.0, "gripper.pos": 35.0}
    )
    assert state[0] == pytest.approx(-np.deg2rad(10.0) + 0.1)
    assert state[5] == pytest.approx(0.5)
    assert m.to_action(state)["shoulder_pan.pos"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="one entry per joint"):
        SOJointMap(signs=(1.0,))


class FakeBus:
    """Stands in for LeRobot's FeetechMotorsBus: calibrated positions in, goal positions recorded."""

    def __init__(self, port, motors, calibration=None):
        self.port, self.motors, self.calibration = port, motors, calibration
        self.is_connected = False
        self.is_calibrated = True
        self.present = dict.fromkeys(motors, 0.0)
        self.goals: list[dict[str, float]] = []

    def connect(self, handshake=True):
        self.is_connected = True

    def disconnect(self, disable_torque=True):
        self.is_connected = False

    @contextlib.contextmanager
    def torque_disabled(self, motors=None):
        yield

    def configure_motors(self, *args, **kwargs):
        pass

    def write(self, data_name, motor, value, **kwargs):
        pass

    def sync_read(self, data_name, motors=None):
        assert data_name == "Present_Position"
        return dict(self.present)

    def sync_write(self, data_name, values):
        assert data_name == "Goal_Position"
        self.goals.append(dict(values))


class FakeCamera:
    def __init__(self, value):
        self.frame = np.full((48, 64, 3), value, np.uint8)
        self.is_connected = False

    def connect(self):
        self.is_connected = True

    def disconnect(self):
        self.is_connected = False

    def read_latest(self):
        return self.frame


@pytest.fixture
def lerobot_follower(tmp_path, monkeypatch):
    """A real lerobot SOFollower built on a fake serial bus (no Feetech SDK, no port), with fake cameras."""
    so = import_so_follower()
    monkeypatch.setattr(so.so_follower, "FeetechMotorsBus", FakeBus)
    robot = so.SOFollower(
        so.SOFollowerRobotConfig(
            port="/dev/null", id="test", calibration_dir=tmp_path, max_relative_target=20.0
        )
    )
    assert isinstance(robot.bus, FakeBus)
    robot.cameras = {"front": FakeCamera(10), "wrist": FakeCamera(200)}
    return robot


@pytest.mark.parametrize("embodiment", ["so100", "so101"])
def test_env_over_lerobot_follower(lerobot_follower, embodiment):
    bus = lerobot_follower.bus
    bus.present.update({"elbow_flex": 80.0, "gripper": 100.0})  # calibrated degrees / percent
    env = SOFollowerEnv(embodiment, "touch the red cube", robot=lerobot_follower, image_size=32, pace=False)
    obs, info = env.reset()
    assert bus.is_connected and info["instruction"] == "touch the red cube"
    assert env.observation_space.contains(obs)
    np.testing.assert_allclose(
        obs["state"], [0, 0, np.deg2rad(80.0), 0, 0, 0.0], atol=1e-6
    )  # gripper 100% = open
    assert obs["images"]["front"].shape == (32, 32, 3) and obs["images"]["wrist"].mean() == 200

    target = np.array([0.1, -0.2, 1.5, 0.3, 0.0, 1.0], np.float32)
    env.step(target)
    sent = bus.goals[-1]
    assert set(sent) == set(MOTORS)  # LeRobot strips ".pos" before the bus
    assert sent["shoulder_lift"] == pytest.approx(np.rad2deg(-0.2), abs=1e-3)
    assert sent["elbow_flex"] == pytest.approx(np.rad2deg(1.5), abs=1e-3)
    # LeRobot's own safety clip (max_relative_target 20 deg) applies after our mapping: closing fully from
    # 100% open moves the gripper goal by at most 20 points this tick.
    assert sent["gripper"] == pytest.approx(80.0)
    assert sent["wrist_flex"] == pytest.approx(np.rad2deg(0.3), abs=1e-3)

    env.mark_success()
    _, reward, terminated, _, info = env.step(target)
    assert terminated and reward == 1.0 and info["success"]
    env.close()
    assert not bus.is_connected


def test_env_refuses_other_embodiments_and_missing_cameras():
    with pytest.raises(ValueError, match="so100 or so101"):
        SOFollowerEnv("franka")
    env = SOFollowerEnv("so101", config=SOFollowerConfig(cameras={}), pace=False)
    import_so_follower()
    with pytest.raises(ValueError, match=r"SOFollowerConfig\.cameras"):
        env.reset()


def test_env_with_a_minimal_robot_object():
    """Any object with LeRobot's Robot interface will do: the mapping does not depend on LeRobot internals."""
    sent = []
    robot = SimpleNamespace(
        is_connected=True,
        get_observation=lambda: {
            **{f"{n}.pos": 0.0 for n in MOTORS},
            "front": np.zeros((8, 8, 3), np.uint8),
            "wrist": np.zeros((8, 8, 3), np.uint8),
        },
        send_action=sent.append,
        disconnect=lambda: None,
    )
    env = SOFollowerEnv("so100", robot=robot, image_size=8, pace=False)
    obs, _ = env.reset()
    assert obs["state"][-1] == 1.0  # gripper at 0% = closed
    env.step(EMBODIMENTS["so100"].action_high)
    assert sent[-1]["shoulder_pan.pos"] == pytest.approx(np.rad2deg(EMBODIMENTS["so100"].joint_limits[0][1]))
