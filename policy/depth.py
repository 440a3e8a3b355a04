"""MolmoThink depth tokens: the settings, and the quantiser from metric depth to `<depth_k>` codes.

The main camera is split into a `grid` x `grid` lattice (10 x 10: 100 depth tokens per observation). Each cell's
depth is the median of its valid pixels (finite and > 0; the median ignores the thin edges of objects that a
mean would smear across two bins), and is quantised to one of `num_codes` (128) bins spaced uniformly in
log-depth between `near_m` and `far_m`:

    code = floor(num_codes * log(d / near) / log(far / near)), clipped to [0, num_codes - 1]
    depth(code) = near * (far / near) ** ((code + 0.5) / num_codes)        (geometric bin centre)

Log spacing gives every bin the same *relative* resolution (0.1..10 m over 128 bins: 3.7 % per bin, ~2 cm at
60 cm, where a manipulator works), as depth sensors' own error grows with distance. Cells with no valid pixel
(sky, a renderer miss at the far plane) take the last code. No codebook to learn: a sim depth buffer maps to
tokens deterministically, so supervision is exact and a model's codes are readable as metres.

In the token stream (see `policy/processor.py`) the depth block follows the prompt as
`<depth_start> <depth_c0> ... <depth_c99> <depth_end>`, cells in row-major order, and the action expert's
context covers it. Training mixes three output styles per sample with depth: action only, depth only (no flow
and no action tokens), depth then action.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

OutputStyle = Literal["action", "depth", "depth_action"]
OUTPUT_STYLES: tuple[OutputStyle, ...] = ("action", "depth", "depth_action")


class DepthConfig(BaseModel):
    """MolmoThink depth reasoning: grid, quantiser range, training mixture and loss."""

    model_config = ConfigDict(extra="forbid")

    grid: int = 10  # cells per side over the main camera: grid**2 depth tokens per observation
    near_m: float = 0.1  # metres at the lower edge of code 0 (closer pixels take code 0)
    far_m: float = 10.0  # metres at the upper edge of the last code (farther pixels and misses take it)
    output_styles: tuple[float, float, float] = (1.0, 0.0, 1.0)  # action : depth : depth+action mixing
    # weights for training samples that carry depth (fine-tuning default 1:0:1); samples without depth are action
    input_noise: float = (
        0.1  # fraction of teacher-forced depth inputs replaced by random codes (training only)
    )
    loss_weight: float = 1.0  # weight of the depth-code CE next to the flow MSE

    @model_validator(mode="after")
    def _check(self) -> DepthConfig:
        problems = []
        if not 1 <= self.grid <= 32:
            problems.append(f"depth.grid={self.grid} must be in [1, 32]")
        if not 0 < self.near_m < self.far_m:
            problems.append(f"depth needs 0 < near_m < far_m, got {self.near_m} / {self.far_m}")
        if min(self.output_styles) < 0 or sum(self.output_styles) <= 0:
            problems.append(f"depth.output_styles {self.output_styles} must be >= 0 with a positive sum")
        if not 0.0 <= self.input_noise < 1.0:
            problems.append(f"depth.input_noise={self.input_noise} must be in [0, 1)")
        if problems:
            raise ValueError("invalid DepthConfig:\n  - " + "\n  - ".join(problems))
        return self

    @property
    def num_cells(self) -> int:
        return self.grid * self.grid


def cell_edges(size: int, grid: int) -> np.ndarray:
    """Pixel boundaries of `grid` near-equal cells along a side of `size` pixels: (grid + 1,) int."""
    return np.rint(np.linspace(0, size, grid + 1)).astype(np.int64)


class DepthQuantizer:
    """Metric depth (H, W) of the main camera <-> (grid**2,) depth codes, row-major cells."""

    def __init__(self, num_codes: int, grid: int = 10, near_m: float = 0.1, far_m: float = 10.0) -> None:
        if num_codes < 2:
            raise ValueError(f"num_codes={num_codes} must be >= 2")
        if not 0 < near_m < far_m:
            raise ValueError(f"need 0 < near_m < far_m, got {near_m} / {far_m}")
        self.num_codes, self.grid = num_codes, grid
        self.near, self.far = float(near_m), float(far_m)
        self._log_span = math.log(self.far / self.near)

    @classmethod
    def from_config(cls, depth: DepthConfig, num_codes: int) -> DepthQuantizer:
        return cls(num_codes, depth.grid, depth.near_m, depth.far_m)

    def cell_depths(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) metres -> (grid**2,) per-cell median of valid pixels; cells with none get +inf."""
        d = np.asarray(depth, dtype=np.float32)
        if d.ndim != 2 or min(d.shape) < self.grid:
            raise ValueError(f"depth must be (H, W) with H, W >= {self.grid}, got {d.shape}")
        d = np.where(np.isfinite(d) & (d > 0), d, np.nan)
        rows, cols = cell_edges(d.shape[0], self.grid), cell_edges(d.shape[1], self.grid)
        out = np.empty(self.grid * self.grid, dtype=np.float32)
        for i in range(self.grid):
            band = d[rows[i] : rows[i + 1]]
            for j in range(self.grid):
                cell = band[:, cols[j] : cols[j + 1]]
                valid = cell[~np.isnan(cell)]
                out[i * self.grid + j] = np.median(valid) if valid.size else np.inf
        return out

    def quantize(self, metres: np.ndarray) -> np.ndarray:
        """Depths (any shape, metres; inf/nan = no return) -> codes (same shape) int64."""
        m = np.asarray(metres, dtype=np.float64)
        m = np.where(np.isfinite(m), m, self.far)
        frac = np.log(np.maximum(m, 1e-9) / self.near) / self._log_span
        return np.clip(np.floor(frac * self.num_codes), 0, self.num_codes - 1).astype(np.int64)

    def encode(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) metres -> (grid**2,) codes int64 (the training targets)."""
        return self.quantize(self.cell_depths(depth))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes -> geometric bin-centre depths in metres (float32, same shape)."""
        c = np.clip(np.asarray(codes, dtype=np.float64), 0, self.num_codes - 1)
        return (self.near * np.exp((c + 0.5) / self.num_codes * self._log_span)).astype(np.float32)

    def relative_resolution(self) -> float:
        """Bin width as a fraction of depth (the same everywhere on a log scale)."""
        return math.exp(self._log_span / self.num_codes) - 1.0
