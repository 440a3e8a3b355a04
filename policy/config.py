"""MolmoAct2 configuration: one typed object mirroring the released `config.json`, plus presets.

Field names of the four sub-configs (`vit_config`, `adapter_config`, `text_config`, `action_expert_config`)
and of the flow-matching fields follow the released Hugging Face export so a released `config.json` maps
onto this object field for field (see `policy/released_layout.py`). Training-side options that the released
LeRobot policy keeps in its own config (K noise samples, knowledge insulation, z-loss, fine-tuning mode)
live here too, so one object describes the whole policy. Checked at construction: a bad combination fails
with a message that says what to change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from policy.depth import DepthConfig
from policy.prompt_tokenizer import byte_level_vocab_size


def _merge(base: dict, overrides: dict) -> dict:
    """Overrides on top of a preset; a dict override of a sub-config changes only the fields it names."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "token_ids":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value.model_dump() if isinstance(value, BaseModel) else value
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class VisionConfig(_Strict):
    """SigLIP2 vision encoder (released: `vit_config`)."""

    hidden_size: int = 1152  # ViT width (so400m)
    intermediate_size: int = 4304  # ViT MLP width
    num_hidden_layers: int = 27  # layers in the full encoder; only those up to the deepest used one are built
    num_attention_heads: int = 16  # ViT heads; head_dim = hidden_size / heads
    head_dim: int = 72  # kept for the released file; must equal hidden_size / heads
    hidden_act: str = "gelu_pytorch_tanh"  # ViT MLP activation
    layer_norm_eps: float = 1e-6  # ViT LayerNorm epsilon
    image_default_input_size: tuple[int, int] = (378, 378)  # (H, W) pixels every camera is resized to
    image_patch_size: int = 14  # pixels per patch side
    image_num_pos: int = 729  # learned positions; must be the patch grid (H/p * W/p) so no resize is needed

    @property
    def image_num_patch(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        h, w = self.image_default_input_size
        return h // self.image_patch_size, w // self.image_patch_size


class AdapterConfig(_Strict):
    """Vision-to-language connector: 2x2 attention pooling + SwiGLU projector (released: `adapter_config`)."""

    vit_layers: tuple[int, ...] = (
        -3,
        -9,
    )  # ViT layers whose outputs are concatenated (negative = from the end)
    hidden_size: int = 1152  # pooling attention output width
    num_attention_heads: int = 16  # pooling attention heads
    num_key_value_heads: int = 16  # pooling attention KV heads
    head_dim: int = 72  # pooling attention head width
    hidden_act: str = "silu"  # projector gate activation
    intermediate_size: int = 9728  # projector hidden width
    text_hidden_size: int = 2560  # projector output width = LLM hidden size
    image_pooling_h: int = 2  # patches pooled per image token, vertically
    image_pooling_w: int = 2  # patches pooled per image token, horizontally
    pooling_attention_mask: bool = False  # released default: padded patches count as zeros in the query mean


class TextConfig(_Strict):
    """Qwen3 decoder (released: `text_config`)."""

    hidden_size: int = 2560  # LLM width
    num_attention_heads: int = 32  # query heads
    num_key_value_heads: int = 8  # KV heads (grouped-query attention)
    head_dim: int = 128  # per-head width
    vocab_size: int = 151936  # rows of the LM head (tokens the model can predict)
    additional_vocab_size: int = 128  # extra input-only embedding rows (released image special tokens)
    qkv_bias: bool = False  # Qwen3 has none; the Qwen3 class cannot hold a q/k/v-only bias
    num_hidden_layers: int = 36  # decoder layers = action expert blocks
    intermediate_size: int = 9728  # SwiGLU MLP width
    hidden_act: str = "silu"  # MLP activation
    max_position_embeddings: int = 4096  # longest prompt in tokens
    rope_theta: float = 1_000_000.0  # RoPE base
    use_qk_norm: bool = True  # per-head RMS norm on q and k before RoPE
    qk_norm_type: Literal["qwen3"] = "qwen3"  # per-head (Qwen3) q/k norm; the only kind the Qwen3 class has
    layer_norm_eps: float = 1e-6  # RMS norm epsilon
    norm_after: bool = False  # post-norm blocks are not supported by the Qwen3 class


class ActionExpertConfig(_Strict):
    """Flow-matching DiT, one block per LLM layer (released: `action_expert_config`)."""

    hidden_size: int = 1024  # expert width
    num_layers: int = 36  # must equal the LLM's layer count: block i reads layer i's KV
    num_heads: int = 16  # expert heads
    mlp_ratio: float = 8.0 / 3.0  # SwiGLU width = hidden * ratio, rounded up to ffn_multiple_of
    ffn_multiple_of: int = 256  # SwiGLU width rounding
    timestep_embed_dim: int = 256  # sinusoidal flow-time features
    context_layer_norm: bool = True  # weightless RMS norm after the shared context K/V projections
    qk_norm: bool = True  # weightless per-head RMS norm on queries and keys
    qk_norm_eps: float = 1e-6  # its epsilon
    rope: bool = True  # RoPE over action positions in self-attention
    rope_theta: float = 10_000.0  # expert RoPE base
    causal_attn: bool = False  # action tokens attend to each other bidirectionally


class FinetuneConfig(_Strict):
    """What trains. The expert always trains; LoRA adapters go on the LLM's linear layers."""

    mode: Literal["full", "lora", "expert"] = "expert"  # full model | LoRA on LLM + expert | expert only
    lora_rank: int = 64  # LoRA rank r
    lora_alpha: int = 16  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # LoRA input dropout
    lora_target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )  # LLM linear layers that get adapters


class MolmoAct2Config(_Strict):
    """The whole policy: backbone, expert, action/state format, losses and fine-tuning mode."""

    vit_config: VisionConfig = VisionConfig()
    adapter_config: AdapterConfig = AdapterConfig()
    text_config: TextConfig = TextConfig()
    action_expert_config: ActionExpertConfig = ActionExpertConfig()
    finetune: FinetuneConfig = FinetuneConfig()

    max_action_dim: int = 32  # every embodiment's actions (and state) are zero-padded to this width
    max_action_horizon: int = 30  # every chunk is padded to this many steps
    max_cameras: int = 3  # camera slots; missing cameras are masked out
    action_mode: Literal["both", "continuous"] = (
        "both"  # both = OpenFAST token CE + flow; continuous = flow only
    )
    state_format: Literal["discrete"] = "discrete"  # state enters as binned tokens (the released format)
    num_state_tokens: int = 256  # state bins over [-1, 1]
    num_action_tokens: int = 2048  # <action_k> entries in the LLM vocabulary = OpenFAST BPE vocab
    num_depth_codes: int = 128  # <depth_k> entries reserved for MolmoThink depth reasoning
    depth: DepthConfig = DepthConfig()  # MolmoThink depth tokens: grid, quantiser, mixture (depth.py)
    max_action_tokens: int = 256  # OpenFAST target tokens kept per chunk (bounds the sequence length)
    openfast_scale: float = 10.0  # DCT coefficient scale before rounding (quantisation step = 1 / scale)

    flow_matching_num_steps: int = 10  # Euler steps at inference
    flow_matching_time_offset: float = 0.001  # t = offset + scale * Beta(alpha, beta)
    flow_matching_time_scale: float = 0.999
    flow_matching_beta_alpha: float = 1.0
    flow_matching_beta_beta: float = 1.5
    num_flow_timesteps: int = 8  # K noise samples (and flow times) per chunk in the flow loss
    mask_action_dim_padding: bool = True  # padded action dims carry no noise, no target and no loss

    enable_knowledge_insulation: bool = (
        False  # detach the LLM KV from the flow loss (LLM learns from CE only)
    )
    softmax_auxiliary_loss_scale: float = 1e-4  # z-loss weight on log(sum(exp(logits)))^2
    token_loss_weight: float = 1.0  # weight of token CE (+ z-loss) next to the flow MSE
    image_bidirectional: bool = True  # image tokens attend to each other both ways; the rest is causal

    prompt_style: Literal["released", "compact"] = "released"  # released wording, or a short one for CPU
    add_setup_tokens: bool = True  # wrap setup text in <setup_start>/<setup_end>
    add_control_tokens: bool = True  # wrap control mode in <control_start>/<control_end>
    tokenizer: Literal["byte_level", "checkpoint"] = "byte_level"  # built-in byte-level text vocab, or the
    # checkpoint's tokenizer.json (released models)
    token_ids: dict[str, int] = {}  # special-token ids from a released config.json, by token text
    norm_stats_filename: str = "norm_stats.json"  # per-embodiment normalisation file inside a checkpoint

    @model_validator(mode="after")
    def _check(self) -> MolmoAct2Config:
        vit, ad, txt, ex = self.vit_config, self.adapter_config, self.text_config, self.action_expert_config
        problems: list[str] = []
        if ex.num_layers != txt.num_hidden_layers:
            problems.append(
                f"action_expert_config.num_layers={ex.num_layers} must equal text_config.num_hidden_layers="
                f"{txt.num_hidden_layers}: expert block i cross-attends to LLM layer i"
            )
        h, w = vit.image_default_input_size
        if h % vit.image_patch_size or w % vit.image_patch_size:
            problems.append(
                f"image size {h}x{w} must be a multiple of image_patch_size={vit.image_patch_size}"
            )
        gh, gw = vit.image_num_patch
        if vit.image_num_pos != gh * gw or gh != gw:
            problems.append(
                f"image_num_pos={vit.image_num_pos} must be the square patch grid {gh}x{gw}={gh * gw}"
            )
        if vit.hidden_size != vit.num_attention_heads * vit.head_dim:
            problems.append(
                "vit_config.hidden_size must equal num_attention_heads * head_dim (SigLIP2 class)"
            )
        for layer in ad.vit_layers:
            if not -vit.num_hidden_layers <= layer < vit.num_hidden_layers:
                problems.append(
                    f"adapter_config.vit_layers entry {layer} is outside the {vit.num_hidden_layers}-layer ViT"
                )
        if ad.num_attention_heads % ad.num_key_value_heads:
            problems.append("adapter_config.num_attention_heads must be a multiple of num_key_value_heads")
        if ad.text_hidden_size != txt.hidden_size:
            problems.append(
                f"adapter_config.text_hidden_size={ad.text_hidden_size} must equal text_config.hidden_size="
                f"{txt.hidden_size}"
            )
        if txt.num_attention_heads % txt.num_key_value_heads:
            problems.append("text_config.num_attention_heads must be a multiple of num_key_value_heads")
        if txt.qkv_bias:
            problems.append(
                "text_config.qkv_bias=True is not supported: the Qwen3 class has no q/k/v-only bias"
            )
        if txt.norm_after:
            problems.append("text_config.norm_after=True (post-norm) is not supported by the Qwen3 class")
        if ex.hidden_size % ex.num_heads or (ex.hidden_size // ex.num_heads) % 2:
            problems.append("action_expert_config.hidden_size / num_heads must be an even integer (RoPE)")
        if not 1 <= self.max_action_horizon <= 64:
            problems.append("max_action_horizon must be in [1, 64]")
        if self.num_flow_timesteps < 1 or self.flow_matching_num_steps < 1:
            problems.append("num_flow_timesteps and flow_matching_num_steps must be >= 1")
        if self.tokenizer == "byte_level":
            need = byte_level_vocab_size(self.num_state_tokens, self.num_action_tokens, self.num_depth_codes)
            if txt.vocab_size < need:
                problems.append(
                    f"text_config.vocab_size={txt.vocab_size} is smaller than the byte-level vocabulary ({need}); "
                    f"raise it to at least {need}"
                )
        if self.finetune.mode == "lora" and self.finetune.lora_rank < 1:
            problems.append("finetune.lora_rank must be >= 1")
        if problems:
            raise ValueError("invalid MolmoAct2Config:\n  - " + "\n  - ".join(problems))
        return self

    @property
    def llm_kv_dim(self) -> int:
        """Width of one LLM layer's K (or V) per token, heads flattened."""
        return self.text_config.num_key_value_heads * self.text_config.head_dim

    @property
    def image_tokens_per_camera(self) -> int:
        """Pooled image tokens one camera adds to the prompt."""
        gh, gw = self.vit_config.image_num_patch
        ph, pw = self.adapter_config.image_pooling_h, self.adapter_config.image_pooling_w
        return -(-gh // ph) * -(-gw // pw)

    def architecture_fingerprint(self) -> dict[str, object]:
        """The fields that decide tensor names and shapes (what a weight file must agree on)."""
        return self.model_dump(
            include={
                "vit_config",
                "adapter_config",
                "text_config",
                "action_expert_config",
                "max_action_dim",
                "max_action_horizon",
            }
        )

    @classmethod
    def tiny(cls, **overrides: object) -> MolmoAct2Config:
        """A CPU-sized MolmoAct2 (~6M parameters): 64 px images, 4 LLM layers of width 256, expert width 128.
        Overrides are merged: `tiny(finetune={"mode": "lora"})` keeps the preset's LoRA rank."""
        vocab = byte_level_vocab_size(256, 2048, 128)
        vocab = -(-vocab // 64) * 64
        base = cls(
            vit_config=VisionConfig(
                hidden_size=128,
                intermediate_size=384,
                num_hidden_layers=3,
                num_attention_heads=4,
                head_dim=32,
                image_default_input_size=(64, 64),
                image_patch_size=8,
                image_num_pos=64,
            ),
            adapter_config=AdapterConfig(
                vit_layers=(-1, -3),
                hidden_size=128,
                num_attention_heads=4,
                num_key_value_heads=4,
                head_dim=32,
                intermediate_size=384,
                text_hidden_size=256,
            ),
            text_config=TextConfig(
                hidden_size=256,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=64,
                vocab_size=vocab,
                additional_vocab_size=0,
                num_hidden_layers=4,
                intermediate_size=512,
                max_position_embeddings=1024,
                rope_theta=10_000.0,
            ),
            action_expert_config=ActionExpertConfig(
                hidden_size=128,
                num_layers=4,
                num_heads=4,
                ffn_multiple_of=64,
                timestep_embed_dim=64,
            ),
            finetune=FinetuneConfig(mode="full", lora_rank=8, lora_alpha=16),
            num_flow_timesteps=4,
            max_action_tokens=96,
            prompt_style="compact",
        )
        return cls.model_validate(_merge(base.model_dump(), overrides))

    @classmethod
    def molmoact2(cls, **overrides: object) -> MolmoAct2Config:
        """The released sizes: SigLIP2 so400m/14, Qwen3 36 x 2560, expert 36 x 1024 (~5B parameters)."""
        return cls.model_validate(_merge({**cls().model_dump(), "tokenizer": "checkpoint"}, overrides))


def tiny(**overrides: object) -> MolmoAct2Config:
    """Module-level alias of `MolmoAct2Config.tiny`."""
    return MolmoAct2Config.tiny(**overrides)


def molmoact2(**overrides: object) -> MolmoAct2Config:
    """Module-level alias of `MolmoAct2Config.molmoact2`."""
    return MolmoAct2Config.molmoact2(**overrides)
