"""Who attends to whom: image tokens both ways, the rest causally; expert block i reads LLM layer i's KV."""

from __future__ import annotations

import numpy as np
import torch

from policy.backbone import build_attention_mask
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from tests.policy.conftest import make_sample


def test_attention_mask_structure() -> None:
    valid = torch.tensor([[True] * 6 + [False] * 2])
    image = torch.tensor([[False, True, True, True, False, False, False, False]])
    m = build_attention_mask(valid, image)[0, 0]
    assert m.shape == (8, 8)
    assert m[1, 3] and m[3, 1]  # image <-> image, both ways
    assert not m[0, 1] and not m[1, 4]  # text before images sees no image; images do not see later text
    assert m[4, 1] and m[5, 4] and not m[4, 5]  # causal text
    assert not m[5, 6] and not m[0, 7]  # padding is never a key
    no_bidir = build_attention_mask(valid, image, image_bidirectional=False)[0, 0]
    assert not no_bidir[1, 3] and no_bidir[3, 1]


def _layer_kv(policy: MolmoAct2Policy, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad():
        return policy.encode_prefix(batch).layer_kv()


def test_images_see_each_other_and_text_is_causal(tiny_policy, rng) -> None:
    s = make_sample(rng, "yam_bimanual", actions=False)
    batch = tiny_policy.processor.collate([s])
    img = batch["image_token_mask"][0].nonzero()[:, 0]
    n = tiny_policy.config.image_tokens_per_camera
    cam0, cam2 = img[:n], img[2 * n :]
    base = _layer_kv(tiny_policy, batch)

    other = {k: v.clone() for k, v in batch.items()}
    other["images"][0, 2] = 255 - other["images"][0, 2]  # change the third camera only
    changed = _layer_kv(tiny_policy, other)
    # Layer 0's K/V come from the inputs alone; from layer 1 on, camera 0 has attended to camera 2.
    assert torch.equal(base[0][0][0, cam0], changed[0][0][0, cam0])
    assert not torch.allclose(base[1][0][0, cam0], changed[1][0][0, cam0])

    causal_policy = MolmoAct2Policy.from_config(
        MolmoAct2Config.tiny(image_bidirectional=False), tiny_policy.norm_stats, seed=0
    )
    a, b = _layer_kv(causal_policy, batch), _layer_kv(causal_policy, other)
    assert all(torch.equal(a[i][0][0, cam0], b[i][0][0, cam0]) for i in range(len(a)))
    assert not torch.allclose(a[1][0][0, cam2], b[1][0][0, cam2])

    later = {k: v.clone() for k, v in batch.items()}
    last = int(batch["attention_mask"][0].sum()) - 1
    later["input_ids"][0, last - 3] = tiny_policy.prompt_tokenizer.state_token(0)  # a token near the end
    moved = _layer_kv(tiny_policy, later)
    for k_base, k_moved in zip(base, moved, strict=True):
        assert torch.equal(k_base[0][0, : last - 3], k_moved[0][0, : last - 3])  # nothing earlier changes
        assert torch.equal(k_base[1][0, : last - 3], k_moved[1][0, : last - 3])


def test_padding_and_batch_neighbours_do_not_change_a_prefix(tiny_policy, rng) -> None:
    short = make_sample(rng, "so100", actions=False)
    long = make_sample(rng, "yam_bimanual", instruction="a much longer instruction " * 3, actions=False)
    alone = _layer_kv(tiny_policy, tiny_policy.processor.collate([short]))
    batched = _layer_kv(tiny_policy, tiny_policy.processor.collate([long, short]))
    t = alone[0][0].shape[1]
    for (ka, va), (kb, vb) in zip(alone, batched, strict=True):
        assert torch.allclose(ka[0], kb[1, :t], atol=1e-5) and torch.allclose(va[0], vb[1, :t], atol=1e-5)


def test_extending_a_prefix_equals_encoding_it_whole(tiny_policy, rng) -> None:
    batch = tiny_policy.processor.collate([make_sample(rng, "franka", actions=False)])
    n = int(batch["attention_mask"][0].sum())
    head = {k: (v[:, : n - 5] if v.dim() == 2 and v.shape[1] == n else v) for k, v in batch.items()}
    with torch.no_grad():
        whole = tiny_policy.encode_prefix(batch)
        part = tiny_policy.extend_prefix(tiny_policy.encode_prefix(head), batch["input_ids"][:, n - 5 :])
    for (kw, vw), (kp, vp) in zip(whole.layer_kv(), part.layer_kv(), strict=True):
        assert torch.allclose(kw, kp, atol=1e-5) and torch.allclose(vw, vp, atol=1e-5)
    assert torch.allclose(whole.last_hidden[:, -5:], part.last_hidden, atol=1e-5)
    assert part.context_mask.all() and part.position_ids[0, -1] == n - 1


def test_expert_block_i_reads_only_layer_i(tiny_policy, rng) -> None:
    expert = tiny_policy.expert
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # open the AdaLN-Zero gates so every block contributes
        for blk in expert.blocks:
            torch.nn.init.normal_(blk.modulation.linear.weight, 0, 0.05, generator=gen)
        torch.nn.init.normal_(expert.final_layer.linear.weight, 0, 0.05, generator=gen)
    batch = tiny_policy.processor.collate([make_sample(rng, "franka", actions=False)])
    with torch.no_grad():
        kv = tiny_policy.encode_prefix(batch).layer_kv()
    x = torch.randn(1, 15, 32, generator=gen)
    t = torch.tensor([0.3])
    hmask = batch["action_horizon_mask"][:, :15]

    def run(layer_kv):
        seen, outs = {}, {}
        hooks = []
        for i, blk in enumerate(expert.blocks):
            hooks.append(
                blk.cross_attn.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[1], a[2])))
            )
            hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)))
        with torch.no_grad():
            v = expert(x, t, expert.prepare_context(layer_kv, batch["context_mask"], hmask))
        for h in hooks:
            h.remove()
        return seen, outs, v

    base_seen, base_out, base_v = run(kv)
    layers = len(kv)
    for i in range(layers):
        bumped = [(k.clone(), v.clone()) for k, v in kv]
        bumped[i] = (
            bumped[i][0] + torch.randn_like(bumped[i][0]),
            bumped[i][1] + torch.randn_like(bumped[i][1]),
        )
        seen, outs, v = run(bumped)
        for j in range(layers):
            same = torch.equal(seen[j][0], base_seen[j][0]) and torch.equal(seen[j][1], base_seen[j][1])
            assert same == (j != i), (
                f"block {j} cross-attention input changed={not same} when layer {i} moved"
            )
            assert torch.equal(outs[j], base_out[j]) == (j < i)  # earlier blocks untouched, later ones follow
        assert not torch.allclose(v, base_v)


def test_knowledge_insulation_keeps_flow_gradients_out_of_the_llm(norm_stats, rng) -> None:
    batch = None
    grads = {}
    for insulate in (False, True):
        cfg = MolmoAct2Config.tiny(enable_knowledge_insulation=insulate, action_mode="continuous")
        policy = MolmoAct2Policy.from_config(cfg, norm_stats, seed=0)
        with torch.no_grad():  # non-zero expert outputs so the flow loss depends on the context
            for blk in policy.expert.blocks:
                blk.modulation.linear.bias.fill_(0.1)
            policy.expert.final_layer.linear.weight.normal_(
                0, 0.05, generator=torch.Generator().manual_seed(0)
            )
        batch = batch or policy.processor.collate([make_sample(rng, "franka")])
        out = policy.loss(batch, torch.Generator().manual_seed(0))
        assert out["token_ce"] == 0
        out["loss"].backward()
        g = policy.llm.decoder.layers[0].self_attn.k_proj.weight.grad
        grads[insulate] = 0.0 if g is None else float(g.abs().sum())
        assert policy.expert.context_k_proj.weight.grad.abs().sum() > 0
    assert grads[False] > 0 and grads[True] == 0
    assert np.isfinite(list(grads.values())).all()
