"""Flow-matching action expert: a DiT with one block per LLM layer, conditioned on the LLM's KV cache.

Block i: AdaLN-Zero modulated (on the flow time) self-attention over the action tokens (RoPE, weightless
q/k RMS norm), then cross-attention whose keys/values are LLM layer i's cached K (after the LLM's k-norm
and RoPE) and V, mapped to the expert width by context K/V projections *shared by all blocks*, a
weightless RMS norm, and (for K) the block's weightless per-head norm; then a SwiGLU MLP. Modulation and
output layers start at zero, so a fresh expert predicts zero velocity and every block starts as identity.

`prepare_context` does the context projections once per observation; `forward` is one velocity evaluation
(K noise samples per chunk in training, `flow_matching_num_steps` at inference). At batch 1 the cost is op
count, not FLOPs, so inference precomputes every step's AdaLN modulation in one pass (`time_modulations`)
and norms/RoPE use few ops. Parameter names follow the released export so released expert weights load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policy.config import ActionExpertConfig


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weightless RMS norm over the last dim."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


class RMSNorm(nn.Module):
    """Weightless RMS norm as a module (kept as modules so the structure mirrors the released one)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor) -> torch.Tensor:
    """x (N, L, D) * (1 + scale) + shift; shift and 1 + scale are (N, 1, D)."""
    return torch.addcmul(shift, x, scale_plus_one)


def rope_tables(
    length: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, signed sin (length, head_dim) for half-split rotation: x * cos + swap_halves(x) * sin."""
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(half, device=device, dtype=torch.float32) / half)
    ang = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([ang.cos(), ang.cos()], -1), torch.cat([-ang.sin(), ang.sin()], -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., L, d): rotate (first half, second half) pairs by position:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    half = x.shape[-1] // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos, swapped, sin)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of flow time t in [0, 1]: (N,) -> (N, dim)."""
    half = dim // 2
    freq = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    )
    ang = t.float()[:, None] * freq[None, :]
    out = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return F.pad(out, (0, dim % 2))


class TimeFeatures(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return time_features(t, self.dim)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        self.qk_norm, self.eps = cfg.qk_norm, cfg.qk_norm_eps
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        n, length, d = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        qk, v = qkv[:2], qkv[2]  # (2, N, heads, L, head_dim): q and k normed and rotated together
        if self.qk_norm:
            qk = rms_norm(qk, self.eps)
        if rope is not None:
            qk = apply_rope(qk, *rope)
        out = F.scaled_dot_product_attention(qk[0], qk[1], v, attn_mask=mask)  # (N, heads, L, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, d))


class CrossAttention(nn.Module):
    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        self.qk_norm, self.eps = cfg.qk_norm, cfg.qk_norm_eps
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, L, D); k, v (N, heads, T, head_dim) already projected and normed; mask (N, 1, 1, T) bool."""
        n, length, d = x.shape
        q = self.q_proj(x).view(n, length, self.heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q = rms_norm(q, self.eps)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        inner = int(cfg.hidden_size * cfg.mlp_ratio)
        inner = -(-inner // cfg.ffn_multiple_of) * cfg.ffn_multiple_of
        self.up_proj = nn.Linear(cfg.hidden_size, inner)
        self.gate_proj = nn.Linear(cfg.hidden_size, inner)
        self.down_proj = nn.Linear(inner, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Modulation(nn.Module):
    """Flow-time conditioning -> `chunks` vectors of width D (shift/scale/gate)."""

    def __init__(self, hidden: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(hidden, chunks * hidden)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond (N, D) -> `chunks` tensors (N, 1, D) in (shift, scale, gate, ...) order, every scale as
        1 + scale, ready for `modulate`."""
        parts = self.linear(F.silu(cond))[:, None, :].chunk(self.chunks, dim=-1)
        return tuple(p + 1.0 if i % 3 == 1 else p for i, p in enumerate(parts))


class ExpertBlock(nn.Module):
    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        self.self_norm, self.cross_norm, self.ff_norm = RMSNorm(), RMSNorm(), RMSNorm()
        self.self_attn = SelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        self.mlp = SwiGLU(cfg)
        self.modulation = Modulation(cfg.hidden_size, 9)

    def forward(
        self,
        x: torch.Tensor,
        mod: tuple[torch.Tensor, ...],
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: ExpertContext,
    ) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = mod  # from self.modulation(flow-time conditioning)
        x = torch.addcmul(x, g1, self.self_attn(modulate(self.self_norm(x), s1, c1), ctx.self_mask, ctx.rope))
        x = torch.addcmul(x, g2, self.cross_attn(modulate(self.cross_norm(x), s2, c2), k, v, ctx.cross_mask))
        return torch.addcmul(x, g3, self.mlp(modulate(self.ff_norm(x), s3, c3)))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm()
        self.modulation = Modulation(hidden, 2)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, mod: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        shift, scale = mod
        return self.linear(modulate(self.norm(x), shift, scale))


@dataclass
class ExpertContext:
    """Everything about one observation the velocity field needs, computed once per call."""

    keys: list[torch.Tensor]  # per block (N, heads, T, head_dim)
    values: list[torch.Tensor]  # per block (N, heads, T, head_dim)
    cross_mask: torch.Tensor | None  # (N, 1, 1, T) bool, prompt tokens the actions may attend; None = all
    self_mask: torch.Tensor | None  # (N, 1, 1, L) bool, real horizon steps; None = all
    valid: torch.Tensor  # (N, L, 1) float, 1 on real horizon steps
    rope: tuple[torch.Tensor, torch.Tensor] | None  # (L, head_dim / 2) cos, sin

    def repeat(self, k: int) -> ExpertContext:
        """Each observation k times in a row (K noise samples per chunk)."""
        if k == 1:
            return self

        def rep(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat_interleave(k, dim=0)

        return ExpertContext(
            [rep(t) for t in self.keys],
            [rep(t) for t in self.values],
            rep(self.cross_mask),
            rep(self.self_mask),
            rep(self.valid),
            self.rope,
        )


@dataclass
class TimeModulation:
    """AdaLN shift / 1 + scale / gate tensors for one flow time per row."""

    blocks: list[tuple[torch.Tensor, ...]]  # per block 9 tensors (N, 1, D)
    final: tuple[torch.Tensor, torch.Tensor]  # (N, 1, D) shift, 1 + scale


class ActionExpert(nn.Module):
    """v_theta(x_t, t | LLM KV): (N, L, A) noisy actions + (N,) times -> (N, L, A) velocities."""

    def __init__(
        self, cfg: ActionExpertConfig, *, max_action_dim: int, max_horizon: int, llm_kv_dim: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_horizon = max_horizon
        self.heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        d = cfg.hidden_size
        self.time_embed = nn.Sequential(
            TimeFeatures(cfg.timestep_embed_dim),
            nn.Linear(cfg.timestep_embed_dim, d),
            nn.SiLU(),
            nn.Linear(d, d),
        )
        self.action_embed = nn.Linear(max_action_dim, d)
        self.context_k_proj = nn.Linear(llm_kv_dim, d, bias=False)  # shared by every block
        self.context_v_proj = nn.Linear(llm_kv_dim, d, bias=False)
        self.context_norm = RMSNorm() if cfg.context_layer_norm else nn.Identity()
        self.blocks = nn.ModuleList(ExpertBlock(cfg) for _ in range(cfg.num_layers))
        self.final_layer = FinalLayer(d, max_action_dim)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier linears, residual outputs scaled by 1/sqrt(2 * blocks), AdaLN-Zero modulation and output."""

        def xavier(lin: nn.Linear, scale: float = 1.0) -> None:
            nn.init.xavier_uniform_(lin.weight, generator=generator)
            lin.weight.mul_(scale)
            if lin.bias is not None:
                lin.bias.zero_()

        def zero(lin: nn.Linear) -> None:
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()

        residual = (2 * max(len(self.blocks), 1)) ** -0.5
        for lin in (
            self.time_embed[1],
            self.time_embed[3],
            self.action_embed,
            self.context_k_proj,
            self.context_v_proj,
        ):
            xavier(lin)
        for blk in self.blocks:
            xavier(blk.self_attn.qkv)
            xavier(blk.self_attn.out_proj, residual)
            xavier(blk.cross_attn.q_proj)
            xavier(blk.cross_attn.out_proj, residual)
            xavier(blk.mlp.up_proj)
            xavier(blk.mlp.gate_proj)
            xavier(blk.mlp.down_proj, residual)
            zero(blk.modulation.linear)
        zero(self.final_layer.modulation.linear)
        zero(self.final_layer.linear)

    def prepare_context(
        self,
        layer_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
        context_mask: torch.Tensor,
        horizon_mask: torch.Tensor,
    ) -> ExpertContext:
        """layer_kv: per LLM layer (K, V) each (B, T, kv_dim); context_mask (B, T); horizon_mask (B, L)."""
        if len(layer_kv) != len(self.blocks):
            raise ValueError(
                f"expert has {len(self.blocks)} blocks but got KV from {len(layer_kv)} LLM layers"
            )
        keys, values = [], []
        for k_in, v_in in layer_kv:
            b, t, _ = k_in.shape
            k = (
                self.context_norm(self.context_k_proj(k_in))
                .view(b, t, self.heads, self.head_dim)
                .transpose(1, 2)
            )
            v = (
                self.context_norm(self.context_v_proj(v_in))
                .view(b, t, self.heads, self.head_dim)
                .transpose(1, 2)
            )
            if self.cfg.qk_norm:
                k = rms_norm(k, self.cfg.qk_norm_eps)
            keys.append(k)
            values.append(v)
        length = horizon_mask.shape[1]
        # All-true masks become None: SDPA then takes its unmasked path (the common single-robot case).
        self_mask = None if horizon_mask.all() else horizon_mask[:, None, None, :]
        if self.cfg.causal_attn:
            causal = torch.ones(length, length, dtype=torch.bool, device=horizon_mask.device).tril()
            self_mask = causal if self_mask is None else self_mask & causal
        rope = (
            rope_tables(length, self.head_dim, self.cfg.rope_theta, horizon_mask.device)
            if self.cfg.rope
            else None
        )
        return ExpertContext(
            keys=keys,
            values=values,
            cross_mask=None if context_mask.all() else context_mask[:, None, None, :],
            self_mask=self_mask,
            valid=horizon_mask[:, :, None].to(keys[0].dtype),
            rope=rope,
        )

    def time_modulation(self, t: torch.Tensor) -> TimeModulation:
        """Flow times (N,) -> every block's AdaLN tensors."""
        cond = self.time_embed(t)
        return TimeModulation(
            [blk.modulation(cond) for blk in self.blocks], self.final_layer.modulation(cond)
        )

    def time_modulations(
        self, times: Sequence[float], batch: int, device: torch.device
    ) -> list[TimeModulation]:
        """All inference steps' modulations in one pass (one matmul per block instead of one per step)."""
        t = torch.tensor(times, dtype=torch.float32, device=device).repeat_interleave(batch)
        whole = self.time_modulation(t)

        def split(parts: tuple[torch.Tensor, ...], i: int) -> tuple[torch.Tensor, ...]:
            return tuple(p[i * batch : (i + 1) * batch] for p in parts)

        return [
            TimeModulation([split(b, i) for b in whole.blocks], split(whole.final, i))
            for i in range(len(times))
        ]

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, ctx: ExpertContext, modulation: TimeModulation | None = None
    ) -> torch.Tensor:
        """x_t (N, L, A), t (N,) in [0, 1] -> velocity (N, L, A); zero on padded horizon steps.
        `modulation`, if given, must be `time_modulation(t)` (precomputed)."""
        if x_t.shape[1] > self.max_horizon:
            raise ValueError(f"horizon {x_t.shape[1]} exceeds max_action_horizon={self.max_horizon}")
        mod = modulation if modulation is not None else self.time_modulation(t)
        x = self.action_embed(x_t) * ctx.valid
        for blk, blk_mod, k, v in zip(self.blocks, mod.blocks, ctx.keys, ctx.values, strict=True):
            x = blk(x, blk_mod, k, v, ctx) * ctx.valid
        return self.final_layer(x, mod.final) * ctx.valid
