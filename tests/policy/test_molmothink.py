"""MolmoThink: the depth quantiser, depth targets and loss, changed-cell detection, and the adaptive path
against full regeneration on a static scene and a scene with one moving object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.config import MolmoAct2Config
from policy.depth import DepthQuantizer
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.molmothink import MolmoThink, ThinkConfig, changed_cells, patch_similarity
from policy.normalization import NormStats
from policy.processor import PolicySample
from tests.policy.conftest import make_sample
from tests.policy.scenes import GRID, textured_frame, with_block


def sample_for(frame: np.ndarray, state: np.ndarray) -> PolicySample:
    return PolicySample(
        images={"main": frame, "wrist": frame[::-1].copy()},
        state=state,
        instruction="put the block in the bowl",
        embodiment="franka",
    )


@pytest.fixture(scope="module")
def think() -> MolmoThink:
    rng = np.random.default_rng(3)
    stats = NormStats()
    stats.add("franka", rng.uniform(-2, 2, (400, 8)), rng.uniform(-2, 2, (400, 8)), action_horizon=15)
    policy = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), stats, seed=0).eval()
    with torch.no_grad():  # "trained": a fresh AdaLN-zero expert ignores its context and outputs zero
        for p in policy.expert.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return MolmoThink(policy, ThinkConfig())


def state8() -> np.ndarray:
    return np.linspace(-1, 1, 8, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ quantiser


def test_quantiser_is_log_uniform_and_uses_the_cell_median() -> None:
    q = DepthQuantizer(128, grid=10, near_m=0.1, far_m=10.0)
    assert q.quantize(np.array([0.05, 0.1, 1.0, 9.99, 50.0, np.inf])).tolist() == [0, 0, 64, 127, 127, 127]
    metres = np.geomspace(0.12, 9.5, 200)
    back = q.decode(q.quantize(metres))
    assert np.max(np.abs(back / metres - 1)) <= q.relative_resolution()  # within one bin, relatively
    depth = np.full((100, 100), 2.0, np.float32)
    depth[:10, :10] = 0.5  # cell 0 at 0.5 m ...
    depth[0, 0] = 9.0  # ... with an outlier the median ignores
    depth[:10, 10:20] = 0.0  # cell 1: no valid return at all -> the far code
    depth[10:20, :10] = np.nan  # cell 10 likewise
    codes = q.encode(depth)
    assert codes.shape == (100,) and codes.dtype == np.int64
    assert codes[0] == q.quantize(0.5) and codes[1] == codes[10] == 127 and codes[2] == q.quantize(2.0)


def test_depth_targets_enter_the_batch_by_output_style_and_train(think: MolmoThink) -> None:
    policy = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), think.policy.norm_stats, seed=1)
    rng = np.random.default_rng(0)
    depth = np.geomspace(0.3, 3.0, 96 * 96).reshape(96, 96).astype(np.float32)
    styles = ("action", "depth", "depth_action")
    samples = [make_sample(rng, "franka") for _ in styles]
    for s, style in zip(samples, styles, strict=True):
        s.depth, s.output_style = depth, style
    batch = policy.processor.collate(samples)
    prompt = int(policy.processor.collate(samples[:1], with_targets=False)["attention_mask"].sum())
    tk = policy.prompt_tokenizer
    codes = policy.processor.depth_quantizer.encode(depth)
    assert batch["depth_token_mask"].sum(1).tolist() == [0, 100, 100]
    for row in (1, 2):
        block = batch["input_ids"][row, prompt : prompt + 102].tolist()
        assert block == [
            tk.id("<depth_start>"),
            *(tk.depth_token(int(c)) for c in codes),
            tk.id("<depth_end>"),
        ]
        assert batch["labels"][row, prompt : prompt + 102].tolist() == block  # CE on all 100 codes
    assert batch["context_mask"].sum(1).tolist() == [prompt, prompt, prompt + 102]  # expert sees the block
    assert batch["action_horizon_mask"].sum(1).tolist() == [15, 0, 15]  # depth-only rows have no flow target

    # unset styles follow the configured 1:0:1 mixture
    mixed = [
        PolicySample(**{**vars(s), "output_style": None, "state": rng.uniform(-1, 1, 8).astype(np.float32)})
        for s in samples * 20
    ]
    picked = [policy.processor.output_style(s) for s in mixed]
    assert "depth" not in picked and 15 < picked.count("depth_action") < 45

    # the depth CE falls when the model trains on it (noise on 10% of the teacher-forced codes is on)
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    depth_batch = policy.processor.collate([samples[1]])
    first = None
    for _ in range(25):
        out = policy.loss(depth_batch, gen)
        first = first if first is not None else out["depth_ce"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert first > 3.0 and out["depth_ce"].item() < 0.5 * first and out["flow_mse"].item() == 0.0


# ------------------------------------------------------------------------------------------------ change


def test_changed_cells_on_synthetic_pairs() -> None:
    frame = textured_frame(0)
    assert not changed_cells(frame, frame.copy(), 0.996, GRID).any()
    moved = with_block(frame, 37)
    assert np.flatnonzero(changed_cells(frame, moved, 0.996, GRID)).tolist() == [37]
    two = with_block(with_block(frame, 0), 99, (20, 200, 40))
    assert np.flatnonzero(changed_cells(frame, two, 0.996, GRID)).tolist() == [0, 99]
    # raw-RGB cosine ignores a uniform exposure change, and sizes need not match (both go to 320 px)
    darker = (frame * 0.8).astype(np.uint8)
    assert not changed_cells(frame, darker, 0.996, GRID).any()
    big = np.repeat(np.repeat(moved, 2, 0), 2, 1)
    assert np.flatnonzero(changed_cells(frame, big, 0.996, GRID)).tolist() == [37]
    # the threshold is the knob: a faint change (similarity ~0.9992) passes at 0.996 and is caught at 0.9999
    faint = frame.copy()
    faint[50:54, 50:54] += 20
    assert not changed_cells(frame, faint, 0.996, GRID).any()
    assert changed_cells(frame, faint, 0.9999, GRID).sum() == 1
    dark = np.zeros((320, 320, 3), np.uint8)
    lit = dark.copy()
    lit[:32, :32] = 255
    sim = patch_similarity(dark, lit, GRID)
    assert sim[0] == 0.0 and np.all(sim[1:] == 1.0)  # black vs black is unchanged; black vs lit is not


# ------------------------------------------------------------------------------------------------ adaptive


def test_static_scene_replays_every_cell_and_matches_full_regeneration(think: MolmoThink) -> None:
    s = sample_for(textured_frame(1), state8())
    first = think.infer([s], mode="full", generator=torch.Generator().manual_seed(5))
    assert first.repredicted == [100] and first.depth_passes == 101
    full = think.infer([s], first.caches, mode="full", generator=torch.Generator().manual_seed(7))
    adaptive = think.infer([s], first.caches, mode="adaptive", generator=torch.Generator().manual_seed(7))
    assert adaptive.repredicted == [0] and adaptive.depth_passes == 1  # one teacher-forced pass
    np.testing.assert_array_equal(adaptive.caches[0].codes, full.caches[0].codes)
    np.testing.assert_allclose(adaptive.actions[0], full.actions[0], atol=1e-4)
    none = think.infer([s], mode="none", generator=torch.Generator().manual_seed(7))
    assert none.repredicted == [0] and none.depth_passes == 0 and none.caches == [None]
    assert not np.allclose(
        none.actions[0], full.actions[0], atol=1e-3
    )  # the expert does read the depth block
    # a cache from another weights version is not trusted
    stale = think.infer([s], first.caches, mode="adaptive", version=4)
    assert stale.repredicted == [100] and stale.caches[0].version == 4


def test_one_moving_object_repredicts_only_its_cells(think: MolmoThink) -> None:
    scene = textured_frame(2)
    before = sample_for(with_block(scene, 23), state8())
    after = sample_for(with_block(scene, 24), state8())  # the block moved one cell to the right
    first = think.infer([before], mode="full")
    step = think.infer([after], first.caches, mode="adaptive")
    assert np.flatnonzero(step.changed[0]).tolist() == [23, 24] and step.repredicted == [2]
    assert step.depth_passes == 3  # cell 23, cell 24, then the teacher-forced rest
    unchanged = ~step.changed[0]
    np.testing.assert_array_equal(step.caches[0].codes[unchanged], first.caches[0].codes[unchanged])

    # two robots in one call: passes are cut at the union of their changed cells, each keeps its own codes
    other = sample_for(with_block(textured_frame(3), 70), state8())
    other_first = think.infer([other], mode="full")
    other_now = sample_for(with_block(textured_frame(3), 80), state8())
    both = think.infer([after, other_now], [first.caches[0], other_first.caches[0]], mode="adaptive")
    assert [np.flatnonzero(c).tolist() for c in both.changed] == [[23, 24], [70, 80]]
    assert both.depth_passes == 5
    keep = ~both.changed[1]
    np.testing.assert_array_equal(both.caches[1].codes[keep], other_first.caches[0].codes[keep])
    mixed = think.infer([after, other_now], [first.caches[0], None], mode=["none", "full"])
    assert mixed.repredicted == [0, 100] and mixed.caches[0] is first.caches[0]
