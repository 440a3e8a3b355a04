"""Real robots behind the simulated fleet's environment interface (vendor SDKs are imported lazily)."""

from actors.hardware.base import HardwareEnv, fit_image
from actors.hardware.franka import FrankaConfig, FrankaHardwareEnv
from actors.hardware.so_follower import SOFollowerConfig, SOFollowerEnv, SOJointMap
from actors.hardware.yam import YAMConfig, YAMHardwareEnv

__all__ = [
    "FrankaConfig",
    "FrankaHardwareEnv",
    "HardwareEnv",
    "SOFollowerConfig",
    "SOFollowerEnv",
    "SOJointMap",
    "YAMConfig",
    "YAMHardwareEnv",
    "fit_image",
]
