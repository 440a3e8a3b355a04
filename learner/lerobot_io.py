"""LeRobot v3 datasets in and out of the replay store, through lerobot's own ``LeRobotDataset``.

Import (``import_lerobot_dataset``): a local LeRobot v3 dataset (the format MolmoAct2's released training data
uses) becomes episodes of one embodiment in the store, ``source="rehearsal"`` by default, so the mixture
sampler's rehearsal pool (``src:rehearsal``) draws from it. Frames are read with ``LeRobotDataset.__getitem__``
(image features as stored; video features decoded with PyAV, see ``learner/lerobot_compat.py``); camera keys
``observation.images.<cam>`` map to our camera names (``cameras=``), ``observation.state`` and ``action`` to
state and action. Episode ids are derived from (repo id, episode index), so importing twice stores nothing
new: the store is idempotent by id.

Export (``export_lerobot_dataset``, ``export_fleet``; CLI ``fleet export``): stored episodes become a LeRobot
v3 dataset per embodiment (one feature schema per dataset), written by ``LeRobotDataset.create`` /
``add_frame`` / ``save_episode``. Features: ``observation.state``, ``action``, ``observation.images.<cam>``
(``image`` by default, lossless PNG; ``video=True`` encodes AV1/H.264 with PyAV), ``intervention``,
``next.reward``, ``next.success``, ``next.done``. What LeRobot's schema has no place for (our episode ids,
robot, policy version, outcome, times) goes to ``meta/molmofleet_episodes.jsonl``, one line per episode index;
an import of our own export reads it back, so a fleet -> LeRobot -> fleet round trip keeps every field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleet.episode import Episode, EpisodeMeta
from fleet.replay import ReplayStore
from learner.lerobot_compat import load_lerobot

log = logging.getLogger("molmofleet.learner")

IMAGE_PREFIX = "observation.images."
SIDECAR = "meta/molmofleet_episodes.jsonl"


@dataclass
class ImportReport:
    episodes: int = 0  # episodes read from the dataset
    stored: int = 0
    duplicates: int = 0  # already in the store (same id)
    rejected: dict[str, str] = field(default_factory=dict)  # episode id -> the store's reason
    frames: int = 0


@dataclass
class ExportReport:
    root: Path
    embodiment: str
    episodes: int
    frames: int
    episode_ids: list[str]  # in LeRobot episode_index order


def _to_uint8_hwc(frame: Any) -> np.ndarray:
    """lerobot's (C, H, W) float [0, 1] -> (H, W, 3) uint8 (exact for PNG-stored uint8 images)."""
    a = frame.numpy() if hasattr(frame, "numpy") else np.asarray(frame)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _resize(img: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or img.shape[:2] == (size, size):
        return img
    import cv2

    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _task_name(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return (slug or "task")[:128]


def _read_sidecar(root: Path) -> dict[int, EpisodeMeta]:
    path = root / SIDECAR
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[int(row["episode_index"])] = EpisodeMeta.model_validate(row["meta"])
    return out


def import_lerobot_dataset(
    store: ReplayStore,
    root: str | Path,
    *,
    embodiment: str | None = None,
    repo_id: str | None = None,
    cameras: dict[str, str] | None = None,
    task: str | None = None,
    image_size: int | None = None,
    episodes: list[int] | None = None,
    source: str | None = None,
) -> ImportReport:
    """Store the episodes of the LeRobot v3 dataset at ``root`` (see the module docstring).

    embodiment: our embodiment name (default: the dataset's robot_type); cameras: dataset camera name (the part
    after ``observation.images.``) -> ours, in our order, main camera first (default: the dataset's cameras, in
    the store schema's order when it has one); task: our task name (default: from the instruction); image_size:
    square side to resize frames to (default: as stored); source: the episodes' source (default: "rehearsal",
    or for a dataset we exported, the source each episode had).
    """
    lr = load_lerobot()
    root = Path(root).expanduser()
    info = json.loads((root / "meta" / "info.json").read_text())
    ds = lr.LeRobotDataset(
        repo_id or f"local/{root.name}", root=root, episodes=episodes, video_backend="pyav"
    )
    emb = embodiment or info.get("robot_type")
    if not emb:
        raise ValueError(f"{root}: the dataset has no robot_type; pass embodiment=")
    ds_cams = [k.removeprefix(IMAGE_PREFIX) for k in ds.meta.camera_keys]
    mapping = dict(cameras) if cameras else {c: c for c in ds_cams}
    missing = [c for c in mapping if c not in ds_cams]
    if missing:
        raise ValueError(f"{root}: cameras {missing} not in the dataset (it has {ds_cams})")
    schema = (store.schemas or {}).get(emb)
    if schema is not None and not cameras:
        order = {c: i for i, c in enumerate(schema.cameras)}
        mapping = dict(sorted(mapping.items(), key=lambda kv: order.get(kv[1], len(order))))
    sidecar = _read_sidecar(root)
    rid = repo_id or ds.repo_id
    report = ImportReport()
    by_episode: dict[int, list[int]] = {}
    for i, ep in enumerate(ds.hf_dataset["episode_index"]):
        by_episode.setdefault(int(ep), []).append(i)
    for ep_index, rows in sorted(by_episode.items()):
        frames = [ds[i] for i in rows]
        episode = _episode_from_frames(
            frames,
            ep_index,
            rid,
            emb,
            mapping,
            task,
            image_size,
            source,
            float(ds.fps),
            sidecar.get(ep_index),
        )
        res = store.append(episode)
        report.episodes += 1
        report.frames += len(frames)
        if res.status == "stored":
            report.stored += 1
        elif res.status == "duplicate":
            report.duplicates += 1
        else:
            report.rejected[episode.meta.episode_id] = res.reason
    if report.rejected:
        log.warning(
            "import %s: %d episodes rejected, e.g. %s",
            root,
            len(report.rejected),
            next(iter(report.rejected.values())),
        )
    return report


def _episode_from_frames(
    frames: list[dict],
    ep_index: int,
    repo_id: str,
    embodiment: str,
    cameras: dict[str, str],
    task: str | None,
    image_size: int | None,
    source: str | None,
    fps: float,
    original: EpisodeMeta | None,
) -> Episode:
    n = len(frames)
    state = np.stack([np.asarray(f["observation.state"], dtype=np.float32).reshape(-1) for f in frames])
    action = np.stack([np.asarray(f["action"], dtype=np.float32).reshape(-1) for f in frames])
    flags = np.array(
        [bool(np.asarray(f["intervention"]).reshape(-1)[0]) if "intervention" in f else False for f in frames]
    )
    timestamp = np.array([float(f["timestamp"]) for f in frames], dtype=np.float64)
    timestamp -= timestamp[0]
    images = {
        ours: np.stack([_resize(_to_uint8_hwc(f[IMAGE_PREFIX + theirs]), image_size) for f in frames])
        for theirs, ours in cameras.items()
    }
    instruction = str(frames[0].get("task", ""))
    if original is not None:  # our own export: every field comes back as it was
        meta = original.model_copy(
            update={"interventions": int(flags.sum()), "source": source or original.source}
        )
    else:
        last = frames[-1]
        success = bool(np.asarray(last["next.success"]).reshape(-1)[0]) if "next.success" in last else True
        reward = float(np.asarray(last["next.reward"]).reshape(-1)[0]) if "next.reward" in last else 0.0
        now = time.time()
        meta = EpisodeMeta(
            episode_id=hashlib.sha1(f"{repo_id}#{ep_index}".encode()).hexdigest()[:32],
            robot_id=f"lerobot:{repo_id}"[:128],
            embodiment=embodiment,
            task=task or _task_name(instruction),
            instruction=instruction[:2048],
            policy_version=0,
            fps=fps,
            success=success,
            reward=reward,
            interventions=int(flags.sum()),
            duration_s=n / fps,
            start_time=now - n / fps,
            end_time=now,
            seed=ep_index,
            source=source or "rehearsal",
        )
    return Episode(
        meta=meta, images=images, state=state, action=action, intervention=flags, timestamp=timestamp
    )


# ---------------------------------------------------------------------------------------------- export


def _features(ep: Episode, video: bool) -> dict[str, dict]:
    feats: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": (ep.state.shape[1],), "names": None},
        "action": {"dtype": "float32", "shape": (ep.action.shape[1],), "names": None},
        "intervention": {"dtype": "bool", "shape": (1,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    for cam, frames in ep.images.items():
        feats[IMAGE_PREFIX + cam] = {
            "dtype": "video" if video else "image",
            "shape": tuple(frames.shape[1:]),
            "names": ["height", "width", "channels"],
        }
    return feats


def export_lerobot_dataset(
    store: ReplayStore,
    out: str | Path,
    episode_ids: Iterable[str],
    *,
    repo_id: str | None = None,
    video: bool = False,
    vcodec: str = "h264",
) -> ExportReport:
    """Write stored episodes (one embodiment, one fps) as a new LeRobot v3 dataset at ``out``."""
    lr = load_lerobot()
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} exists: export into a new directory")
    ids = list(episode_ids)
    if not ids:
        raise ValueError("nothing to export: no episode ids")
    first = store.read_episode(ids[0])
    emb, fps = first.meta.embodiment, first.meta.fps
    if abs(fps - round(fps)) > 1e-6:
        raise ValueError(f"LeRobot datasets need an integer fps; episode {ids[0]} has {fps}")
    ds = lr.LeRobotDataset.create(
        repo_id or f"molmofleet/{emb}",
        fps=round(fps),
        features=_features(first, video),
        root=out,
        robot_type=emb,
        use_videos=video,
        vcodec=vcodec,
    )
    sidecar, frames = [], 0
    try:
        for index, eid in enumerate(ids):
            ep = first if index == 0 else store.read_episode(eid)
            if ep.meta.embodiment != emb or ep.meta.fps != fps:
                raise ValueError(
                    f"episode {eid} is {ep.meta.embodiment} at {ep.meta.fps} Hz; this dataset holds "
                    f"{emb} at {fps} Hz (export one embodiment per dataset)"
                )
            n = ep.num_steps
            for t in range(n):
                last = t == n - 1
                ds.add_frame(
                    {
                        "observation.state": ep.state[t].astype(np.float32),
                        "action": ep.action[t].astype(np.float32),
                        "intervention": np.array([ep.intervention[t]], dtype=bool),
                        "next.reward": np.array([ep.meta.reward if last else 0.0], dtype=np.float32),
                        "next.success": np.array([ep.meta.success and last], dtype=bool),
                        "next.done": np.array([last], dtype=bool),
                        **{IMAGE_PREFIX + cam: frames_[t] for cam, frames_ in ep.images.items()},
                        "task": ep.meta.instruction,
                    }
                )
            ds.save_episode(parallel_encoding=False)  # one process: no pool of encoders on 2 cores
            frames += n
            sidecar.append(json.dumps({"episode_index": index, "meta": ep.meta.model_dump(mode="json")}))
    finally:
        ds.finalize()
    (out / SIDECAR).write_text("\n".join(sidecar) + "\n")
    return ExportReport(out, emb, len(ids), frames, ids)


def export_fleet(
    store: ReplayStore,
    out: str | Path,
    *,
    since: float | None = None,
    until: float | None = None,
    sources: tuple[str, ...] = ("fleet",),
    success_only: bool = False,
    video: bool = False,
    embodiments: Iterable[str] | None = None,
) -> list[ExportReport]:
    """Export stored episodes (by end time, source and outcome) as one LeRobot dataset per embodiment under
    ``out/<embodiment>``."""
    ids = store.episode_ids("all", since=since, until=until)
    wanted = set(embodiments) if embodiments else None
    groups: dict[str, list[str]] = {}
    for i, m in zip(ids, store.metas(ids), strict=True):
        if m is None or m.source not in sources or (success_only and not m.success):
            continue
        if wanted is None or m.embodiment in wanted:
            groups.setdefault(m.embodiment, []).append(i)
    out = Path(out).expanduser()
    return [export_lerobot_dataset(store, out / emb, g, video=video) for emb, g in sorted(groups.items())]
