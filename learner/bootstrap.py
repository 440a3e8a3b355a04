"""The policy a learner starts from: its own base checkpoint after a restart, a given checkpoint, or a fresh
tiny MolmoAct2 whose normalisation statistics and OpenFAST action tokenizer are fitted on the store's data.

Order (``open_policy``): ``<checkpoint_dir>/base`` (the learner ran before: same architecture, statistics and
tokenizers, or resuming would be meaningless), then ``LearnerConfig.init_checkpoint``, then fresh.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np

from fleet.config import LearnerConfig
from fleet.episode import MAX_STEPS
from fleet.replay import EpisodeRef, ReplayStore
from policy.checkpoint import CONFIG_FILE, load_checkpoint
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.openfast import OpenFAST

log = logging.getLogger("molmofleet.learner")


def _low_dim(store: ReplayStore, ids: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(embodiment, state (T, S), action (T, A)) of whole episodes, no frames decoded."""
    out = []
    for i in range(0, len(ids), 64):
        refs = [EpisodeRef(e, 0) for e in ids[i : i + 64]]
        out += [
            (w.meta.embodiment, w.state, w.action) for w in store.read_windows(refs, MAX_STEPS, image_steps=0)
        ]
    return out


def chunks_of(state: np.ndarray, action: np.ndarray, horizon: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(first states (N, S), action chunks (N, horizon, A)) of one episode, every ``stride`` steps; chunks past
    the end repeat the last action (as the processor pads them)."""
    padded = np.concatenate([action, np.repeat(action[-1:], horizon - 1, axis=0)])
    starts = np.arange(0, len(action), stride)
    return state[starts], np.stack([padded[s : s + horizon] for s in starts])


def fit_norm_stats(
    store: ReplayStore,
    horizons: dict[str, int],
    norm_tags: dict[str, str] | None = None,
    max_episodes: int = 200,
    seed: int = 0,
    delta_masks: dict[str, list[bool]] | None = None,
) -> NormStats:
    """Per-tag statistics from up to ``max_episodes`` stored episodes per embodiment (never eval episodes).

    ``horizons``: norm tag -> action chunk length; embodiments whose tag has no horizon are skipped.
    ``delta_masks``: norm tag -> per action dim, predict it relative to the chunk's first state (see
    policy/normalization.py); those tags get statistics of in-chunk deltas.
    """
    tags = norm_tags or {}
    rng = random.Random(seed)
    by_tag: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    embodiments = sorted({m.embodiment for m in store.metas(store.episode_ids()) if m and m.source != "eval"})
    for emb in embodiments:
        tag = tags.get(emb, emb)
        if tag not in horizons:
            log.warning("no action horizon for embodiment %s (tag %s): left out of the statistics", emb, tag)
            continue
        ids = store.episode_ids(f"emb:{emb}")
        ids = [i for i, m in zip(ids, store.metas(ids), strict=True) if m and m.source != "eval"]
        rng.shuffle(ids)
        for _, state, action in _low_dim(store, ids[:max_episodes]):
            states, actions = by_tag.setdefault(tag, ([], []))
            states.append(state)
            actions.append(action)
    if not by_tag:
        raise LookupError("the store holds no episodes to compute normalisation statistics from")
    stats = NormStats()
    for tag, (states, actions) in sorted(by_tag.items()):
        mask = (delta_masks or {}).get(tag)
        if mask is None:
            stats.add(tag, np.concatenate(states), np.concatenate(actions), action_horizon=horizons[tag])
            continue
        pairs = [chunks_of(s, a, horizons[tag]) for s, a in zip(states, actions, strict=True)]
        stats.add(tag, np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]),
                  action_horizon=horizons[tag], delta_mask=mask)
    return stats


def fit_action_tokenizer(
    store: ReplayStore,
    stats: NormStats,
    config: MolmoAct2Config,
    norm_tags: dict[str, str] | None = None,
    max_episodes: int = 100,
) -> OpenFAST:
    """OpenFAST BPE fitted on normalised action chunks of stored episodes (every start, stride horizon / 2)."""
    tags = norm_tags or {}
    chunks = []
    for emb, state, action in _low_dim(store, store.episode_ids(limit=max_episodes, newest_first=True)):
        tag = tags.get(emb, emb)
        if tag not in stats.metadata_by_tag:
            continue
        h = stats[tag].action_horizon
        first, chunk = chunks_of(state, action, h, stride=max(1, h // 2))
        chunks += list(stats.normalize_action(tag, chunk, first))
    if not chunks:
        return OpenFAST(scale=config.openfast_scale, vocab_size=config.num_action_tokens)
    return OpenFAST.fit(chunks, scale=config.openfast_scale, vocab_size=config.num_action_tokens)


def open_policy(
    store: ReplayStore,
    cfg: LearnerConfig,
    checkpoint_dir: str | Path | None = None,
    horizons: dict[str, int] | None = None,
    norm_tags: dict[str, str] | None = None,
    config: MolmoAct2Config | None = None,
    delta_masks: dict[str, list[bool]] | None = None,
) -> MolmoAct2Policy:
    """The learner's starting policy (see the module docstring), in ``cfg.finetune`` mode."""
    base = Path(checkpoint_dir or cfg.checkpoint_dir).expanduser() / "base"
    if (base / CONFIG_FILE).exists():
        log.info("policy: the learner's own base checkpoint %s", base)
        return load_checkpoint(base)
    if cfg.init_checkpoint:
        log.info("policy: %s", cfg.init_checkpoint)
        return load_checkpoint(Path(cfg.init_checkpoint).expanduser())
    if not horizons:
        raise ValueError("a fresh policy needs the action horizon of every embodiment (horizons=...)")
    config = config or MolmoAct2Config.tiny(finetune={"mode": cfg.finetune, "lora_rank": 8, "lora_alpha": 16})
    stats = fit_norm_stats(store, horizons, norm_tags, seed=cfg.seed,
                           delta_masks=delta_masks if cfg.delta_actions else None)
    policy = MolmoAct2Policy.from_config(config, stats, seed=cfg.seed)
    policy.use_action_tokenizer(fit_action_tokenizer(store, stats, config, norm_tags))
    log.info("policy: fresh %s for %s", "tiny", stats.tags)
    return policy
