"""MolmoThink: depth reasoning before the action, re-predicted only where the main camera's view changed.

Per call and per sample, one of three modes:
- "full": decode all grid**2 depth codes autoregressively (argmax over the `<depth_k>` logits), one decoder
  pass per code, then run the action expert on a KV cache that holds the prompt and the depth block.
- "adaptive": compare the main image with the previous one of the same robot (both resized to 320 x 320,
  split into 10 x 10 patches, cosine similarity of raw RGB per patch). A cell whose patch similarity is below
  the threshold (0.996) is "changed" and decoded autoregressively; runs of unchanged cells are teacher-forced
  from the robot's cached codes in one pass each. A static scene costs one pass for the whole depth block.
- "none": no depth tokens; the expert sees the prompt only (plain MolmoAct2).

The cache ({image, codes}) belongs to the robot's session: `infer` takes the caches of its samples and
returns the new ones; the caller (an actor, or the policy server keyed by robot) keeps them. A cache made by
another weights version, or missing, means a full regeneration.

Batching: rows in one call share every decoder pass. The passes are cut at the union of the rows' changed
cells; at each cut the rows whose cell changed take the argmax, the others keep their cached code. So a batch
costs (number of distinct changed cells + 1) passes, never more than full regeneration.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, model_validator

from policy.backbone import PrefixState
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.processor import PolicySample

DepthMode = Literal["full", "adaptive", "none"]
DEPTH_MODES: tuple[DepthMode, ...] = ("full", "adaptive", "none")


class ThinkConfig(BaseModel):
    """Change detection and the default depth mode."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = 0.996  # patch cosine similarity below which a cell counts as changed
    compare_size: int = 320  # pixels per side both main images are resized to before comparing
    mode: DepthMode = "adaptive"  # used when a call names no mode

    @model_validator(mode="after")
    def _check(self) -> ThinkConfig:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must be a cosine similarity in [-1, 1]")
        if self.compare_size < 1:
            raise ValueError(f"compare_size={self.compare_size} must be positive")
        return self


# ---- change detection ---------------------------------------------------------------------------------------
def compare_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear (a no-op when already that size)."""
    image = np.asarray(image)
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def patch_similarity(prev: np.ndarray, cur: np.ndarray, grid: int) -> np.ndarray:
    """Cosine similarity of raw RGB per patch of two (S, S, 3) images on a grid x grid lattice: (grid**2,).

    Two all-black patches are identical (1.0); one all-black patch against a lit one shares nothing (0.0)."""
    s = prev.shape[0]
    if prev.shape != cur.shape or prev.shape[:2] != (s, s) or s % grid:
        raise ValueError(
            f"images must be equal squares divisible by grid={grid}, got {prev.shape} {cur.shape}"
        )
    p = s // grid

    def patches(img: np.ndarray) -> np.ndarray:  # (grid**2, p * p * 3), row-major cells
        return (
            img.astype(np.float64)
            .reshape(grid, p, grid, p, 3)
            .transpose(0, 2, 1, 3, 4)
            .reshape(grid * grid, -1)
        )

    a, b = patches(prev), patches(cur)
    dot = np.einsum("nd,nd->n", a, b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_dark, one_dark = (na == 0) & (nb == 0), (na == 0) ^ (nb == 0)
    sim = dot / np.maximum(na * nb, 1e-12)
    return np.where(both_dark, 1.0, np.where(one_dark, 0.0, sim))


def changed_cells(
    prev: np.ndarray, cur: np.ndarray, threshold: float, grid: int, size: int = 320
) -> np.ndarray:
    """Which cells of the main camera changed between two frames (any sizes): (grid**2,) bool, row-major."""
    return patch_similarity(compare_image(prev, size), compare_image(cur, size), grid) < threshold


# ---- the cache and the result -------------------------------------------------------------------------------
@dataclass
class ThinkCache:
    """One robot's depth reasoning state between two calls."""

    image: np.ndarray  # (S, S, 3) uint8 main camera at compare size, from the call that made `codes`
    codes: np.ndarray  # (grid**2,) int64 depth codes, row-major cells
    version: int | None = None  # weights version that predicted the codes (another version starts afresh)
    repredicted: int = 0  # cells decoded at that call (grid**2 on a full regeneration)


@dataclass
class ThinkOutput:
    actions: list[np.ndarray]  # per sample (horizon, action_dim) float32 in real units
    caches: list[ThinkCache | None]  # per sample: what to keep for the robot's next call
    repredicted: list[int]  # per sample: cells decoded autoregressively (0 when replayed or no depth)
    changed: list[np.ndarray | None]  # per sample: (grid**2,) bool cells decoded; None without depth
    depth_passes: int  # decoder passes spent on the depth block, whole batch
    timings: dict[str, float] = field(default_factory=dict)  # seconds: collate, prefix, depth, expert


class MolmoThink:
    """Adaptive-depth inference around one MolmoAct2Policy (one weights version)."""

    def __init__(self, policy: MolmoAct2Policy, config: ThinkConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ThinkConfig()
        self.depth = policy.config.depth
        self.grid, self.num_cells = self.depth.grid, self.depth.num_cells
        if self.config.compare_size % self.grid:
            raise ValueError(
                f"compare_size={self.config.compare_size} must be a multiple of depth.grid={self.grid}"
            )
        tk = policy.prompt_tokenizer
        self.start_id, self.end_id = tk.id("<depth_start>"), tk.id("<depth_end>")
        self.code_base, self.num_codes = tk.depth_token(0), policy.config.num_depth_codes

    def _modes(self, mode: DepthMode | Sequence[DepthMode] | None, n: int) -> list[DepthMode]:
        modes = [mode or self.config.mode] * n if mode is None or isinstance(mode, str) else list(mode)
        if len(modes) != n or any(m not in DEPTH_MODES for m in modes):
            raise ValueError(f"mode must be one of {DEPTH_MODES} (or one per sample), got {mode!r}")
        return modes

    def _sync(self) -> float:
        if self.policy.device.type == "cuda":  # stage timings must not hide queued kernels
            torch.cuda.synchronize(self.policy.device)
        return time.perf_counter()

    @torch.inference_mode()
    def infer(
        self,
        samples: Sequence[PolicySample],
        caches: Sequence[ThinkCache | None] | None = None,
        mode: DepthMode | Sequence[DepthMode] | None = None,
        generator: torch.Generator | None = None,
        version: int | None = None,
        num_steps: int | None = None,
    ) -> ThinkOutput:
        """Action chunks for a batch of observations, each with its robot's cache (None: no history)."""
        policy, n = self.policy, len(samples)
        caches = list(caches) if caches is not None else [None] * n
        modes = self._modes(mode, n)
        if len(caches) != n:
            raise ValueError(f"{n} samples but {len(caches)} caches")
        t0 = self._sync()
        batch = {
            k: v.to(policy.device) for k, v in policy.processor.collate(samples, with_targets=False).items()
        }
        t1 = self._sync()
        state = policy.encode_prefix(batch)
        t2 = self._sync()

        new_caches, repredicted, passes = list(caches), [0] * n, 0
        changed: list[np.ndarray | None] = [None] * n
        depth_rows = [i for i, m in enumerate(modes) if m != "none"]
        if depth_rows:
            images = [compare_image(next(iter(s.images.values())), self.config.compare_size) for s in samples]
            need = np.zeros((n, self.num_cells), dtype=bool)  # cells to decode
            known = np.zeros((n, self.num_cells), dtype=np.int64)  # codes to teacher-force elsewhere
            for i in depth_rows:
                cache = caches[i]
                usable = (
                    modes[i] == "adaptive"
                    and cache is not None
                    and cache.codes.shape == (self.num_cells,)
                    and cache.image.shape == images[i].shape
                    and (version is None or cache.version == version)
                )
                if usable:
                    need[i] = patch_similarity(cache.image, images[i], self.grid) < self.config.threshold
                    known[i] = cache.codes
                else:
                    need[i] = True
            t_old = state.attention_mask.shape[1]
            state, codes, passes = self._decode(state, need, known)
            if len(depth_rows) < n:  # rows without depth ran the block for company: hide it from their expert
                no_depth = torch.tensor([m == "none" for m in modes], device=policy.device)
                state.context_mask[no_depth, t_old:] = False
            for i in depth_rows:
                repredicted[i], changed[i] = int(need[i].sum()), need[i].copy()
                new_caches[i] = ThinkCache(images[i], codes[i].copy(), version, repredicted[i])
        t3 = self._sync()
        normed = policy.sample_actions_from_prefix(
            state, batch["action_dim_mask"], batch["action_horizon_mask"], generator, num_steps
        )
        normed = normed.float().cpu().numpy()
        t4 = self._sync()
        actions = []
        for row, s in zip(normed, samples, strict=True):
            meta = policy.norm_stats[s.embodiment]
            chunk = row[: meta.action_horizon, : meta.action_dim]
            actions.append(policy.norm_stats.unnormalize_action(s.embodiment, chunk, s.state))
        timings = {"collate": t1 - t0, "prefix": t2 - t1, "depth": t3 - t2, "expert": t4 - t3}
        return ThinkOutput(actions, new_caches, repredicted, changed, passes, timings)

    def _decode(
        self, state: PrefixState, need: np.ndarray, known: np.ndarray
    ) -> tuple[PrefixState, np.ndarray, int]:
        """Append `<depth_start> codes <depth_end>` to every row's cache: (B, N) cells to decode, (B, N) codes
        to teacher-force. Stream index j: 0 is `<depth_start>`, 1 + c is cell c's code, N + 1 `<depth_end>`;
        the hidden state after index c predicts cell c."""
        device, n_cells = self.policy.device, self.num_cells
        codes = torch.as_tensor(known, device=device).clone()  # (B, N)
        need_t = torch.as_tensor(need, device=device)
        b = codes.shape[0]

        def stream(lo: int, hi: int) -> torch.Tensor:  # (B, hi - lo) token ids of indices lo .. hi - 1
            ids = self.code_base + codes[:, max(lo - 1, 0) : min(hi - 1, n_cells)]
            if lo == 0:
                ids = torch.cat([torch.full((b, 1), self.start_id, device=device), ids], 1)
            if hi == n_cells + 2:
                ids = torch.cat([ids, torch.full((b, 1), self.end_id, device=device)], 1)
            return ids

        pos, passes = 0, 0
        for c in np.flatnonzero(need.any(0)).tolist():
            state = self.policy.extend_prefix(state, stream(pos, c + 1))  # feeds through cell c - 1
            logits = self.policy.token_logits(state.last_hidden[:, -1])  # (B, V)
            pred = logits[:, self.code_base : self.code_base + self.num_codes].argmax(-1)
            codes[:, c] = torch.where(need_t[:, c], pred, codes[:, c])
            pos, passes = c + 1, passes + 1
        state = self.policy.extend_prefix(state, stream(pos, n_cells + 2))  # the rest, teacher-forced
        return state, codes.cpu().numpy(), passes + 1
