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
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


# safetensors dtype names -> torch dtypes: those a policy's parameters can have
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class _Stored:
    """Where one tensor lies in a safetensors blob."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # bytes from the start of the blob
    end: int


def safetensors_layout(data: memoryview) -> tuple[dict, dict[str, _Stored]]:
    """The metadata and tensor table of a safetensors blob (8-byte little-endian header length, JSON header,
    then the data section), checked strictly: known dtypes, integer shapes and offsets, each tensor's bytes
    matching its shape, the tensors tiling the data section exactly (no gap, overlap or trailing bytes)."""
    if sys.byteorder != "little":  # safetensors stores little-endian values and they are copied as bytes
        raise ValueError("loading safetensors bytes as they are needs a little-endian host")
    if len(data) < 8 or (header_len := int.from_bytes(data[:8], "little")) > len(data) - 8:
        raise ValueError(f"not a safetensors blob: {len(data)} bytes, too short for its header")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors blob: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors blob: its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ValueError("not a safetensors blob: __metadata__ is not a JSON object")
    base = 8 + header_len
    table: dict[str, _Stored] = {}
    for name, spec in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            shape = tuple(spec["shape"])
            begin, end = spec["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"safetensors entry {name!r} is malformed or of an unsupported dtype") from None
        if not all(type(x) is int and x >= 0 for x in (*shape, begin, end)):
            raise ValueError(f"safetensors entry {name!r}: shape and offsets must be non-negative integers")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"safetensors entry {name!r}: offsets {begin}..{end} do not fit shape {shape}")
        table[name] = _Stored(dtype, shape, base + begin, base + end)
    covered = base
    for stored in sorted(table.values(), key=lambda t: (t.start, t.end)):  # empty tensors first
        if stored.start != covered:
            raise ValueError("safetensors data section has gaps or overlapping tensors")
        covered = stored.end
    if covered != len(data):
        raise ValueError(f"safetensors data section ends at byte {covered}, the blob at {len(data)}")
    return meta, table


def _copy_stored(
    targets: Mapping[str, torch.Tensor], table: dict[str, _Stored], data: memoryview, what: str
) -> None:
    """Check names, shapes and dtypes of every stored tensor against `targets`, then copy them in."""
    unknown = sorted(n for n in table if n not in targets)
    if unknown:
        raise CheckpointKeyError(what, [], unknown)
    bad = [
        f"{n} {t.shape}/{t.dtype} vs {tuple(targets[n].shape)}/{targets[n].dtype}"
        for n, t in table.items()
        if t.shape != tuple(targets[n].shape) or t.dtype != targets[n].dtype
    ]
    if bad:
        raise ValueError(f"{what} do not fit: " + "; ".join(bad[:10]))
    with torch.no_grad():
        for n, t in table.items():
            if t.end == t.start:
                continue
            dst = targets[n].detach()
            stored = np.frombuffer(data[t.start : t.end], dtype=np.uint8)  # a view of the blob, not a copy
            if dst.device.type == "cpu" and dst.is_contiguous():
                # one memcpy from the blob into the tensor's memory: no intermediate tensor, and not torch's
                # copy_, whose intra-op thread pool turns a 1 ms copy into tens of ms on a busy machine
                dst.reshape(-1).view(torch.uint8).numpy()[:] = stored
            else:
                dst.copy_(torch.from_numpy(stored.copy()).view(t.dtype).reshape(t.shape))


def load_safetensors_into(
    tensors: Mapping[str, torch.Tensor], source: bytes | bytearray | memoryview
) -> dict:
    """Copy a safetensors blob into existing `tensors` in place, bit-exact, with no intermediate tensors.
    Every stored name must be one of `tensors` with its shape and dtype, checked before any tensor is touched
    (a blob that does not fit raises and leaves them all as they were). Returns the blob's metadata."""
    data = memoryview(source).cast("B")
    meta, table = safetensors_layout(data)
    _copy_stored(tensors, table, data, "safetensors tensors")
    return meta


def load_trainable(policy: MolmoAct2Policy, source: str | Path | bytes | bytearray | memoryview) -> dict:
    """Copy a trainable subset (file path or bytes) into `policy` in place, bit-exact. Checks format,
    architecture hash, names, shapes and dtypes before touching any weight."""
    if not isinstance(source, bytes | bytearray | memoryview):
        source = Path(source).read_bytes()
    data = memoryview(source).cast("B")
    meta, table = safetensors_layout(data)
    if meta.get("format") != TRAINABLE_FORMAT:
        raise ValueError(f"not a trainable-weights blob (format {meta.get('format')!r})")
    if meta.get("architecture") != architecture_hash(policy):
        raise ValueError(
            "trainable weights were made for a different architecture (config or LoRA shape differs)"
        )
    _copy_stored(dict(policy.named_parameters()), table, data, "trainable weights")
    return {
        "mode": meta.get("mode"),
        "tensors": len(table),
        "parameters": sum(math.prod(t.shape) for t in table.values()),
    }


def load_trainable_bytes(policy: MolmoAct2Policy, data: bytes | bytearray | memoryview) -> dict:
    """`load_trainable` for bytes received over the wire (a view into a receive buffer is not copied)."""
    return load_trainable(policy, data)
