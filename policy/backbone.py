"""Language side of the backbone: the Qwen3 decoder (transformers class), its attention mask and KV cache.

The prompt runs once through `Qwen3Model` with a custom 4D boolean mask: image tokens attend to each other
both ways, every other token causally, padding never. The decoder's `DynamicCache` then holds, per layer,
K after the layer's k-norm and RoPE and V, shape (B, kv_heads, T, head_dim): exactly what the action
expert's block i cross-attends to. `PrefixState` carries that cache and the masks; `extend` appends tokens
(e.g. MolmoThink depth tokens, issue 9) to the same cache so the expert then also sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3RotaryEmbedding

from policy.config import TextConfig


def build_attention_mask(
    attention_mask: torch.Tensor, image_token_mask: torch.Tensor, image_bidirectional: bool = True
) -> torch.Tensor:
    """(B, T) real-token and image-token flags -> (B, 1, T, T) bool, True = query may attend to key.

    Causal everywhere, plus image<->image both ways; keys that are padding are never attended. A padded query
    row keeps its own diagonal so softmax never sees an all-masked row (its output is unused).
    """
    b, t = attention_mask.shape
    idx = torch.arange(t, device=attention_mask.device)
    allowed = (idx[None, :] <= idx[:, None]).expand(b, t, t)
    if image_bidirectional:
        allowed = allowed | (image_token_mask[:, :, None] & image_token_mask[:, None, :])
    allowed = allowed & attention_mask[:, None, :]
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    return allowed[:, None]


@dataclass
class PrefixState:
    """The encoded prompt: what the action expert and any further decoding read."""

    cache: DynamicCache  # per layer: K (after k-norm + RoPE), V; (B, kv_heads, T, head_dim)
    attention_mask: torch.Tensor  # (B, T) bool, real tokens
    context_mask: torch.Tensor  # (B, T) bool, tokens the action expert may attend
    position_ids: torch.Tensor  # (B, T) long, RoPE positions
    last_hidden: torch.Tensor  # (B, n, H) final-norm hidden states of the n tokens run last

    def layer_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per LLM layer (K, V), each (B, T, kv_heads * head_dim)."""
        out = []
        for layer in self.cache.layers:
            k, v = layer.keys, layer.values
            b, h, t, d = k.shape
            out.append((k.transpose(1, 2).reshape(b, t, h * d), v.transpose(1, 2).reshape(b, t, h * d)))
        return out

    def next_positions(self) -> torch.Tensor:
        """(B,) RoPE position of the next appended token (after the last real one)."""
        return self.attention_mask.sum(-1)


class LanguageBackbone(nn.Module):
    """Qwen3 decoder + LM head over the predictable vocabulary."""

    def __init__(self, text: TextConfig) -> None:
        super().__init__()
        self.qwen3_config = Qwen3Config(
            vocab_size=text.vocab_size + text.additional_vocab_size,  # input rows incl. input-only tokens
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers,
            num_attention_heads=text.num_attention_heads,
            num_key_value_heads=text.num_key_value_heads,
            head_dim=text.head_dim,
            hidden_act=text.hidden_act,
            max_position_embeddings=text.max_position_embeddings,
            rms_norm_eps=text.layer_norm_eps,
            rope_theta=text.rope_theta,
            attention_bias=False,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            use_sliding_window=False,
            attn_implementation="sdpa",
        )
        self.decoder = Qwen3Model(self.qwen3_config)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)

    def rebuild_rotary(self, device: torch.device | str = "cpu") -> None:
        """Recompute the (non-persistent) RoPE tables, e.g. after building on the meta device."""
        self.decoder.rotary_emb = Qwen3RotaryEmbedding(config=self.qwen3_config, device=torch.device(device))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, H)."""
        return self.decoder.embed_tokens(input_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., vocab_size)."""
        return self.lm_head(hidden)

    def _run(
        self, embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        # A dict mask is used as given by Qwen3Model (no causal mask is derived from it).
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask={"full_attention": mask},
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.last_hidden_state

    def encode(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        image_token_mask: torch.Tensor,
        context_mask: torch.Tensor,
        image_bidirectional: bool = True,
    ) -> PrefixState:
        """Run the whole prompt (B, T, H) once; positions count real tokens only."""
        mask = build_attention_mask(attention_mask, image_token_mask, image_bidirectional)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        hidden = self._run(embeds, mask, position_ids, cache)
        return PrefixState(cache, attention_mask, context_mask, position_ids, hidden)

    def extend(self, state: PrefixState, embeds: torch.Tensor, visible_to_expert: bool = True) -> PrefixState:
        """Append n tokens (B, n, H) after each row's real tokens, causally. The cache grows in place; the
        returned state shares it (keep `cache.crop(T)` in mind to roll back)."""
        b, n, _ = embeds.shape
        t_old = state.attention_mask.shape[1]
        device = embeds.device
        position_ids = state.next_positions()[:, None] + torch.arange(n, device=device)[None, :]
        new_valid = torch.ones(b, n, dtype=torch.bool, device=device)
        keys_valid = torch.cat([state.attention_mask, new_valid], dim=1)  # (B, T_old + n)
        causal_new = torch.arange(n, device=device)[None, :] <= torch.arange(n, device=device)[:, None]
        allowed = torch.cat(
            [keys_valid[:, None, :t_old].expand(b, n, t_old), causal_new.expand(b, n, n)], dim=2
        )
        hidden = self._run(embeds, allowed[:, None], position_ids, state.cache)
        return PrefixState(
            cache=state.cache,
            attention_mask=keys_valid,
            context_mask=torch.cat([state.context_mask, new_valid & visible_to_expert], dim=1),
            position_ids=torch.cat([state.position_ids, position_ids], dim=1),
            last_hidden=hidden,
        )
