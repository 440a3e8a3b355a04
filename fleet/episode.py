"""The episode schema and its binary codec: the one definition every part of the fleet uses.

An episode is what one robot did for one task: per-step camera images, joint state, action, intervention flag
and timestamp (plus optional metric depth of the main camera), and at the end its outcome.

Wire format (``SCHEMA_VERSION`` 1), chosen so the replay store never re-encodes what an actor sent:

    msgpack {"v": 1, "meta": {...}, "low": {name: {"dtype", "shape", "data"}}, "chunks": [bytes, ...]}

- ``low`` holds the low-dimensional arrays of the whole episode (state, action, intervention, timestamp), raw
  little-endian bytes: small (300 steps x 14 dims is 17 KB) and read whole by every training sample.
- each chunk is its own msgpack blob of ``chunk_steps`` consecutive frames, every frame of every camera
  compressed on its own (zstd of the raw uint8 array, or JPEG): the store writes each chunk to one Redis key,
  and a sampler decodes only the frames it needs.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Literal

import msgpack
import numpy as np
import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.chunk_layout import FrameLayout, walk_chunk, walk_top

SCHEMA_VERSION = 1
IMAGE_ENCODINGS = ("zstd", "jpeg")
MAX_STEPS = 100_000  # an hour at 30 Hz is 108k: longer recordings are split by the recorder
MAX_IMAGE_SIDE = 4096
MAX_DIM = 64


class EpisodeError(ValueError):
    """A malformed episode: the message says which field is wrong and how."""


class EmbodimentSchema(BaseModel):
    """What the data plane needs to know about an embodiment to validate its episodes."""

    model_config = ConfigDict(frozen=True)

    name: str
    state_dim: int  # joint-state vector length (joints + grippers)
    action_dim: int  # action vector length (absolute joint targets + grippers)
    cameras: tuple[str, ...]  # camera names, main camera first


# names become parts of stats keys joined by "|" (fleet/replay_scripts.py): no "|" and no control characters
_NAME = r"^[^|\x00-\x1f\x7f]+$"


class EpisodeMeta(BaseModel):
    """Everything about an episode except its per-step arrays."""

    # NaN/inf would be stored as JSON null and fail every later read of the episode: refused at the edge
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    episode_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    robot_id: str = Field(min_length=1, max_length=128, pattern=_NAME)
    embodiment: str = Field(min_length=1, max_length=64, pattern=_NAME)
    task: str = Field(min_length=1, max_length=128, pattern=_NAME)  # task name, e.g. "reach"
    instruction: str = Field(max_length=2048)  # the language instruction the policy saw
    policy_version: int = Field(ge=0)  # weights version that acted (0: scripted / pretrained seed)
    fps: float = Field(gt=0, le=1000)  # control rate the steps were recorded at, Hz
    success: bool
    reward: float = 0.0
    interventions: int = Field(default=0, ge=0)  # steps where the supervisor was in control
    duration_s: float = Field(ge=0)
    start_time: float  # unix seconds
    end_time: float  # unix seconds
    seed: int | None = None  # scene seed, for reproducible evaluation
    source: Literal["fleet", "eval", "demo", "rehearsal"] = "fleet"


@dataclass
class Episode:
    """One recorded episode. Arrays are indexed by step (T steps)."""

    meta: EpisodeMeta
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8, main camera first
    state: np.ndarray  # (T, S) float32, joint positions in radians / gripper in [0, 1]
    action: np.ndarray  # (T, A) float32, absolute joint targets
    intervention: np.ndarray  # (T,) bool, True where the supervisor acted
    timestamp: np.ndarray  # (T,) float64, seconds since the episode started
    depth: np.ndarray | None = None  # (T, H, W) float32 metres, main camera

    @property
    def num_steps(self) -> int:
        return int(self.state.shape[0])


@dataclass
class StepWindow:
    """Consecutive steps of one stored episode, as the replay store's sampler returns them."""

    meta: EpisodeMeta
    start: int  # index of the first step in the episode
    state: np.ndarray  # (W, S) float32
    action: np.ndarray  # (W, A) float32
    intervention: np.ndarray  # (W,) bool
    timestamp: np.ndarray  # (W,) float64
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (I, H, W, 3), I <= W leading steps
    depth: np.ndarray | None = None  # (I, H, W) float32
    pool: str = ""  # which mixture pool it was drawn from


# ----------------------------------------------------------------------------------------------- arrays


def _pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


_LOW_DTYPES = {"state": "<f4", "action": "<f4", "intervention": "|b1", "timestamp": "<f8"}


def _is_int(x: object, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi  # not bool (an int subclass), not float


def _short(x: object) -> str:
    """repr for error messages: a hostile value must not make a megabyte dead-letter reason."""
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def _unpack_array(name: str, d: object) -> np.ndarray:
    if not isinstance(d, dict) or not {"dtype", "shape", "data"} <= d.keys():
        raise EpisodeError(f"{name}: expected an array record with dtype, shape and data")
    dtype, shape, data = d["dtype"], d["shape"], d["data"]
    if dtype != _LOW_DTYPES[name]:
        raise EpisodeError(f"{name}: dtype {_short(dtype)}, expected {_LOW_DTYPES[name]!r}")
    # low-dim arrays are (T,) or (T, D): more dims are malformed (and numpy refuses more than 64)
    if not isinstance(shape, list) or len(shape) > 2 or not all(_is_int(s, 0, MAX_STEPS) for s in shape):
        raise EpisodeError(f"{name}: bad shape {_short(shape)}")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise EpisodeError(f"{name}: {len(data) if isinstance(data, bytes) else type(data).__name__} bytes "
                           f"do not fill shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ----------------------------------------------------------------------------------------------- images

_ZSTD_LEVEL = 1  # level 1: ~400 MB/s per core, and sim frames compress 3-6x at it already


def encode_frame(frame: np.ndarray, encoding: str) -> bytes:
    """One (H, W, C) uint8 or (H, W) float32 frame to bytes."""
    if encoding == "jpeg":
        import cv2  # lazy: only JPEG users pay for OpenCV

        ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise EpisodeError("JPEG encoding failed")
        return buf.tobytes()
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(np.ascontiguousarray(frame).tobytes())


def decode_frame(data: bytes, encoding: str, shape: tuple[int, ...], dtype: str = "|u1") -> np.ndarray:
    """Bytes -> one frame of ``shape``, else EpisodeError. Memory stays within the frame's size: a small input
    may declare a huge image (JPEG header, zstd content size), so that is checked before decoding."""
    if encoding == "jpeg":
        out = np.empty(tuple(shape), np.uint8)
        decode_frame_into(data, encoding, out)
        return out
    return np.frombuffer(_inflate(data, tuple(shape), dtype), dtype=dtype).reshape(shape)


def decode_frame_into(data: bytes, encoding: str, out: np.ndarray) -> None:
    """Decode one frame into ``out``, a slot of the caller's array ((H, W, 3) uint8 image, (H, W) float32
    depth): a sampler fills its window arrays without allocating and stacking a frame at a time. JPEG decodes
    straight to RGB into ``out`` (libjpeg-turbo, GIL released); the header is checked first, and the decode can
    write nowhere but ``out``, so a lying header cannot allocate anything."""
    if encoding == "jpeg":
        import simplejpeg  # lazy: only JPEG users pay for it

        try:
            declared = tuple(simplejpeg.decode_jpeg_header(data)[:2])
        except ValueError:
            declared = None
        if declared != out.shape[:2] or out.shape[2:] != (3,) or out.dtype != np.uint8:
            raise EpisodeError(f"JPEG frame does not declare a {list(out.shape)} image")
        try:
            # strict=False: a damaged tail decodes to what is there, as a camera pipeline would show it
            simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False, buffer=out)
        except ValueError as e:
            raise EpisodeError(f"JPEG frame does not decode to {list(out.shape)} ({e})") from None
        return
    out[...] = np.frombuffer(_inflate(data, out.shape, out.dtype.str), out.dtype).reshape(out.shape)


def _inflate(data: bytes, shape: tuple[int, ...], dtype: str) -> bytes:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    try:
        # max_output_size only bounds frames that do not declare their size: a declared one must match
        declared = zstandard.frame_content_size(data)
        if declared not in (-1, size):
            raise EpisodeError(f"zstd frame declares {declared} bytes, a {list(shape)} {dtype} frame is {size}")
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise EpisodeError(f"frame: not a zstd frame of {size} bytes ({e})") from None
    if len(raw) != size:
        raise EpisodeError(f"frame: {len(raw)} bytes, a {list(shape)} {dtype} frame is {size}")
    return raw


# ----------------------------------------------------------------------------------------------- codec


def encode_episode(ep: Episode, chunk_steps: int = 32, image_encoding: str = "zstd") -> bytes:
    """Episode -> wire bytes. Validate first with ``validate_episode`` where the embodiment is known."""
    if image_encoding not in IMAGE_ENCODINGS:
        raise EpisodeError(f"image_encoding {image_encoding!r} not in {IMAGE_ENCODINGS}")
    n = ep.num_steps
    low = {
        "state": _pack_array(ep.state.astype("<f4", copy=False)),
        "action": _pack_array(ep.action.astype("<f4", copy=False)),
        "intervention": _pack_array(ep.intervention.astype(bool, copy=False)),
        "timestamp": _pack_array(ep.timestamp.astype("<f8", copy=False)),
    }
    cams = list(ep.images)
    img_shapes = {c: list(ep.images[c].shape[1:]) for c in cams}
    chunks = []
    for start in range(0, n, chunk_steps):
        stop = min(n, start + chunk_steps)
        chunk = {
            "start": start,
            "stop": stop,
            "enc": image_encoding,
            "cams": {c: [encode_frame(f, image_encoding) for f in ep.images[c][start:stop]] for c in cams},
            "shapes": img_shapes,
        }
        if ep.depth is not None:
            chunk["depth"] = [encode_frame(d.astype("<f4"), "zstd") for d in ep.depth[start:stop]]
            chunk["depth_shape"] = list(ep.depth.shape[1:])
        chunks.append(msgpack.packb(chunk, use_bin_type=True))
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "meta": ep.meta.model_dump(mode="json"), "low": low, "chunks": chunks},
        use_bin_type=True,
    )


@dataclass
class EncodedEpisode:
    """A parsed wire episode: meta and low-dim arrays decoded and checked, image chunks still as bytes."""

    meta: EpisodeMeta
    low: dict[str, np.ndarray]
    low_blob: bytes  # msgpack of ``low`` as sent, stored verbatim
    chunks: list[bytes]  # memoryviews into the wire bytes when parsed with views=True
    chunk_bounds: list[tuple[int, int]]
    cameras: dict[str, tuple[int, ...]]  # camera -> frame shape
    has_depth: bool
    layout: FrameLayout | None = None  # where each frame sits in its chunk; None if chunks are laid out unevenly

    @property
    def num_steps(self) -> int:
        return int(self.low["state"].shape[0])

    @property
    def nbytes(self) -> int:
        return len(self.low_blob) + sum(len(c) for c in self.chunks)


def _loads(blob: bytes, what: str) -> object:
    try:
        return msgpack.unpackb(blob, raw=False, strict_map_key=True, max_bin_len=1 << 30)
    except Exception as e:  # msgpack raises several unrelated types for truncated or garbage input
        raise EpisodeError(f"{what}: not valid msgpack ({type(e).__name__}: {e})") from None


def parse_meta(raw: object) -> EpisodeMeta:
    # on the wire the id must be sent, not defaulted: a fresh one per parse would store every retry again
    if isinstance(raw, dict) and "episode_id" not in raw:
        raise EpisodeError("meta.episode_id: missing (appends are idempotent by it)")
    try:
        return EpisodeMeta.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EpisodeError(f"meta.{loc}: {first['msg']} ({e.error_count()} error(s))") from None


def _frames_ok(frames: object, n: int) -> bool:
    # bytes as unpacked, or (start, stop) spans where fleet/chunk_layout.py walked the chunk
    return isinstance(frames, list) and len(frames) == n and all(isinstance(f, bytes | tuple) for f in frames)


def _check_chunk(head: object, what: str) -> dict:
    """A chunk head whose fields all have the right types and bounds: decoding it can fail on frame bytes only."""
    if not isinstance(head, dict) or not {"start", "stop", "enc", "cams", "shapes"} <= head.keys():
        raise EpisodeError(f"{what}: missing start/stop/enc/cams/shapes")
    if head["enc"] not in IMAGE_ENCODINGS:
        raise EpisodeError(f"{what}: unknown image encoding {_short(head['enc'])}")
    start, stop = head["start"], head["stop"]
    if not _is_int(start, 0, MAX_STEPS) or not _is_int(stop, start, MAX_STEPS):
        raise EpisodeError(f"{what}: steps {_short(start)}..{_short(stop)} are not a step range")
    if not isinstance(head["cams"], dict) or not isinstance(head["shapes"], dict):
        raise EpisodeError(f"{what}: cams and shapes must be maps")
    for cam, frames in head["cams"].items():
        if not _frames_ok(frames, stop - start):
            raise EpisodeError(f"{what}.{_short(cam)}: {len(frames) if isinstance(frames, list) else '?'} "
                               f"frames (bytes) for steps {start}..{stop}")
        shape = head["shapes"].get(cam)
        if not (isinstance(shape, list) and len(shape) == 3 and _is_int(shape[2], 3, 3)
                and all(_is_int(s, 1, MAX_IMAGE_SIDE) for s in shape[:2])):
            raise EpisodeError(f"{what}.{_short(cam)}: image shape {_short(shape)}, expected [H, W, 3]")
    if "depth" in head:
        shape = head.get("depth_shape")
        if not _frames_ok(head["depth"], stop - start):
            raise EpisodeError(f"{what}: depth must be {stop - start} frames (bytes)")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(s, 1, MAX_IMAGE_SIDE) for s in shape)):
            raise EpisodeError(f"{what}: depth shape {_short(shape)}, expected [H, W]")
    return head


def parse_encoded(blob: bytes, *, views: bool = False) -> EncodedEpisode:
    """Parse wire bytes without decoding images; raises EpisodeError with the precise reason.

    Frames are located, not copied (fleet/chunk_layout.py). ``views=True`` leaves the chunks as memoryviews into
    ``blob`` (valid while it is unchanged) instead of copying them out: the store sends them on as they are.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise EpisodeError(f"episode must be bytes, got {type(blob).__name__}")
    try:
        view = memoryview(blob).cast("B")
    except TypeError:  # a non-contiguous or multi-dimensional view
        view = memoryview(bytes(blob))
    top = walk_top(view)
    if top is None:  # not laid out as encode_episode writes: the plain parse says what is wrong
        top = _loads(bytes(blob), "episode")
    if not isinstance(top, dict):
        raise EpisodeError("episode: top level must be a map")
    if top.get("v") != SCHEMA_VERSION:
        raise EpisodeError(f"episode: unknown schema version {top.get('v')!r} (this store reads {SCHEMA_VERSION})")
    for key in ("meta", "low", "chunks"):
        if key not in top:
            raise EpisodeError(f"episode: missing field {key!r}")
    meta = parse_meta(top["meta"])
    if not isinstance(top["low"], dict):
        raise EpisodeError("low: must be a map")
    missing = set(_LOW_DTYPES) - top["low"].keys()
    if missing:
        raise EpisodeError(f"low: missing {sorted(missing)}")
    low = {k: _unpack_array(k, top["low"][k]) for k in _LOW_DTYPES}
    chunks = top["chunks"]
    if not isinstance(chunks, list) or not all(isinstance(c, bytes | memoryview) for c in chunks):
        raise EpisodeError("chunks: must be a list of bytes")
    bounds, cameras, has_depth, depth_shape = [], {}, False, None
    walks = [walk_chunk(c if isinstance(c, memoryview) else memoryview(c)) for c in chunks]
    for i, c in enumerate(chunks):
        walk = walks[i]
        head = _check_chunk(walk.head if walk is not None else _loads(c, f"chunks[{i}]"), f"chunks[{i}]")
        # every chunk holds the same cameras and depth, in the same shapes: decoders stack frames across chunks
        if i and (head["cams"].keys() != cameras.keys() or ("depth" in head) != has_depth
                  or head.get("depth_shape") != depth_shape):
            raise EpisodeError(f"chunks[{i}]: cameras or depth differ from chunk 0's")
        for cam in head["cams"]:
            shape = tuple(head["shapes"][cam])
            if cameras.setdefault(cam, shape) != shape:
                raise EpisodeError(f"{_short(cam)}: image shape changes from {list(cameras[cam])} to {list(shape)}")
        has_depth, depth_shape = "depth" in head, head.get("depth_shape")
        bounds.append((head["start"], head["stop"]))
    layout = None if None in walks else FrameLayout.from_walks(walks, cameras, MAX_IMAGE_SIDE)  # type: ignore[arg-type]
    if not views:
        chunks = [bytes(c) for c in chunks]
    return EncodedEpisode(meta, low, msgpack.packb(top["low"], use_bin_type=True), chunks, bounds, cameras, has_depth,
                          layout)


def validate_encoded(enc: EncodedEpisode, schemas: dict[str, EmbodimentSchema] | None = None) -> None:
    """Check what parse_encoded cannot: consistency between arrays, embodiment dims, finite values."""
    m, low = enc.meta, enc.low
    n = low["state"].shape[0] if low["state"].ndim == 2 else -1
    if n <= 0:
        raise EpisodeError(f"state: shape {list(low['state'].shape)}, expected (T>0, state_dim)")
    if n > MAX_STEPS:
        raise EpisodeError(f"episode has {n} steps, more than {MAX_STEPS}")
    if low["action"].ndim != 2 or low["action"].shape[0] != n:
        raise EpisodeError(f"action: shape {list(low['action'].shape)}, expected ({n}, action_dim)")
    for k in ("intervention", "timestamp"):
        if low[k].shape != (n,):
            raise EpisodeError(f"{k}: shape {list(low[k].shape)}, expected ({n},)")
    for k in ("state", "action", "timestamp"):
        if not np.isfinite(low[k]).all():
            raise EpisodeError(f"{k}: contains NaN or inf")
    if np.any(np.diff(low["timestamp"]) < 0):
        raise EpisodeError("timestamp: not monotonically increasing")
    if m.end_time < m.start_time:
        raise EpisodeError("meta: end_time before start_time")
    if int(low["intervention"].sum()) != m.interventions:
        raise EpisodeError(f"meta.interventions is {m.interventions} but {int(low['intervention'].sum())} "
                           "steps are flagged")
    expected = 0
    for start, stop in enc.chunk_bounds:
        if start != expected or stop <= start:
            raise EpisodeError(f"chunks: steps {start}..{stop} do not follow {expected}")
        expected = stop
    if expected != n:
        raise EpisodeError(f"chunks cover {expected} steps, episode has {n}")
    if schemas is not None:
        s = schemas.get(m.embodiment)
        if s is None:
            raise EpisodeError(f"unknown embodiment {m.embodiment!r} (known: {sorted(schemas)})")
        if low["state"].shape[1] != s.state_dim:
            raise EpisodeError(f"state: {low['state'].shape[1]} dims, {s.name} has {s.state_dim}")
        if low["action"].shape[1] != s.action_dim:
            raise EpisodeError(f"action: {low['action'].shape[1]} dims, {s.name} has {s.action_dim}")
        if set(enc.cameras) != set(s.cameras):
            raise EpisodeError(f"cameras {sorted(enc.cameras)} do not match {s.name}'s {sorted(s.cameras)}")
    elif low["state"].shape[1] > MAX_DIM or low["action"].shape[1] > MAX_DIM:
        raise EpisodeError(f"state/action dims exceed {MAX_DIM}")


def validate_episode(ep: Episode, schemas: dict[str, EmbodimentSchema] | None = None) -> None:
    """Validate an in-memory episode (the recorder calls this before spooling)."""
    validate_encoded(parse_encoded(encode_episode(ep, chunk_steps=max(1, ep.num_steps))), schemas)


def decode_low(low_blob: bytes) -> dict[str, np.ndarray]:
    low = _loads(low_blob, "low")
    if not isinstance(low, dict) or not set(_LOW_DTYPES) <= low.keys():
        raise EpisodeError(f"low: must be a map with {sorted(_LOW_DTYPES)}")
    return {k: _unpack_array(k, low[k]) for k in _LOW_DTYPES}


def decode_chunk_frames(
    chunk_blob: bytes, steps: range | None = None
) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray] | None, int]:
    """Decode the frames of one chunk for absolute step indices ``steps`` (all if None).

    Returns (camera -> frames, depth frames or None, first step of the chunk).
    """
    head = _check_chunk(_loads(chunk_blob, "chunk"), "chunk")
    start, stop = head["start"], head["stop"]
    idx = range(start, stop) if steps is None else range(max(start, steps.start), min(stop, steps.stop))
    enc = head["enc"]
    images = {
        cam: [decode_frame(frames[i - start], enc, tuple(head["shapes"][cam])) for i in idx]
        for cam, frames in head["cams"].items()
    }
    depth = None
    if "depth" in head:
        shape = tuple(head["depth_shape"])
        depth = [decode_frame(head["depth"][i - start], "zstd", shape, "<f4") for i in idx]
    return images, depth, start


def decode_episode(blob: bytes) -> Episode:
    """Wire bytes -> Episode (every frame decoded)."""
    enc = parse_encoded(blob)
    images: dict[str, list[np.ndarray]] = {c: [] for c in enc.cameras}
    depth: list[np.ndarray] = []
    for c in enc.chunks:
        imgs, d, _ = decode_chunk_frames(c)
        for cam, frames in imgs.items():
            images[cam].extend(frames)
        if d is not None:
            depth.extend(d)
    return Episode(
        meta=enc.meta,
        images={c: np.stack(f) if f else np.zeros((0, *enc.cameras[c]), np.uint8) for c, f in images.items()},
        state=enc.low["state"].copy(),
        action=enc.low["action"].copy(),
        intervention=enc.low["intervention"].copy(),
        timestamp=enc.low["timestamp"].copy(),
        depth=np.stack(depth) if depth else None,
    )
