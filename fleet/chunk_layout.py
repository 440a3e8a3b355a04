"""Where the frames sit inside a wire episode's chunks (format: fleet/episode.py), found by walking msgpack
headers instead of unpacking: the store ingests an episode without copying its image bytes, and a sampler
fetches just the byte ranges of the frames a window needs (Redis GETRANGE) instead of whole chunks.

Walks return None when the bytes are not laid out as ``encode_episode`` writes them; callers then parse the
plain way, which reports precisely what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgpack
import numpy as np

_BIN_HEADER = {0xC4: 2, 0xC5: 3, 0xC6: 5}  # msgpack bin 8 / 16 / 32: type byte + 1, 2 or 4 length bytes


class _NotLaidOut(Exception):
    pass


def _unpacker(buf: memoryview) -> msgpack.Unpacker:
    u = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=0, max_bin_len=1 << 30)
    u.feed(buf)  # one copy into the unpacker's buffer: far cheaper than one bytes object per frame
    return u


def _keys(u: msgpack.Unpacker) -> Iterator[str]:
    """Keys of the next map; the caller reads each value before the next key."""
    for _ in range(u.read_map_header()):
        key = u.unpack()
        if not isinstance(key, str):
            raise _NotLaidOut
        yield key


def _bins(u: msgpack.Unpacker, buf: memoryview) -> list[tuple[int, int]]:
    """[start, stop) in ``buf`` of the payload of each bin in the next array."""
    spans = []
    for _ in range(u.read_array_header()):
        at = u.tell()
        u.skip()
        head = _BIN_HEADER.get(buf[at])
        if head is None:
            raise _NotLaidOut
        spans.append((at + head, u.tell()))
    return spans


def walk_top(buf: memoryview) -> dict[str, object] | None:
    """The top-level map of a wire episode, its ``chunks`` as views into ``buf`` rather than copies."""
    try:
        u = _unpacker(buf)
        top: dict[str, object] = {}
        for key in _keys(u):
            top[key] = [buf[a:b] for a, b in _bins(u, buf)] if key == "chunks" else u.unpack()
        return top if u.tell() == len(buf) else None
    except Exception:  # msgpack raises several unrelated types on malformed input: the plain parse reports it
        return None


@dataclass
class ChunkWalk:
    head: dict[str, object]  # the chunk's map, every frame list replaced by its frames' spans
    spans: dict[str, list[tuple[int, int]]]  # camera -> [start, stop) of each frame's bytes in the chunk
    depth: list[tuple[int, int]] | None  # the same for depth frames


def walk_chunk(chunk: memoryview) -> ChunkWalk | None:
    try:
        u = _unpacker(chunk)
        head: dict[str, object] = {}
        spans: dict[str, list[tuple[int, int]]] = {}
        depth = None
        for key in _keys(u):
            if key == "cams":
                spans = {}
                for cam in _keys(u):
                    spans[cam] = _bins(u, chunk)
                head[key] = spans
            elif key == "depth":
                head[key] = depth = _bins(u, chunk)
            else:
                head[key] = u.unpack()
        return ChunkWalk(head, spans, depth) if u.tell() == len(chunk) else None
    except Exception:  # as in walk_top
        return None


@dataclass
class FrameLayout:
    """Where every frame of an episode sits: step t of a camera is bytes ``spans[cam][t]`` of chunk
    ``t // chunk_steps``. Stored beside the episode (a few KB for 300 steps x 3 cameras)."""

    encoding: str  # image encoding of every chunk
    chunk_steps: int  # steps per chunk (the last may hold fewer)
    shapes: dict[str, tuple[int, ...]]  # camera -> frame shape (H, W, 3)
    spans: dict[str, np.ndarray]  # camera -> (T, 2) uint32 [start, stop) byte offsets in the step's chunk
    depth_shape: tuple[int, ...] | None = None  # (H, W) float32 metres; None without depth
    depth_spans: np.ndarray | None = None  # (T, 2) uint32, as spans

    @classmethod
    def from_walks(
        cls, walks: list[ChunkWalk], shapes: dict[str, tuple[int, ...]], max_side: int
    ) -> FrameLayout | None:
        """None unless every chunk has one encoding, the same cameras, one depth shape (sides up to
        ``max_side``: a reader allocates by it), and all but the last the same length."""
        if not walks or not all(type(w.head.get(k)) is int for w in walks for k in ("start", "stop")):
            return None
        first = walks[0].head
        if "" in walks[0].spans:  # "" names depth in streams()
            return None
        if walks[0].depth is not None:
            ds = first.get("depth_shape")
            if (
                not isinstance(ds, list)
                or len(ds) != 2
                or not all(type(x) is int and 0 < x <= max_side for x in ds)
                or any(w.head.get("depth_shape") != ds for w in walks)
            ):
                return None
        steps = int(first["stop"]) - int(first["start"])  # type: ignore[call-overload]
        for i, w in enumerate(walks):
            n = int(w.head["stop"]) - int(w.head["start"])  # type: ignore[call-overload]
            if (
                w.head["enc"] != first["enc"]
                or w.spans.keys() != walks[0].spans.keys()
                or (w.depth is None) != (walks[0].depth is None)
                or (n != steps and i < len(walks) - 1)
            ):
                return None

        def table(lists: list[list[tuple[int, int]]]) -> np.ndarray:
            return np.array([s for spans in lists for s in spans], np.int64).reshape(-1, 2)

        spans = {c: table([w.spans[c] for w in walks]) for c in walks[0].spans}
        depth = table([w.depth for w in walks if w.depth is not None]) if walks[0].depth is not None else None
        if any(s.size and s.max() >= 1 << 32 for s in [*spans.values(), depth] if s is not None):
            return None  # a chunk over 4 GiB: readers take the whole-chunk path
        return cls(
            encoding=str(first["enc"]),
            chunk_steps=steps,
            shapes={c: tuple(shapes[c]) for c in spans},
            spans={c: s.astype("<u4") for c, s in spans.items()},
            depth_shape=tuple(first["depth_shape"]) if depth is not None else None,  # type: ignore[arg-type]
            depth_spans=depth.astype("<u4") if depth is not None else None,
        )

    def pack(self) -> bytes:
        return msgpack.packb(
            {
                "enc": self.encoding,
                "chunk_steps": self.chunk_steps,
                "shapes": {c: list(s) for c, s in self.shapes.items()},
                "spans": {c: s.tobytes() for c, s in self.spans.items()},
                "depth_shape": list(self.depth_shape) if self.depth_shape else None,
                "depth_spans": self.depth_spans.tobytes() if self.depth_spans is not None else None,
            },
            use_bin_type=True,
        )

    @classmethod
    def unpack(cls, blob: bytes) -> FrameLayout:
        d = msgpack.unpackb(blob, raw=False)
        ds = d["depth_spans"]
        return cls(
            d["enc"],
            d["chunk_steps"],
            {c: tuple(s) for c, s in d["shapes"].items()},
            {c: np.frombuffer(s, "<u4").reshape(-1, 2) for c, s in d["spans"].items()},
            tuple(d["depth_shape"]) if d["depth_shape"] else None,
            np.frombuffer(ds, "<u4").reshape(-1, 2) if ds is not None else None,
        )

    def streams(self) -> list[tuple[str, np.ndarray]]:
        """(name, spans) of every frame stream: the cameras, then depth (named "") when recorded."""
        out: list[tuple[str, np.ndarray]] = list(self.spans.items())
        return [*out, ("", self.depth_spans)] if self.depth_spans is not None else out

    def reads(self, start: int, stop: int) -> list[tuple[int, int, int, int, int]]:
        """Byte ranges holding steps [start, stop) of every stream: (chunk, stream index, first step, first
        byte, last byte), last byte inclusive as GETRANGE takes it; one range per stream per chunk touched."""
        if stop <= start:
            return []
        cs = self.chunk_steps
        out = []
        for k in range(start // cs, (stop - 1) // cs + 1):
            a, b = max(start, k * cs), min(stop, (k + 1) * cs)
            for i, (_, sp) in enumerate(self.streams()):
                out.append((k, i, a, int(sp[a, 0]), int(sp[b - 1, 1]) - 1))
        return out
