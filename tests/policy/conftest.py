"""Shared fixtures for the policy tests: the fleet's three embodiments, norm stats and demo samples."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.processor import PolicySample

# tag -> (state/action dims, cameras, horizon), as in DESIGN.md
EMBODIMENTS = {"franka": (8, 2, 15), "yam_bimanual": (14, 3, 30), "so100": (6, 2, 30)}


def smooth_chunk(rng: np.random.Generator, horizon: int, dim: int) -> np.ndarray:
    """A smooth joint trajectory in real units (radians-ish)."""
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    start = rng.uniform(-1.5, 1.5, (1, dim))
    swing = rng.uniform(-0.6, 0.6, (1, dim)) * np.sin(np.pi * t * rng.uniform(0.5, 2.0, (1, dim)))
    return (start + swing).astype(np.float32)


def make_sample(
    rng: np.random.Generator, tag: str, instruction: str = "pick up the cube", actions: bool = True
) -> PolicySample:
    dim, cams, horizon = EMBODIMENTS[tag]
    return PolicySample(
        images={f"cam{c}": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in range(cams)},
        state=rng.uniform(-1.5, 1.5, dim).astype(np.float32),
        instruction=instruction,
        embodiment=tag,
        actions=smooth_chunk(rng, horizon, dim) if actions else None,
    )


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the CI box has 2 cores shared with other suites, and oversubscribed OpenMP
    threads cost far more than they bring for a model this small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def norm_stats() -> NormStats:
    rng = np.random.default_rng(7)
    stats = NormStats()
    for tag, (dim, _, horizon) in EMBODIMENTS.items():
        stats.add(tag, rng.uniform(-2, 2, (400, dim)), rng.uniform(-2, 2, (400, dim)), action_horizon=horizon)
    return stats


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tiny_policy(norm_stats: NormStats) -> MolmoAct2Policy:
    return MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), norm_stats, seed=0)
