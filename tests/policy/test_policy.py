"""MolmoAct2Policy: determinism, API shapes, fine-tuning modes, and learning a handful of demonstrations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.openfast import OpenFAST
from tests.policy.conftest import EMBODIMENTS, make_sample


def test_tiny_preset_size_and_released_preset_fields() -> None:
    tiny, big = MolmoAct2Config.tiny(), MolmoAct2Config.molmoact2()
    assert tiny.text_config.num_hidden_layers == tiny.action_expert_config.num_layers <= 4
    assert big.text_config.num_hidden_layers == big.action_expert_config.num_layers == 36
    assert (big.text_config.hidden_size, big.text_config.num_key_value_heads, big.text_config.head_dim) == (
        2560,
        8,
        128,
    )
    assert (
        big.vit_config.image_patch_size,
        big.vit_config.hidden_size,
        len(big.adapter_config.vit_layers),
    ) == (14, 1152, 2)
    assert (
        big.max_action_dim,
        big.max_action_horizon,
        big.flow_matching_num_steps,
        big.num_action_tokens,
    ) == (32, 30, 10, 2048)
    with pytest.raises(ValueError, match="num_layers=3 must equal"):
        MolmoAct2Config.tiny(action_expert_config={"num_layers": 3})


def test_same_seed_same_policy_and_global_rng_untouched(norm_stats) -> None:
    cfg = MolmoAct2Config.tiny()
    rng_before = torch.get_rng_state()
    a = MolmoAct2Policy.from_config(cfg, norm_stats, seed=3)
    b = MolmoAct2Policy.from_config(cfg, norm_stats, seed=3)
    c = MolmoAct2Policy.from_config(cfg, norm_stats, seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["llm.decoder.layers.0.mlp.up_proj.weight"], sc["llm.decoder.layers.0.mlp.up_proj.weight"]
    )
    assert 5e6 < sum(p.numel() for p in a.parameters()) < 15e6


def test_loss_and_actions_are_deterministic_given_a_generator(tiny_policy, rng) -> None:
    samples = [make_sample(rng, t) for t in EMBODIMENTS]
    batch = tiny_policy.processor.collate(samples)
    l1 = tiny_policy.loss(batch, torch.Generator().manual_seed(0))
    l2 = tiny_policy.loss(batch, torch.Generator().manual_seed(0))
    l3 = tiny_policy.loss(batch, torch.Generator().manual_seed(1))
    assert set(l1) == {"loss", "flow_mse", "token_ce", "z_loss", "depth_ce"}
    assert l1["depth_ce"].item() == 0.0  # no depth targets in these samples (MolmoThink, issue 9)
    assert all(torch.equal(l1[k], l2[k]) for k in l1) and not torch.equal(l1["flow_mse"], l3["flow_mse"])
    assert torch.isclose(l1["loss"], l1["flow_mse"] + l1["token_ce"] + l1["z_loss"])
    assert l1["token_ce"].item() > 0 and torch.isfinite(l1["loss"]).item()

    one = tiny_policy.predict_actions(samples[0], generator=torch.Generator().manual_seed(9))
    again = tiny_policy.predict_actions(samples[0], generator=torch.Generator().manual_seed(9))
    assert one.shape == (15, 8) and one.dtype == np.float32 and np.array_equal(one, again)
    many = tiny_policy.predict_actions(samples, generator=torch.Generator().manual_seed(9))
    assert [m.shape for m in many] == [(h, d) for d, _, h in EMBODIMENTS.values()]
    assert np.allclose(many[0], one, atol=1e-4)  # row 0 of a batch draws the same noise as alone


def test_finetune_modes_and_param_groups(norm_stats) -> None:
    policy = MolmoAct2Policy.from_config(
        MolmoAct2Config.tiny(finetune={"mode": "expert"}), norm_stats, seed=0
    )
    groups = policy.param_groups()
    assert set(groups) == {"llm", "vision", "expert"} and not groups["llm"] and not groups["vision"]
    assert sum(p.numel() for p in groups["expert"]) == sum(p.numel() for p in policy.expert.parameters())
    with pytest.raises(ValueError, match="LoRA adapters"):
        policy.trainable_parameter_names("lora")
    policy.set_finetune_mode("full")
    groups = policy.param_groups()
    assert sum(len(g) for g in groups.values()) == len(list(policy.parameters()))
    assert len(groups["vision"]) == len(list(policy.vision.parameters())) + len(
        list(policy.connector.parameters())
    )

    lora = MolmoAct2Policy.from_config(
        MolmoAct2Config.tiny(finetune={"mode": "lora", "lora_rank": 4}), norm_stats, seed=0
    )
    names = lora.trainable_parameter_names()
    assert any(".lora_A." in n for n in names) and all(
        n.startswith("expert.") or ".lora_" in n for n in names
    )
    assert all(p.requires_grad == (n in set(names)) for n, p in lora.named_parameters())
    assert not lora.param_groups()["vision"]


def test_tiny_policy_overfits_a_handful_of_demonstrations(rng) -> None:
    samples = [make_sample(rng, tag, instruction=f"task {i}") for i, tag in enumerate(EMBODIMENTS)]
    stats = NormStats()
    for s in samples:
        _, _, horizon = EMBODIMENTS[s.embodiment]
        stats.add(
            s.embodiment, np.stack([s.state, s.state + 0.1, s.state - 0.1]), s.actions, action_horizon=horizon
        )
    openfast = OpenFAST.fit([stats.normalize_action(s.embodiment, s.actions) for s in samples] * 4)
    policy = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), stats, seed=0, action_tokenizer=openfast)
    batch = policy.processor.collate(samples)

    def flow_eval() -> float:
        with torch.no_grad():
            return float(policy.loss(batch, torch.Generator().manual_seed(123))["flow_mse"])

    def action_error() -> float:
        preds = policy.predict_actions(samples, generator=torch.Generator().manual_seed(5))
        spans = [
            np.subtract(stats[s.embodiment].action_stats.q99, stats[s.embodiment].action_stats.q01)
            for s in samples
        ]
        return float(
            np.mean(
                [np.mean(np.abs(p - s.actions) / r) for p, s, r in zip(preds, samples, spans, strict=True)]
            )
        )

    start_loss, start_err = flow_eval(), action_error()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    loss = start_loss
    for step in range(1, 241):
        out = policy.loss(batch, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if step % 20 == 0:
            loss = flow_eval()
            if loss < start_loss / 12:
                break
    err = action_error()
    print(
        f"flow MSE {start_loss:.3f} -> {loss:.4f} in {step} steps; action error {start_err:.3f} -> {err:.3f} of range"
    )
    assert loss < start_loss / 10
    assert out["token_ce"].item() < 0.5  # the OpenFAST targets are learnt too
    assert err < 0.12 and err < start_err / 3


def test_a_fresh_policy_sees_its_images(tiny_policy, rng) -> None:
    """Fresh image features on the text embeddings' scale, and the LLM's keys change with the images: at the old
    N(0, 0.02) connector init they were ~1e-5 of it, under the RMSNorm eps, and the images were invisible."""
    tag = next(iter(EMBODIMENTS))
    batch = tiny_policy.processor.collate([make_sample(rng, tag)])
    blank = {**batch, "images": torch.full_like(batch["images"], 128)}
    with torch.no_grad():
        feats = tiny_policy.encode_images(batch["images"], batch["image_mask"])
        text = tiny_policy.llm.embed(batch["input_ids"])
        assert feats.pow(2).mean().sqrt() > 0.05 * text.pow(2).mean().sqrt()
        keys = tiny_policy.encode_prefix(batch).layer_kv()[-1][0]
        blank_keys = tiny_policy.encode_prefix(blank).layer_kv()[-1][0]
    text_only = ~batch["image_token_mask"][0] & batch["attention_mask"][0]  # text tokens read the images
    change = (keys - blank_keys)[0, text_only].abs().mean() / keys[0, text_only].abs().mean()
    assert change > 0.01
