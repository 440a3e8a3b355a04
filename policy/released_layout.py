"""The released Hugging Face MolmoAct2 layout: its config.json and parameter names, mapped onto ours.

The released export (`MolmoAct2ForConditionalGeneration`) names the SigLIP2 encoder `image_vit.*` with
wq/wk/wv/wo attention, the Qwen3 decoder `transformer.blocks.*` with a fused `att_proj` (q | k | v) and a
fused `ff_proj` (up | gate), the embedding as `wte.embedding` + `wte.new_embedding` (input-only rows), and
the expert `action_expert.*` (same structure as ours). This module lists every tensor pair explicitly from
the config, so anything left over on either side is reported by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from policy.config import ActionExpertConfig, AdapterConfig, MolmoAct2Config, TextConfig, VisionConfig
from policy.prompt_tokenizer import PromptTokenizer

_VIT = "model.vision_backbone.image_vit."
_POOL = "model.vision_backbone.image_pooling_2d."
_PROJ = "model.vision_backbone.image_projector."
_TXT = "model.transformer."
_EXPERT = "model.action_expert."
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # RoPE tables: recomputed, never learned

# released config.json token-id field -> token text in our vocabulary
_TOKEN_ID_FIELDS = {
    "image_start_token_id": "<im_start>",
    "image_end_token_id": "<im_end>",
    "image_patch_id": "<im_patch>",
    "action_output_token_id": "<action_output>",
    "action_start_token_id": "<action_start>",
    "action_end_token_id": "<action_end>",
    "action_token_start_id": "<action_0>",
    "depth_output_token_id": "<depth_output>",
    "depth_start_token_id": "<depth_start>",
    "depth_end_token_id": "<depth_end>",
    "depth_token_start_id": "<depth_0>",
    "state_start_token_id": "<state_start>",
    "state_end_token_id": "<state_end>",
    "state_token_start_id": "<state_0>",
}
_TOP_LEVEL_FIELDS = (
    "max_action_dim",
    "max_action_horizon",
    "flow_matching_num_steps",
    "flow_matching_time_offset",
    "flow_matching_time_scale",
    "flow_matching_beta_alpha",
    "flow_matching_beta_beta",
    "mask_action_dim_padding",
    "add_setup_tokens",
    "add_control_tokens",
    "norm_stats_filename",
    "state_format",
)


@dataclass
class NameMap:
    """Released names -> our names. `fused`: one released tensor split along dim 0 into ours, in order."""

    renames: dict[str, str] = field(default_factory=dict)
    fused: dict[str, tuple[list[str], list[int]]] = field(default_factory=dict)


def _pick(payload: Mapping, model: type) -> dict:
    return {k: v for k, v in dict(payload or {}).items() if k in model.model_fields}


def config_from_released(payload: Mapping, **overrides: object) -> MolmoAct2Config:
    """A released `config.json` (dict) -> MolmoAct2Config using the checkpoint's tokenizer."""
    text, vit = dict(payload.get("text_config") or {}), dict(payload.get("vit_config") or {})
    unsupported = [
        f"text_config.{k}={text[k]!r}"
        for k in ("rope_scaling", "rope_scaling_layers")
        if text.get(k) is not None
    ]
    if vit.get("num_key_value_heads", vit.get("num_attention_heads")) != vit.get("num_attention_heads"):
        unsupported.append("vit_config.num_key_value_heads != num_attention_heads (SigLIP2 has no GQA)")
    if unsupported:
        raise ValueError("released config uses features this implementation lacks: " + ", ".join(unsupported))
    top = {k: payload[k] for k in _TOP_LEVEL_FIELDS if k in payload}
    mode = payload.get("action_mode", "both")
    top["action_mode"] = "continuous" if mode == "continuous" else "both"
    for ours, theirs in (
        ("num_action_tokens", "num_action_tokens"),
        ("num_state_tokens", "num_state_tokens"),
        ("num_depth_codes", "num_depth_tokens"),
    ):
        if int(payload.get(theirs) or 0) > 0:
            top[ours] = int(payload[theirs])
    token_ids = {text: int(payload[f]) for f, text in _TOKEN_ID_FIELDS.items() if payload.get(f) is not None}
    expert = _pick(payload.get("action_expert_config") or {}, ActionExpertConfig)
    return MolmoAct2Config.model_validate(
        {
            "vit_config": _pick(payload.get("vit_config"), VisionConfig),
            "adapter_config": _pick(payload.get("adapter_config"), AdapterConfig),
            "text_config": _pick(payload.get("text_config"), TextConfig),
            "action_expert_config": expert,
            **top,
            "tokenizer": "checkpoint",
            "token_ids": token_ids,
            **overrides,
        }
    )


def released_config_dict(config: MolmoAct2Config, tokens: PromptTokenizer) -> dict:
    """Our config -> a released-style `config.json` dict (token ids taken from `tokens`)."""
    ids = {f: tokens.special.get(text) for f, text in _TOKEN_ID_FIELDS.items()}
    ids["action_token_start_id"] = tokens.action_base
    ids["depth_token_start_id"] = tokens.depth_base
    ids["state_token_start_id"] = tokens.state_base
    dump = config.model_dump(mode="json")
    return {
        "model_type": "molmoact2",
        "architectures": ["MolmoAct2ForConditionalGeneration"],
        "vit_config": dump["vit_config"],
        "adapter_config": dump["adapter_config"],
        "text_config": dump["text_config"],
        "action_expert_config": dump["action_expert_config"],
        "add_action_expert": True,
        "action_mode": config.action_mode,
        "num_action_tokens": config.num_action_tokens,
        "num_state_tokens": config.num_state_tokens,
        "num_depth_tokens": config.num_depth_codes,
        **{k: dump[k] for k in _TOP_LEVEL_FIELDS},
        **ids,
    }


def name_map(config: MolmoAct2Config, expert_names: list[str]) -> NameMap:
    """Every released tensor name for `config`, and where it goes in our modules."""
    nm = NameMap()
    vit, txt = config.vit_config, config.text_config
    r = nm.renames
    for p in ("weight", "bias"):
        r[f"{_VIT}patch_embedding.{p}"] = f"vision.embeddings.patch_embedding.{p}"
    r[f"{_VIT}positional_embedding"] = "vision.embeddings.position_embedding.weight"
    n_vit = max(i if i >= 0 else i + vit.num_hidden_layers for i in config.adapter_config.vit_layers) + 1
    vit_parts = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.out_proj",
        "feed_forward.w1": "mlp.fc1",
        "feed_forward.w2": "mlp.fc2",
        "attention_norm": "layer_norm1",
        "ffn_norm": "layer_norm2",
    }
    for i in range(n_vit):
        for theirs, ours in vit_parts.items():
            for p in ("weight", "bias"):
                r[f"{_VIT}transformer.resblocks.{i}.{theirs}.{p}"] = f"vision.encoder.layers.{i}.{ours}.{p}"
    for theirs, ours in {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}.items():
        for p in ("weight", "bias"):
            r[f"{_POOL}{theirs}.{p}"] = f"connector.pool.{ours}.{p}"
    for theirs, ours in {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}.items():
        r[f"{_PROJ}{theirs}.weight"] = f"connector.projector.{ours}.weight"

    q = txt.num_attention_heads * txt.head_dim
    kv = txt.num_key_value_heads * txt.head_dim
    for i in range(txt.num_hidden_layers):
        src, dst = f"{_TXT}blocks.{i}.", f"llm.decoder.layers.{i}."
        nm.fused[f"{src}self_attn.att_proj.weight"] = (
            [f"{dst}self_attn.{n}_proj.weight" for n in "qkv"],
            [q, kv, kv],
        )
        nm.fused[f"{src}mlp.ff_proj.weight"] = (  # released order: up half, then gate half
            [f"{dst}mlp.up_proj.weight", f"{dst}mlp.gate_proj.weight"],
            [txt.intermediate_size, txt.intermediate_size],
        )
        r[f"{src}self_attn.attn_out.weight"] = f"{dst}self_attn.o_proj.weight"
        r[f"{src}self_attn.q_norm.weight"] = f"{dst}self_attn.q_norm.weight"
        r[f"{src}self_attn.k_norm.weight"] = f"{dst}self_attn.k_norm.weight"
        r[f"{src}attn_norm.weight"] = f"{dst}input_layernorm.weight"
        r[f"{src}ff_norm.weight"] = f"{dst}post_attention_layernorm.weight"
        r[f"{src}mlp.ff_out.weight"] = f"{dst}mlp.down_proj.weight"
    r[f"{_TXT}ln_f.weight"] = "llm.decoder.norm.weight"
    r["lm_head.weight"] = "llm.lm_head.weight"
    for name in expert_names:
        r[_EXPERT + name.removeprefix("expert.")] = name
    return nm


def released_to_ours(
    released: Mapping[str, torch.Tensor], config: MolmoAct2Config, expert_names: list[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Released tensors -> our state dict; also the released names nothing maps (unknown keys)."""
    nm = name_map(config, expert_names)
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for theirs, mine in nm.renames.items():
        if theirs in released:
            ours[mine] = released[theirs]
            used.add(theirs)
    for theirs, (mine, sizes) in nm.fused.items():
        if theirs in released:
            ours.update(zip(mine, torch.split(released[theirs], sizes, dim=0), strict=True))
            used.add(theirs)
    base, extra = f"{_TXT}wte.embedding", f"{_TXT}wte.new_embedding"
    if base in released:
        parts = [released[base]] + ([released[extra]] if extra in released else [])
        ours["llm.decoder.embed_tokens.weight"] = torch.cat(parts, dim=0)
        used.update(n for n in (base, extra) if n in released)
    unknown = sorted(n for n in released if n not in used and not n.endswith(_IGNORED_SUFFIXES))
    return ours, unknown


def ours_to_released(state: Mapping[str, torch.Tensor], config: MolmoAct2Config) -> dict[str, torch.Tensor]:
    """Our state dict -> released names (fused tensors concatenated). Used to write released-layout files."""
    expert_names = [n for n in state if n.startswith("expert.")]
    nm = name_map(config, expert_names)
    out = {theirs: state[mine] for theirs, mine in nm.renames.items() if mine in state}
    for theirs, (mine, _) in nm.fused.items():
        out[theirs] = torch.cat([state[m] for m in mine], dim=0)
    emb = state["llm.decoder.embed_tokens.weight"]
    out[f"{_TXT}wte.embedding"] = emb[: config.text_config.vocab_size]
    if config.text_config.additional_vocab_size:
        out[f"{_TXT}wte.new_embedding"] = emb[config.text_config.vocab_size :]
    return {k: v.contiguous() for k, v in out.items()}
