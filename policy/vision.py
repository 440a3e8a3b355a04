"""Vision side of the backbone: SigLIP2 encoder (transformers classes) and the connector into the LLM.

`VisionEncoder` builds `Siglip2VisionEmbeddings` + `Siglip2Encoder` with only the layers up to the deepest
one the adapter reads, and returns the outputs of `adapter_config.vit_layers` concatenated per patch (the
released model reads layers -3 and -9). `ImageConnector` pools each 2x2 patch window with one attention
step (query = mean of the window) and projects with a SwiGLU MLP to the LLM width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.siglip2.configuration_siglip2 import Siglip2VisionConfig
from transformers.models.siglip2.modeling_siglip2 import Siglip2Encoder, Siglip2VisionEmbeddings

from policy.config import AdapterConfig, VisionConfig


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, H, W, 3) -> (N, H/p * W/p, p * p * 3), patches row-major, pixels (row, col, channel) inside."""
    n, h, w, c = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


class VisionEncoder(nn.Module):
    """uint8 camera images -> per-patch features from the chosen ViT layers."""

    def __init__(self, vit: VisionConfig, vit_layers: tuple[int, ...]) -> None:
        super().__init__()
        self.patch_size = vit.image_patch_size
        self.grid = vit.image_num_patch
        self.feature_layers = [i if i >= 0 else i + vit.num_hidden_layers for i in vit_layers]
        siglip = Siglip2VisionConfig(
            hidden_size=vit.hidden_size,
            intermediate_size=vit.intermediate_size,
            num_hidden_layers=max(self.feature_layers) + 1,  # deeper layers are never read
            num_attention_heads=vit.num_attention_heads,
            num_channels=3,
            patch_size=vit.image_patch_size,
            hidden_act=vit.hidden_act,
            layer_norm_eps=vit.layer_norm_eps,
            num_patches=vit.image_num_pos,
            attn_implementation="sdpa",
        )
        self.embeddings = Siglip2VisionEmbeddings(siglip)
        self.encoder = Siglip2Encoder(siglip)

    @property
    def feature_dim(self) -> int:
        return self.embeddings.embed_dim * len(self.feature_layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, H, W, 3) uint8 -> (N, P, feature_dim) with P = grid rows * cols."""
        x = images.to(self.embeddings.patch_embedding.weight.dtype) / 255.0 * 2.0 - 1.0  # SigLIP: [-1, 1]
        patches = patchify(x, self.patch_size)
        # The config guarantees the patch grid equals the learned position grid, so SigLIP2's position
        # resize is the identity and the table is added as is.
        h = self.embeddings.patch_embedding(patches) + self.embeddings.position_embedding.weight
        wanted = set(self.feature_layers)
        kept: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.encoder.layers):
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
            if i in wanted:
                kept[i] = h
        return torch.cat([kept[i] for i in self.feature_layers], dim=-1)


class PoolingAttention(nn.Module):
    """One multi-head attention step from a window's mean (query) over its patches (keys/values)."""

    def __init__(
        self, input_dim: int, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(input_dim, num_heads * head_dim)
        self.k_proj = nn.Linear(input_dim, num_kv_heads * head_dim)
        self.v_proj = nn.Linear(input_dim, num_kv_heads * head_dim)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """query (M, 1, D), keys (M, W, D), key_mask (M, W) bool or None -> (M, 1, hidden)."""
        m, w, _ = keys.shape
        q = self.q_proj(query).view(m, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(keys).view(m, w, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(keys).view(m, w, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (M, heads, 1, head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(m, 1, self.num_heads * self.head_dim))


class SwiGLUProjector(nn.Module):
    """down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(input_dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(input_dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, output_dim, bias=False)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class ImageConnector(nn.Module):
    """Patch features (N, P, D_vit_cat) -> image tokens (N, tokens_per_image, D_llm)."""

    def __init__(self, adapter: AdapterConfig, feature_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.window = (adapter.image_pooling_h, adapter.image_pooling_w)
        self.masked = adapter.pooling_attention_mask
        self.pool = PoolingAttention(
            feature_dim,
            adapter.hidden_size,
            adapter.num_attention_heads,
            adapter.num_key_value_heads,
            adapter.head_dim,
        )
        self.projector = SwiGLUProjector(
            adapter.hidden_size, adapter.intermediate_size, adapter.text_hidden_size, adapter.hidden_act
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, _, d = features.shape
        (gh, gw), (dh, dw) = self.grid, self.window
        ph, pw = math.ceil(gh / dh), math.ceil(gw / dw)
        pad_h, pad_w = ph * dh - gh, pw * dw - gw
        # Odd grids are padded half before, half after (extra row/col after), with zero features.
        grid = features.view(n, gh, gw, d)
        grid = F.pad(grid, (0, 0, pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        valid = torch.ones(gh, gw, dtype=torch.bool, device=features.device)
        valid = F.pad(valid, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=False)
        windows = grid.view(n, ph, dh, pw, dw, d).permute(0, 1, 3, 2, 4, 5).reshape(n * ph * pw, dh * dw, d)
        win_valid = valid.view(ph, dh, pw, dw).permute(0, 2, 1, 3).reshape(1, ph * pw, dh * dw)
        win_valid = win_valid.expand(n, -1, -1).reshape(n * ph * pw, dh * dw)
        if self.masked:
            count = win_valid.sum(-1, keepdim=True).clamp(min=1).unsqueeze(-1)
            query = windows.sum(1, keepdim=True) / count
            pooled = self.pool(query, windows, win_valid)
        else:
            pooled = self.pool(windows.mean(1, keepdim=True), windows, None)
        return self.projector(pooled.view(n, ph * pw, -1))
