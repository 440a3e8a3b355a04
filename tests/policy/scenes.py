"""Synthetic camera frames for the MolmoThink and serving tests: a lit, textured scene and movable blocks."""

from __future__ import annotations

import numpy as np

GRID = 10  # depth cells per side
SIDE = 160  # frame side, px: 16 px per cell, an exact half of the 320 px comparison size


def textured_frame(seed: int) -> np.ndarray:
    """A smooth, lit, textured scene (no dark patches): (SIDE, SIDE, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    base = np.stack([0.5 + 0.3 * np.sin(6 * x + c) * np.cos(5 * y - c) for c in range(3)], -1)
    return np.clip(255 * (base + rng.normal(0, 0.03, base.shape)), 0, 255).astype(np.uint8)


def with_block(frame: np.ndarray, cell: int, colour: tuple[int, int, int] = (230, 30, 30)) -> np.ndarray:
    """The frame with a 10 px block well inside `cell` (row-major), so it touches no other cell."""
    out = frame.copy()
    r, c = divmod(cell, GRID)
    p = SIDE // GRID
    out[r * p + 3 : r * p + 13, c * p + 3 : c * p + 13] = colour
    return out
