"""Checkpoints: our full format, the released Hugging Face layout, and the trainable subset hot swap ships.

Our checkpoint directory: `model.safetensors` (every parameter), `config.json` (MolmoAct2Config),
`norm_stats.json`, `tokenizer.json` (text), `openfast.json` (action tokens). A released directory has
`config.json`, `model.safetensors` or shards + `model.safetensors.index.json`, `norm_stats.json` and
`tokenizer.json`; its names are mapped by `policy/released_layout.py` and any key that does not map, or
any parameter left unfilled, is reported by name.

The trainable subset (the expert, plus LoRA adapters or everything, by fine-tuning mode) is a safetensors
blob whose metadata carries the mode and a hash of the architecture; loading it into a policy of another
shape fails with the reason. Values round-trip bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.openfast import OpenFAST
from policy.prompt_tokenizer import PromptTokenizer
from policy.released_layout import (
    config_from_released,
    ours_to_released,
    released_config_dict,
    released_to_ours,
)

MODEL_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
NORM_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.json"
OPENFAST_FILE = "openfast.json"
TRAINABLE_FORMAT = "molmofleet-trainable/1"


class CheckpointKeyError(ValueError):
    """A weight file does not match the model: names listed."""

    def __init__(self, source: str, missing: list[str], unknown: list[str]) -> None:
        self.missing, self.unknown = missing, unknown
        lines = [f"{source} does not match the model"]
        if missing:
            lines.append(
                f"missing ({len(missing)}): "
                + ", ".join(missing[:30])
                + (" ..." if len(missing) > 30 else "")
            )
        if unknown:
            lines.append(
                f"unknown ({len(unknown)}): "
                + ", ".join(unknown[:30])
                + (" ..." if len(unknown) > 30 else "")
            )
        super().__init__("\n  ".join(lines))


# ---- building a policy around loaded weights ---------------------------------------------------------------
def _assemble(
    config: MolmoAct2Config,
    norm_stats: NormStats,
    tokens: PromptTokenizer,
    action_tokenizer: OpenFAST,
    state: dict[str, torch.Tensor],
    source: str,
    attach_lora_before_load: bool,
) -> MolmoAct2Policy:
    """Build on the meta device (no random init of weights about to be replaced), then take `state`."""
    with torch.device("meta"):
        policy = MolmoAct2Policy(config, norm_stats, tokens, action_tokenizer)
        if attach_lora_before_load:
            policy.attach_lora()
    expected = set(policy.state_dict())
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unknown:
        raise CheckpointKeyError(source, missing, unknown)
    policy.load_state_dict(state, strict=True, assign=True)
    policy.llm.rebuild_rotary("cpu")
    leftovers = [n for n, t in [*policy.named_parameters(), *policy.named_buffers()] if t.is_meta]
    if leftovers:
        raise CheckpointKeyError(source, leftovers, [])
    return policy


def _finish(policy: MolmoAct2Policy, mode: str) -> MolmoAct2Policy:
    if mode == "lora" and not policy.lora_attached:
        policy.attach_lora(torch.Generator().manual_seed(0))
    policy.set_finetune_mode(mode)
    return policy


# ---- our format --------------------------------------------------------------------------------------------
def save_checkpoint(directory: str | Path, policy: MolmoAct2Policy) -> Path:
    """Write every parameter, the config, norm stats and both tokenizers into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(out / MODEL_FILE), metadata={"format": "molmofleet-policy/1"})
    (out / CONFIG_FILE).write_text(policy.config.model_dump_json(indent=1))
    policy.norm_stats.save(out / NORM_FILE)
    policy.prompt_tokenizer.save(out / TOKENIZER_FILE)
    policy.action_tokenizer.save(out / OPENFAST_FILE)
    return out


def _tokens_for(config: MolmoAct2Config, directory: Path) -> PromptTokenizer:
    return PromptTokenizer.from_file(
        directory / TOKENIZER_FILE,
        num_state_tokens=config.num_state_tokens,
        num_action_tokens=config.num_action_tokens,
        num_depth_codes=config.num_depth_codes,
        overrides=config.token_ids,
    )


def load_checkpoint(directory: str | Path) -> MolmoAct2Policy:
    """The policy `save_checkpoint` wrote, bit-exact, in its config's fine-tuning mode."""
    src = Path(directory)
    config = MolmoAct2Config.model_validate_json((src / CONFIG_FILE).read_text())
    state = load_file(str(src / MODEL_FILE))
    has_lora = any(".lora_" in k for k in state)
    policy = _assemble(
        config,
        NormStats.load(src / NORM_FILE),
        _tokens_for(config, src),
        OpenFAST.load(src / OPENFAST_FILE),
        state,
        str(src / MODEL_FILE),
        attach_lora_before_load=has_lora,
    )
    return _finish(policy, config.finetune.mode)


# ---- released Hugging Face layout -------------------------------------------------------------------------
def _read_released_tensors(src: Path) -> dict[str, torch.Tensor]:
    if (src / INDEX_FILE).exists():
        index = json.loads((src / INDEX_FILE).read_text())
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors.update(load_file(str(src / shard)))
        return tensors
    if (src / MODEL_FILE).exists():
        return load_file(str(src / MODEL_FILE))
    raise FileNotFoundError(f"{src} has neither {MODEL_FILE} nor {INDEX_FILE}")


def load_released_checkpoint(directory: str | Path, **config_overrides: object) -> MolmoAct2Policy:
    """A released MolmoAct2 directory -> our policy. `config_overrides` set fields the released config.json
    does not carry (e.g. `finetune`, `prompt_style`). Raises CheckpointKeyError naming unknown/missing keys."""
    src = Path(directory)
    config = config_from_released(json.loads((src / CONFIG_FILE).read_text()), **config_overrides)
    norm_stats = NormStats.load(src / config.norm_stats_filename)
    openfast = OpenFAST.load(src / OPENFAST_FILE) if (src / OPENFAST_FILE).exists() else None
    tokens = _tokens_for(config, src)
    with torch.device("meta"):
        expert_names = [
            n
            for n, _ in MolmoAct2Policy(config, norm_stats, tokens, openfast).expert.named_parameters(
                prefix="expert"
            )
        ]
    state, unknown = released_to_ours(_read_released_tensors(src), config, expert_names)
    if unknown:
        with torch.device("meta"):
            expected = set(MolmoAct2Policy(config, norm_stats, tokens, openfast).state_dict())
        raise CheckpointKeyError(str(src), sorted(expected - set(state)), unknown)
    policy = _assemble(
        config,
        norm_stats,
        tokens,
        openfast or OpenFAST(scale=config.openfast_scale, vocab_size=config.num_action_tokens),
        state,
        str(src),
        False,
    )
    return _finish(policy, config.finetune.mode)


def save_released_checkpoint(
    directory: str | Path, policy: MolmoAct2Policy, max_shard_tensors: int = 0
) -> Path:
    """Write `policy` in the released layout (names, fused tensors, config.json fields); with
    `max_shard_tensors` > 0 as shards plus an index. LoRA adapters are not part of that layout."""
    if policy.lora_attached:
        raise ValueError("the released layout has no LoRA adapters; export a policy without them")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = ours_to_released({k: v.detach() for k, v in policy.state_dict().items()}, policy.config)
    names = sorted(tensors)
    if max_shard_tensors > 0:
        groups = [names[i : i + max_shard_tensors] for i in range(0, len(names), max_shard_tensors)]
        weight_map = {}
        for i, group in enumerate(groups):
            shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: tensors[n] for n in group}, str(out / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(group, shard))
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    else:
        save_file(tensors, str(out / MODEL_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(
        json.dumps(released_config_dict(policy.config, policy.prompt_tokenizer), indent=1)
    )
    policy.norm_stats.save(out / policy.config.norm_stats_filename)
    policy.prompt_tokenizer.save(out / TOKENIZER_FILE)
    return out


# ---- trainable subset (hot swap) ---------------------------------------------------------------------------
def architecture_hash(policy: MolmoAct2Policy) -> str:
    """sha256 of what decides trainable tensor names and shapes."""
    spec = policy.config.architecture_fingerprint()
    lora_fields = {"lora_rank", "lora_alpha", "lora_target_modules"}  # shape and scale, not mode or dropout
    spec["lora"] = (
        policy.config.finetune.model_dump(mode="json", include=lora_fields) if policy.lora_attached else None
    )
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def trainable_state(policy: MolmoAct2Policy, mode: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors that train in `mode` (default: the policy's config), detached and contiguous."""
    params = dict(policy.named_parameters())
    return {n: params[n].detach().contiguous() for n in policy.trainable_parameter_names(mode)}


def trainable_bytes(policy: MolmoAct2Policy, mode: str | None = None) -> bytes:
    """The trainable subset as safetensors bytes (what a weight version ships)."""
    mode = mode or policy.config.finetune.mode
    meta = {"format": TRAINABLE_FORMAT, "mode": mode, "architecture": architecture_hash(policy)}
    return save(trainable_state(policy, mode), metadata=meta)


def save_trainable(path: str | Path, policy: MolmoAct2Policy, mode: str | None = None) -> dict:
    """Write the trainable subset; returns {mode, tensors, parameters, bytes, sha256}."""
    data = trainable_bytes(policy, mode)
    Path(path).write_bytes(data)
    state = load(data)
    return {
        "mode": mode or policy.config.finetune.mode,
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def load_trainable(policy: MolmoAct2Policy, source: str | Path | bytes) -> dict:
    """Copy a trainable subset (file path or bytes) into `policy` in place, bit-exact. Checks format,
    architecture hash, names, shapes and dtypes before touching any weight."""
    data = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    state = load(data)
    # safetensors layout: 8-byte little-endian header length, then the JSON header holding __metadata__.
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    if meta.get("format") != TRAINABLE_FORMAT:
        raise ValueError(f"not a trainable-weights blob (format {meta.get('format')!r})")
    if meta.get("architecture") != architecture_hash(policy):
        raise ValueError(
            "trainable weights were made for a different architecture (config or LoRA shape differs)"
        )
    params = dict(policy.named_parameters())
    unknown = sorted(n for n in state if n not in params)
    if unknown:
        raise CheckpointKeyError("trainable weights", [], unknown)
    bad = [
        f"{n} {tuple(t.shape)}/{t.dtype} vs {tuple(params[n].shape)}/{params[n].dtype}"
        for n, t in state.items()
        if t.shape != params[n].shape or t.dtype != params[n].dtype
    ]
    if bad:
        raise ValueError("trainable weights do not fit: " + "; ".join(bad[:10]))
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    return {
        "mode": meta.get("mode"),
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
    }


def load_trainable_bytes(policy: MolmoAct2Policy, data: bytes) -> dict:
    """`load_trainable` for bytes received over the wire."""
    return load_trainable(policy, data)
