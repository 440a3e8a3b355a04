"""Checkpoints: our format and the trainable subset round-trip bit-exactly; the released layout loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from policy.checkpoint import (
    CheckpointKeyError,
    load_checkpoint,
    load_released_checkpoint,
    load_trainable,
    load_trainable_bytes,
    save_checkpoint,
    save_released_checkpoint,
    save_trainable,
    trainable_bytes,
)
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from tests.policy.conftest import make_sample


def _actions(policy: MolmoAct2Policy, samples) -> list[np.ndarray]:
    return policy.predict_actions(samples, generator=torch.Generator().manual_seed(11))


def _same_state(a: MolmoAct2Policy, b: MolmoAct2Policy) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_full_checkpoint_round_trip_is_bit_exact(norm_stats, rng, tmp_path, mode) -> None:
    cfg = MolmoAct2Config.tiny(finetune={"mode": mode, "lora_rank": 4})
    policy = MolmoAct2Policy.from_config(cfg, norm_stats, seed=3)
    samples = [make_sample(rng, "franka", actions=False), make_sample(rng, "yam_bimanual", actions=False)]
    save_checkpoint(tmp_path, policy)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "norm_stats.json",
        "tokenizer.json",
        "openfast.json",
    }
    loaded = load_checkpoint(tmp_path)
    assert _same_state(policy, loaded)
    assert loaded.trainable_parameter_names() == policy.trainable_parameter_names()
    assert all(
        np.array_equal(a, b)
        for a, b in zip(_actions(policy, samples), _actions(loaded, samples), strict=True)
    )


@pytest.mark.parametrize("mode", ["expert", "lora"])
def test_trainable_subset_round_trip_is_bit_exact(norm_stats, tmp_path, mode) -> None:
    cfg = MolmoAct2Config.tiny(finetune={"mode": mode, "lora_rank": 4})
    trained = MolmoAct2Policy.from_config(cfg, norm_stats, seed=1)
    with torch.no_grad():  # make the trainable tensors differ from any fresh init
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    standby = MolmoAct2Policy.from_config(cfg, norm_stats, seed=2)
    frozen_before = {n: p.clone() for n, p in standby.named_parameters() if not p.requires_grad}

    info = save_trainable(tmp_path / "v1.safetensors", trained)
    names = trained.trainable_parameter_names()
    assert info["tensors"] == len(names) and info["mode"] == mode
    assert all(n.startswith("expert.") or ".lora_" in n for n in names)
    assert load_trainable(standby, tmp_path / "v1.safetensors")["tensors"] == len(names)
    mine, theirs = dict(trained.named_parameters()), dict(standby.named_parameters())
    assert all(torch.equal(mine[n], theirs[n]) for n in names)
    assert all(torch.equal(theirs[n], frozen_before[n]) for n in frozen_before)  # backbone untouched

    again = MolmoAct2Policy.from_config(cfg, norm_stats, seed=4)
    load_trainable_bytes(again, trainable_bytes(trained))
    assert all(torch.equal(mine[n], dict(again.named_parameters())[n]) for n in names)


def test_trainable_subset_refuses_another_architecture(norm_stats, tmp_path) -> None:
    blob = trainable_bytes(MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), norm_stats, seed=0), "expert")
    other = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(max_action_dim=16), norm_stats, seed=0)
    with pytest.raises(ValueError, match="different architecture"):
        load_trainable(other, blob)
    with pytest.raises(ValueError, match="not a trainable"):
        load_trainable(other, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


def released_names(cfg: MolmoAct2Config) -> set[str]:
    """Tensor names of the released MolmoAct2ForConditionalGeneration, written out from its module tree."""
    vit, txt = "model.vision_backbone.image_vit.", "model.transformer."
    names = {f"{vit}patch_embedding.weight", f"{vit}patch_embedding.bias", f"{vit}positional_embedding"}
    n_vit = max(i % cfg.vit_config.num_hidden_layers for i in cfg.adapter_config.vit_layers) + 1
    for i in range(n_vit):
        for mod in (
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "attention.wo",
            "feed_forward.w1",
            "feed_forward.w2",
            "attention_norm",
            "ffn_norm",
        ):
            names |= {
                f"{vit}transformer.resblocks.{i}.{mod}.weight",
                f"{vit}transformer.resblocks.{i}.{mod}.bias",
            }
    for w in ("wq", "wk", "wv", "wo"):
        names |= {
            f"model.vision_backbone.image_pooling_2d.{w}.weight",
            f"model.vision_backbone.image_pooling_2d.{w}.bias",
        }
    names |= {f"model.vision_backbone.image_projector.{w}.weight" for w in ("w1", "w2", "w3")}
    names |= {f"{txt}wte.embedding", f"{txt}ln_f.weight", "lm_head.weight"}
    for i in range(cfg.text_config.num_hidden_layers):
        for mod in (
            "self_attn.att_proj",
            "self_attn.attn_out",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "attn_norm",
            "ff_norm",
            "mlp.ff_proj",
            "mlp.ff_out",
        ):
            names.add(f"{txt}blocks.{i}.{mod}.weight")
    return names


def test_released_layout_loads_and_acts_the_same(norm_stats, rng, tmp_path) -> None:
    cfg = MolmoAct2Config.tiny(prompt_style="released", finetune={"mode": "expert"})
    policy = MolmoAct2Policy.from_config(cfg, norm_stats, seed=5)
    save_released_checkpoint(tmp_path, policy, max_shard_tensors=50)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    written = set(index["weight_map"])
    assert released_names(cfg) <= written
    assert written - released_names(cfg) == {n for n in written if n.startswith("model.action_expert.")}
    shards = {
        n: t for f in set(index["weight_map"].values()) for n, t in load_file(str(tmp_path / f)).items()
    }
    layer = policy.llm.decoder.layers[1]
    fused = torch.cat(
        [layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]
    )
    assert torch.equal(shards["model.transformer.blocks.1.self_attn.att_proj.weight"], fused)
    up_gate = torch.cat([layer.mlp.up_proj.weight, layer.mlp.gate_proj.weight])
    assert torch.equal(shards["model.transformer.blocks.1.mlp.ff_proj.weight"], up_gate)
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["num_hidden_layers"] == 4

    loaded = load_released_checkpoint(tmp_path, prompt_style="released", finetune={"mode": "expert"})
    assert _same_state(policy, loaded)
    samples = [make_sample(rng, "so100", actions=False), make_sample(rng, "yam_bimanual", actions=False)]
    assert all(
        np.array_equal(a, b)
        for a, b in zip(_actions(policy, samples), _actions(loaded, samples), strict=True)
    )


def test_released_layout_reports_unknown_and_missing_keys(norm_stats, tmp_path) -> None:
    policy = MolmoAct2Policy.from_config(
        MolmoAct2Config.tiny(finetune={"mode": "expert"}), norm_stats, seed=0
    )
    save_released_checkpoint(tmp_path, policy)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.transformer.blocks.2.ff_norm.weight"]
    tensors["model.transformer.blocks.2.mystery.weight"] = torch.zeros(3)
    tensors["model.transformer.rotary_emb.inv_freq"] = torch.zeros(4)  # a buffer: ignored, not unknown
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as err:
        load_released_checkpoint(tmp_path)
    assert err.value.unknown == ["model.transformer.blocks.2.mystery.weight"]
    assert err.value.missing == ["llm.decoder.layers.2.post_attention_layernorm.weight"]
    assert "mystery" in str(err.value) and "post_attention_layernorm" in str(err.value)


def test_load_safetensors_into_copies_any_dtype_in_place_bit_exact() -> None:
    import torch
    from safetensors.torch import save

    from policy.checkpoint import load_safetensors_into

    g = torch.Generator().manual_seed(0)
    source = {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "mask": torch.rand(7, generator=g) > 0.5,
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    targets = {k: torch.zeros_like(v) for k, v in source.items()}
    targets["ids"] = torch.zeros(3, 2, dtype=torch.int64).t()  # not contiguous: copied through torch instead
    kept = {k: v for k, v in targets.items()}
    assert load_safetensors_into(targets, save(source, metadata={"format": "x"})) == {"format": "x"}
    assert all(targets[k] is kept[k] and torch.equal(targets[k], source[k]) for k in source)
    with pytest.raises(ValueError, match="do not fit"):  # same bytes, another shape: refused before copying
        load_safetensors_into({**targets, "bf16": torch.zeros(5, 3, dtype=torch.bfloat16)}, save(source))
