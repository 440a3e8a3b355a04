"""The input transform actors and learner share: `PolicySample` in, a batch of tensors out.

`PolicyProcessor.collate` turns samples into the dict `MolmoAct2Policy.loss` and the inference path read:
cameras resized to the model size and padded to `max_cameras` with a mask; state normalised, binned into
`<state_k>` tokens and padded to `max_action_dim`; the prompt (image blocks, task, setup, state tokens,
control mode, `<action_output>`) tokenised; and, for training, actions normalised, padded to
(`max_action_horizon`, `max_action_dim`) with masks and OpenFAST-tokenised as next-token targets.

Batch keys (B samples, T tokens, C = max_cameras, H = max_action_horizon, A = max_action_dim):
    images (B, C, h, w, 3) uint8 · image_mask (B, C) bool
    input_ids (B, T) long · attention_mask (B, T) bool (real tokens) · image_token_mask (B, T) bool (pooled
    image features go here) · context_mask (B, T) bool (tokens the action expert may attend: the prompt)
    state (B, A) float32 in [-1, 1] · state_mask (B, A) bool
    action_dim_mask (B, A) bool · action_horizon_mask (B, H) bool
    with targets: actions (B, H, A) float32 in [-1, 1] · labels (B, T) long (-100 = no target)
    with depth targets (issue 9): depth_token_mask (B, T) bool (teacher-forced depth codes, for input noise)

Depth targets (`PolicySample.depth`, the main camera's metric depth) are quantised to grid**2 codes
(`policy/depth.py`) and, per the sample's output style, placed after the prompt as
`<depth_start> codes <depth_end>`: "depth_action" puts the action targets after the block and lets the expert
attend to it (context_mask covers it); "depth" ends with `<|endoftext|>` and has no action supervision (its
horizon mask is all False, so the flow loss skips the row); "action" ignores the depth.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from policy.config import MolmoAct2Config
from policy.depth import OUTPUT_STYLES, DepthQuantizer, OutputStyle
from policy.normalization import NormStats
from policy.openfast import OpenFAST
from policy.prompt_tokenizer import PromptTokenizer

IGNORE_INDEX = -100


@dataclass
class PolicySample:
    """One observation (and, for training, the action chunk that followed it)."""

    images: dict[str, np.ndarray]  # camera name -> (H, W, 3) uint8, MAIN camera first
    state: np.ndarray  # (S,) float32, real units
    instruction: str  # the task in words
    embodiment: str  # norm-stats tag, e.g. "franka"
    actions: np.ndarray | None = None  # (horizon, A) float32, real units (training only)
    action_mask: np.ndarray | None = None  # (horizon,) bool, False for steps past the episode end
    depth: np.ndarray | None = None  # (H, W) float32 metres, main camera (MolmoThink targets; training)
    output_style: OutputStyle | None = None  # with depth: "action" | "depth" | "depth_action"; None: drawn by
    # a hash of the sample from config.depth.output_styles (reproducible, no RNG state)


def _normalize_instruction(text: str) -> str:
    # The released prompts use lower-case tasks without trailing punctuation.
    return " ".join(text.split()).strip().rstrip(".!?;:,").lower()


class PolicyProcessor:
    """Builds model batches; holds everything the transform needs and nothing else (picklable)."""

    def __init__(
        self,
        config: MolmoAct2Config,
        norm_stats: NormStats,
        prompt_tokenizer: PromptTokenizer,
        action_tokenizer: OpenFAST,
    ) -> None:
        self.config = config
        self.norm_stats = norm_stats
        self.tokens = prompt_tokenizer
        self.action_tokenizer = action_tokenizer
        self.depth_quantizer = DepthQuantizer.from_config(config.depth, config.num_depth_codes)
        if action_tokenizer.vocab_size > config.num_action_tokens:
            raise ValueError(
                f"OpenFAST vocab {action_tokenizer.vocab_size} exceeds num_action_tokens={config.num_action_tokens}"
            )

    # ---- per-sample pieces ----------------------------------------------------------------------------------
    def _image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"camera images must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        h, w = self.config.vit_config.image_default_input_size
        if image.shape[:2] == (h, w):
            return image
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def state_bins(self, state_norm: np.ndarray) -> np.ndarray:
        """Normalised state in [-1, 1] -> bin index per dimension."""
        n = self.config.num_state_tokens
        return np.clip(np.rint((np.clip(state_norm, -1, 1) + 1.0) / 2.0 * (n - 1)), 0, n - 1).astype(np.int64)

    def prompt_ids(
        self, sample: PolicySample, num_cameras: int, state_norm: np.ndarray
    ) -> tuple[list[int], list[bool]]:
        """Token ids of the prompt and, per token, whether it is a pooled-image slot."""
        tk, cfg = self.tokens, self.config
        meta = self.norm_stats[sample.embodiment]
        ids: list[int] = []
        is_image: list[bool] = []

        def text(s: str) -> None:
            new = tk.encode_text(s)
            ids.extend(new)
            is_image.extend([False] * len(new))

        def special(*names: str) -> None:
            ids.extend(tk.id(n) for n in names)
            is_image.extend([False] * len(names))

        def wrapped(value: str, start: str, end: str, enabled: bool) -> None:
            if value and enabled:
                special(start)
                text(value)
                special(end)
            else:
                text(value)

        n_img = cfg.image_tokens_per_camera
        for cam in range(num_cameras):
            if cfg.prompt_style == "released" and num_cameras > 1:
                text(f"Image {cam + 1}")
            special("<im_start>")
            ids.extend([tk.id("<im_patch>")] * n_img)
            is_image.extend([True] * n_img)
            special("<im_end>")
        state_tokens = [tk.state_token(int(b)) for b in self.state_bins(state_norm)]
        task = _normalize_instruction(sample.instruction)
        if cfg.prompt_style == "released":
            special("<|im_start|>")
            text(f"user\nThe task is to {task}. The setup is ")
            wrapped(meta.setup_type, "<setup_start>", "<setup_end>", cfg.add_setup_tokens)
            text(". The current state of the robot is ")
        else:
            special("<|im_start|>")
            text(task)
            if meta.setup_type:
                wrapped(meta.setup_type, "<setup_start>", "<setup_end>", cfg.add_setup_tokens)
        special("<state_start>")
        ids.extend(state_tokens)
        is_image.extend([False] * len(state_tokens))
        special("<state_end>")
        if cfg.prompt_style == "released":
            text(". The expected control mode is ")
            wrapped(meta.control_mode, "<control_start>", "<control_end>", cfg.add_control_tokens)
            text(". Given these, what action should the robot take to complete the task?")
            special("<|im_end|>")
            text("\n")
            special("<|im_start|>")
            text("assistant\n")
        elif meta.control_mode:
            wrapped(meta.control_mode, "<control_start>", "<control_end>", cfg.add_control_tokens)
        special("<action_output>")
        return ids, is_image

    def target_ids(self, actions_norm: np.ndarray) -> list[int]:
        """OpenFAST targets for one (horizon, action_dim) normalised chunk, framed by start/end/eos."""
        tk = self.tokens
        codes = self.action_tokenizer.encode(actions_norm)
        body = [tk.action_token(c) for c in codes]
        out = [tk.id("<action_start>"), *body, tk.id("<action_end>"), tk.id("<|endoftext|>")]
        return out[: self.config.max_action_tokens]

    def output_style(self, sample: PolicySample) -> OutputStyle:
        """The sample's training output style: its own, else picked by a hash of its state and depth."""
        if sample.depth is None:
            return "action"
        if sample.output_style is not None:
            if sample.output_style not in OUTPUT_STYLES:
                raise ValueError(f"output_style {sample.output_style!r} is not one of {OUTPUT_STYLES}")
            return sample.output_style
        weights = np.asarray(self.config.depth.output_styles, dtype=np.float64)
        key = (
            np.asarray(sample.state, np.float32).tobytes()
            + np.asarray(sample.depth, np.float32)[::8, ::8].tobytes()
        )
        u = zlib.crc32(key) / 2**32
        return OUTPUT_STYLES[int(np.searchsorted(np.cumsum(weights) / weights.sum(), u, side="right"))]

    def depth_block(self, depth: np.ndarray) -> list[int]:
        """`<depth_start>`, the grid**2 codes of a (H, W) metric depth map, `<depth_end>`."""
        tk = self.tokens
        codes = self.depth_quantizer.encode(depth)
        return [tk.id("<depth_start>"), *(tk.depth_token(int(c)) for c in codes), tk.id("<depth_end>")]

    # ---- batch ----------------------------------------------------------------------------------------------
    def collate(
        self, samples: Sequence[PolicySample], with_targets: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Samples -> batch dict (see module docstring). with_targets defaults to "every sample has actions"."""
        cfg = self.config
        if not samples:
            raise ValueError("collate needs at least one sample")
        if with_targets is None:
            with_targets = all(s.actions is not None for s in samples)
        if with_targets and cfg.action_mode == "continuous":
            token_targets = False
        else:
            token_targets = with_targets
        B, C, H, A = len(samples), cfg.max_cameras, cfg.max_action_horizon, cfg.max_action_dim
        ih, iw = cfg.vit_config.image_default_input_size
        images = np.zeros((B, C, ih, iw, 3), dtype=np.uint8)
        image_mask = np.zeros((B, C), dtype=bool)
        state = np.zeros((B, A), dtype=np.float32)
        state_mask = np.zeros((B, A), dtype=bool)
        actions = np.zeros((B, H, A), dtype=np.float32)
        dim_mask = np.zeros((B, A), dtype=bool)
        horizon_mask = np.zeros((B, H), dtype=bool)
        rows: list[tuple[list[int], list[bool], int, int, int]] = []  # ids, flags, prompt/context/depth len

        for b, s in enumerate(samples):
            meta = self.norm_stats[s.embodiment]
            if len(s.images) > C or not s.images:
                raise ValueError(f"a sample needs 1..{C} cameras, got {len(s.images)} ({list(s.images)})")
            if meta.action_horizon > H or meta.action_dim > A or meta.state_dim > A:
                raise ValueError(
                    f"embodiment {s.embodiment!r} (horizon {meta.action_horizon}, action {meta.action_dim}, "
                    f"state {meta.state_dim}) exceeds the model's {H} steps / {A} dims"
                )
            for c, img in enumerate(s.images.values()):
                images[b, c] = self._image(img)
                image_mask[b, c] = True
            raw_state = np.asarray(s.state, dtype=np.float32).reshape(-1)
            if raw_state.shape[0] != meta.state_dim:
                raise ValueError(
                    f"{s.embodiment!r} state has {raw_state.shape[0]} dims, expected {meta.state_dim}"
                )
            s_norm = self.norm_stats.normalize_state(s.embodiment, raw_state)
            state[b, : meta.state_dim] = s_norm
            state_mask[b, : meta.state_dim] = True
            dim_mask[b, : meta.action_dim] = True
            horizon_mask[b, : meta.action_horizon] = True
            ids, flags = self.prompt_ids(s, len(s.images), s_norm)
            prompt_len = context_len = len(ids)
            depth_len = 0
            if with_targets:
                chunk = self._chunk(s, meta.action_horizon, meta.action_dim, horizon_mask[b])
                actions[b, : meta.action_horizon, : meta.action_dim] = chunk
                style = self.output_style(s)
                if style != "action":
                    block = self.depth_block(s.depth)
                    depth_len = len(block)
                    ids = ids + block
                    if style == "depth":  # depth reasoning alone: no action tokens, no flow target
                        ids.append(self.tokens.id("<|endoftext|>"))
                        horizon_mask[b] = False
                    else:  # the expert attends to the prompt and the depth block
                        context_len += depth_len
                    flags = flags + [False] * (len(ids) - len(flags))
                if token_targets and style != "depth":
                    tgt = self.target_ids(chunk)
                    ids = ids + tgt
                    flags = flags + [False] * len(tgt)
            rows.append((ids, flags, prompt_len, context_len, depth_len))

        T = max(len(r[0]) for r in rows)
        if T > cfg.text_config.max_position_embeddings:
            raise ValueError(f"prompt of {T} tokens exceeds max_position_embeddings")
        pad = self.tokens.id("<|pad|>")
        input_ids = torch.full((B, T), pad, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.bool)
        image_token_mask = torch.zeros((B, T), dtype=torch.bool)
        context_mask = torch.zeros((B, T), dtype=torch.bool)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        depth_token_mask = torch.zeros((B, T), dtype=torch.bool)
        for b, (ids, flags, prompt_len, context_len, depth_len) in enumerate(rows):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, :n] = True
            image_token_mask[b, :n] = torch.tensor(flags, dtype=torch.bool)
            context_mask[b, :context_len] = True
            labels[b, prompt_len:n] = input_ids[b, prompt_len:n]
            if depth_len:  # the codes, between <depth_start> and <depth_end>
                depth_token_mask[b, prompt_len + 1 : prompt_len + depth_len - 1] = True

        batch = {
            "images": torch.from_numpy(images),
            "image_mask": torch.from_numpy(image_mask),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_token_mask": image_token_mask,
            "context_mask": context_mask,
            "state": torch.from_numpy(state),
            "state_mask": torch.from_numpy(state_mask),
            "action_dim_mask": torch.from_numpy(dim_mask),
            "action_horizon_mask": torch.from_numpy(horizon_mask),
        }
        if with_targets:
            batch["actions"] = torch.from_numpy(actions)
            batch["labels"] = labels
            if bool(depth_token_mask.any()):
                batch["depth_token_mask"] = depth_token_mask
        return batch

    def _chunk(self, s: PolicySample, horizon: int, action_dim: int, horizon_row: np.ndarray) -> np.ndarray:
        """Normalised (horizon, action_dim) chunk; steps past the data repeat the last one and are masked."""
        if s.actions is None:
            raise ValueError("a training batch needs actions on every sample")
        act = np.asarray(s.actions, dtype=np.float32)
        if act.ndim != 2 or act.shape[1] != action_dim or not 1 <= act.shape[0] <= horizon:
            raise ValueError(
                f"{s.embodiment!r} actions must be (1..{horizon}, {action_dim}), got {act.shape}"
            )
        valid = np.ones(horizon, dtype=bool)
        valid[act.shape[0] :] = False
        if s.action_mask is not None:
            m = np.asarray(s.action_mask, dtype=bool).reshape(-1)
            if m.shape[0] != act.shape[0]:
                raise ValueError(f"action_mask has {m.shape[0]} steps, actions have {act.shape[0]}")
            valid[: act.shape[0]] &= m
        if act.shape[0] < horizon:
            act = np.concatenate([act, np.repeat(act[-1:], horizon - act.shape[0], axis=0)])
        horizon_row[:horizon] = valid
        return self.norm_stats.normalize_action(s.embodiment, act, s.state)


def collate(
    samples: Sequence[PolicySample], processor: PolicyProcessor, with_targets: bool | None = None
) -> dict[str, torch.Tensor]:
    """Function form of `PolicyProcessor.collate`."""
    return processor.collate(samples, with_targets=with_targets)
