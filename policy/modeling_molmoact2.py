"""MolmoAct2Policy: vision encoder + connector + Qwen3 decoder + per-layer flow-matching action expert.

Reads top to bottom: construction (and deterministic initialisation from a seed), fine-tuning modes and
parameter groups, the shared forward pieces (`encode_images` -> `encode_prefix` -> `expert_context`), the
training loss, and inference (`sample_actions` in normalised space, `predict_actions` in real units).

The prompt runs once; the decoder's KV cache (per layer K after k-norm + RoPE, and V) conditions the expert,
whose K noise samples per chunk reuse one set of context projections. Training uses a single decoder pass
for both losses: the OpenFAST target tokens sit after the prompt, so causality keeps the prompt's KV equal to
what inference sees, and the expert's cross-attention mask leaves the targets out.

Issue 9 (MolmoThink) plugs in through `encode_prefix`, `extend_prefix` (append depth tokens to the cache),
`token_logits` and `expert_context`/`sample_actions_from_prefix`; depth tokens are already in the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from policy.action_expert import ActionExpert, ExpertContext
from policy.backbone import LanguageBackbone, PrefixState
from policy.config import MolmoAct2Config
from policy.normalization import NormStats
from policy.openfast import OpenFAST
from policy.processor import IGNORE_INDEX, PolicyProcessor, PolicySample
from policy.prompt_tokenizer import PromptTokenizer
from policy.vision import ImageConnector, VisionEncoder

FINETUNE_MODES = ("full", "lora", "expert")


def used_horizon(horizon_mask: torch.Tensor) -> int:
    """Steps up to the last real one in any row: (B, H) bool -> L <= H."""
    steps = torch.nonzero(horizon_mask.any(0))
    return int(steps.max()) + 1 if steps.numel() else 1


class MolmoAct2Policy(nn.Module):
    """The policy. Holds no optimizer and no robot knowledge beyond the norm-stats tags."""

    def __init__(
        self,
        config: MolmoAct2Config,
        norm_stats: NormStats,
        prompt_tokenizer: PromptTokenizer | None = None,
        action_tokenizer: OpenFAST | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.norm_stats = norm_stats
        if prompt_tokenizer is None:
            if config.tokenizer != "byte_level":
                raise ValueError("config.tokenizer='checkpoint' needs the checkpoint's PromptTokenizer")
            prompt_tokenizer = PromptTokenizer.byte_level(
                config.num_state_tokens, config.num_action_tokens, config.num_depth_codes
            )
        embed_rows = config.text_config.vocab_size + config.text_config.additional_vocab_size
        if prompt_tokenizer.vocab_size > embed_rows:
            raise ValueError(
                f"tokenizer has {prompt_tokenizer.vocab_size} ids but the LLM embeds {embed_rows}"
            )
        self.prompt_tokenizer = prompt_tokenizer
        self.action_tokenizer = action_tokenizer or OpenFAST(
            scale=config.openfast_scale, vocab_size=config.num_action_tokens
        )
        self.processor = PolicyProcessor(config, norm_stats, self.prompt_tokenizer, self.action_tokenizer)

        self.vision = VisionEncoder(config.vit_config, config.adapter_config.vit_layers)
        self.connector = ImageConnector(
            config.adapter_config, self.vision.feature_dim, config.vit_config.image_num_patch
        )
        self.llm = LanguageBackbone(config.text_config)
        self.expert = ActionExpert(
            config.action_expert_config,
            max_action_dim=config.max_action_dim,
            max_horizon=config.max_action_horizon,
            llm_kv_dim=config.llm_kv_dim,
        )
        self.lora_attached = False
        self.finetune_mode = "full"

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: MolmoAct2Config,
        norm_stats: NormStats,
        seed: int = 0,
        *,
        prompt_tokenizer: PromptTokenizer | None = None,
        action_tokenizer: OpenFAST | None = None,
    ) -> MolmoAct2Policy:
        """A freshly initialised policy; identical for identical (config, seed). The global RNG is untouched."""
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(
            devices=[]
        ):  # module constructors draw from the global RNG; keep it intact
            policy = cls(config, norm_stats, prompt_tokenizer, action_tokenizer)
            policy.init_weights(generator)
            if config.finetune.mode == "lora":
                policy.attach_lora(generator)
        policy.set_finetune_mode(config.finetune.mode)
        return policy

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Every tensor from `generator`: N(0, 0.02) linears and embeddings, unit norms, the expert's own init;
        the image connector's linears N(0, 1 / fan_in). At 0.02 its pooling attention and SwiGLU (a product of two
        small projections) shrank fresh image features to ~3e-7 RMS, under the LLM's RMSNorm eps: a from-scratch
        policy could not see its images, and its vision tower got no gradient."""
        std = 0.02
        for name, module in self.named_modules():
            if name.startswith("expert"):
                continue
            if isinstance(module, nn.Linear):
                scale = module.in_features**-0.5 if name.startswith("connector.") else std
                nn.init.normal_(module.weight, 0.0, scale, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, Qwen3RMSNorm):
                module.weight.fill_(1.0)
        self.expert.reset_parameters(generator)

    def attach_lora(self, generator: torch.Generator | None = None) -> None:
        """Put LoRA adapters (peft) on the LLM's linear layers: A Kaiming-uniform, B zero (a no-op at start)."""
        if self.lora_attached:
            return
        from peft import LoraConfig, inject_adapter_in_model

        ft = self.config.finetune
        lora = LoraConfig(
            r=ft.lora_rank,
            lora_alpha=ft.lora_alpha,
            lora_dropout=ft.lora_dropout,
            target_modules=list(ft.lora_target_modules),
            bias="none",
        )
        with torch.random.fork_rng(devices=[]):
            inject_adapter_in_model(lora, self.llm.decoder)
        with torch.no_grad():
            for name, param in self.llm.decoder.named_parameters():
                if ".lora_A." in name:
                    nn.init.kaiming_uniform_(param, a=math.sqrt(5), generator=generator)
                elif ".lora_B." in name:
                    param.zero_()
        self.lora_attached = True

    def use_action_tokenizer(self, action_tokenizer: OpenFAST) -> None:
        """Swap the OpenFAST tokenizer (e.g. one fitted on the fleet's data) before training starts."""
        self.action_tokenizer = action_tokenizer
        self.processor = PolicyProcessor(
            self.config, self.norm_stats, self.prompt_tokenizer, action_tokenizer
        )

    # ---- what trains ----------------------------------------------------------------------------------------
    def trainable_parameter_names(self, mode: str | None = None) -> list[str]:
        """Names (in `named_parameters` order) that train in `mode` (default: the config's)."""
        mode = mode or self.config.finetune.mode
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune mode {mode!r} is not one of {FINETUNE_MODES}")
        names = [n for n, _ in self.named_parameters()]
        if mode == "full":
            return names
        if mode == "lora" and not self.lora_attached:
            raise ValueError(
                "mode 'lora' needs LoRA adapters: build with finetune.mode='lora' or call attach_lora()"
            )
        return [n for n in names if n.startswith("expert.") or (mode == "lora" and ".lora_" in n)]

    def set_finetune_mode(self, mode: str) -> None:
        """requires_grad on exactly the parameters that train in `mode`."""
        keep = set(self.trainable_parameter_names(mode))
        for name, param in self.named_parameters():
            param.requires_grad_(name in keep)
        self.finetune_mode = mode

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part, for per-part learning rates: llm (decoder, LM head, adapters),
        vision (encoder + connector), expert."""
        groups: dict[str, list[nn.Parameter]] = {"llm": [], "vision": [], "expert": []}
        part = {"llm": "llm", "vision": "vision", "connector": "vision", "expert": "expert"}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups[part[name.split(".", 1)[0]]].append(param)
        return groups

    @property
    def device(self) -> torch.device:
        return self.expert.action_embed.weight.device

    # ---- forward pieces -------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """images (B, C, h, w, 3) uint8, image_mask (B, C) -> (N_real_cameras, tokens_per_camera, H)."""
        return self.connector(self.vision(images[image_mask]))

    def embed_inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings with pooled image features written into the image slots: (B, T, H)."""
        embeds = self.llm.embed(batch["input_ids"])
        feats = self.encode_images(batch["images"], batch["image_mask"])
        slots = batch["image_token_mask"]
        if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"{int(slots.sum())} image slots in the prompt but {feats.shape[0] * feats.shape[1]} image tokens"
            )
        # Slots in row-major (sample, position) order meet features in (sample, camera, token) order.
        return embeds.masked_scatter(slots[..., None], feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))

    def encode_prefix(self, batch: dict[str, torch.Tensor]) -> PrefixState:
        """One decoder pass over the batch's tokens; the returned cache conditions the expert."""
        return self.llm.encode(
            self.embed_inputs(batch),
            batch["attention_mask"],
            batch["image_token_mask"],
            batch["context_mask"],
            self.config.image_bidirectional,
        )

    def extend_prefix(
        self, state: PrefixState, input_ids: torch.Tensor, visible_to_expert: bool = True
    ) -> PrefixState:
        """Append tokens (B, n) to an encoded prefix (MolmoThink depth tokens); logits via `token_logits`."""
        return self.llm.extend(state, self.llm.embed(input_ids), visible_to_expert)

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.logits(hidden)

    def expert_context(
        self, state: PrefixState, horizon_mask: torch.Tensor, insulate: bool = False
    ) -> ExpertContext:
        """Context K/V projections of every layer, once. insulate: no flow gradient into the LLM."""
        kv = state.layer_kv()
        if insulate:
            kv = [(k.detach(), v.detach()) for k, v in kv]
        return self.expert.prepare_context(kv, state.context_mask, horizon_mask)

    def sample_flow_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t = offset + scale * Beta(alpha, beta), (n,), drawn from `generator`."""
        cfg = self.config
        a, b = cfg.flow_matching_beta_alpha, cfg.flow_matching_beta_beta
        u = torch.rand(n, generator=generator, device=self.device)
        if a == 1.0:  # inverse CDF of Beta(1, b): 1 - (1 - u)^(1/b)
            s = 1.0 - (1.0 - u).pow(1.0 / b)
        elif b == 1.0:
            s = u.pow(1.0 / a)
        else:  # torch's Beta sampler takes no generator: seed a forked RNG from ours
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                s = torch.distributions.Beta(a, b).sample((n,)).to(self.device)
        return cfg.flow_matching_time_offset + cfg.flow_matching_time_scale * s

    # ---- training -------------------------------------------------------------------------------------------
    def loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Flow MSE (K noise samples per chunk, masked) + token CE and z-loss on the OpenFAST targets, + depth
        CE on MolmoThink depth codes when the batch has them (10% of their inputs replaced by random codes)."""
        cfg = self.config
        if "actions" not in batch:
            raise ValueError("loss needs a batch collated with targets (samples with actions)")
        depth_inputs = batch.get("depth_token_mask")
        if depth_inputs is not None and self.training and cfg.depth.input_noise > 0:
            # Teacher forcing on noisy depth: at inference, replayed codes may be stale and decoded ones wrong.
            flip = depth_inputs & (
                torch.rand(depth_inputs.shape, generator=generator, device=self.device)
                < cfg.depth.input_noise
            )
            noise = self.prompt_tokenizer.depth_token(0) + torch.randint(
                0, cfg.num_depth_codes, depth_inputs.shape, generator=generator, device=self.device
            )
            batch = {**batch, "input_ids": torch.where(flip, noise, batch["input_ids"])}
        state = self.encode_prefix(batch)
        length = used_horizon(batch["action_horizon_mask"])  # steps past every row's horizon are skipped
        dim_mask, horizon_mask = batch["action_dim_mask"], batch["action_horizon_mask"][:, :length]
        k = cfg.num_flow_timesteps
        ctx = self.expert_context(state, horizon_mask, insulate=cfg.enable_knowledge_insulation).repeat(k)

        actions = batch["actions"][:, :length] * dim_mask[:, None, :]
        actions = actions.repeat_interleave(k, dim=0)  # (B*K, L, A)
        n = actions.shape[0]
        t = self.sample_flow_time(n, generator)[:, None, None]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        if cfg.mask_action_dim_padding:
            noise = noise * dim_mask.repeat_interleave(k, dim=0)[:, None, :]
        x_t = (1.0 - t) * noise + t * actions
        target = actions - noise
        pred = self.expert(x_t, t[:, 0, 0], ctx)
        weight = (horizon_mask[:, :, None] & dim_mask[:, None, :]).repeat_interleave(k, dim=0).to(pred.dtype)
        flow_mse = ((pred - target).pow(2) * weight).sum() / weight.sum().clamp(min=1.0)

        zero = flow_mse.new_zeros(())
        token_ce, z_loss, depth_ce = zero, zero, zero
        labels = batch.get("labels")
        if labels is not None and bool((labels != IGNORE_INDEX).any()):
            target_ids = labels[:, 1:]  # hidden at p predicts token p + 1
            picked = target_ids != IGNORE_INDEX
            targets = target_ids[picked]
            base = self.prompt_tokenizer.depth_token(0)
            is_depth = (targets >= base) & (targets < base + cfg.num_depth_codes)  # (P,)
            is_token = ~is_depth if cfg.action_mode == "both" else torch.zeros_like(is_depth)
            keep = is_depth | is_token
            if bool(keep.any()):
                logits = self.llm.logits(state.last_hidden[:, :-1][picked][keep]).float()
                log_z = logits.logsumexp(-1)
                ce = log_z - logits.gather(-1, targets[keep][:, None])[:, 0]
                z_loss = cfg.softmax_auxiliary_loss_scale * log_z.pow(2).mean()
                if bool(is_token.any()):
                    token_ce = ce[is_token[keep]].mean()
                if bool(is_depth.any()):
                    depth_ce = ce[is_depth[keep]].mean()
        total = flow_mse + cfg.token_loss_weight * (token_ce + z_loss) + cfg.depth.loss_weight * depth_ce
        return {
            "loss": total,
            "flow_mse": flow_mse,
            "token_ce": token_ce,
            "z_loss": z_loss,
            "depth_ce": depth_ce,
        }

    # ---- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions_from_prefix(
        self,
        state: PrefixState,
        action_dim_mask: torch.Tensor,
        action_horizon_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Euler-integrate the flow from noise (t=0) to actions (t=1): (B, H, A) normalised actions."""
        cfg = self.config
        steps = num_steps or cfg.flow_matching_num_steps
        b, full = action_dim_mask.shape[0], cfg.max_action_horizon
        length = used_horizon(action_horizon_mask)
        # Context projections of all layers: once per call, shared by every Euler step.
        ctx = self.expert_context(state, action_horizon_mask[:, :length])
        pad = action_dim_mask[:, None, :].to(torch.float32) if cfg.mask_action_dim_padding else 1.0
        # Noise is drawn at the full (H, A) size so a generator gives the same chunk whatever horizon is run.
        noise = torch.randn((b, full, cfg.max_action_dim), generator=generator, device=self.device)
        x = noise[:, :length] * pad
        times = [i / steps for i in range(steps)]
        for t, mod in zip(times, self.expert.time_modulations(times, b, self.device), strict=True):
            x = (x + self.expert(x, torch.full((b,), t, device=self.device), ctx, mod) / steps) * pad
        return torch.nn.functional.pad(x, (0, 0, 0, full - length))

    @torch.no_grad()
    def sample_actions(
        self,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Collated batch -> (B, H, A) normalised actions."""
        state = self.encode_prefix(batch)
        return self.sample_actions_from_prefix(
            state, batch["action_dim_mask"], batch["action_horizon_mask"], generator, num_steps
        )

    @torch.inference_mode()
    def predict_actions(
        self,
        samples: PolicySample | Sequence[PolicySample],
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """One sample -> (horizon, action_dim) float32 in real units; a list -> a list (one batched pass)."""
        single = isinstance(samples, PolicySample)
        items = [samples] if single else list(samples)
        batch = self.processor.collate(items, with_targets=False)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        normed = self.sample_actions(batch, generator, num_steps).float().cpu().numpy()
        out = []
        for row, s in zip(normed, items, strict=True):
            meta = self.norm_stats[s.embodiment]
            out.append(
                self.norm_stats.unnormalize_action(
                    s.embodiment, row[: meta.action_horizon, : meta.action_dim], s.state
                )
            )
        return out[0] if single else out
