"""Episode codec under bad input: every input decodes or raises EpisodeError — no other exception, no hang (each
example has a deadline), and memory bounded by the frame sizes the input may legally declare."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from fleet.episode import (
    MAX_STEPS,
    EpisodeError,
    decode_chunk_frames,
    decode_episode,
    decode_frame,
    decode_low,
    encode_episode,
    parse_encoded,
    validate_encoded,
)
from tests.factories import SCHEMAS, synthetic_episode
from tests.fuzz.strategies import VALUES, base_episode_tree, budget, mutated_episode, pack, repack

MEMORY_LIMIT = 64 << 20  # no input here may declare frames this large in total


@contextlib.contextmanager
def bounded_memory(limit: int = MEMORY_LIMIT) -> Iterator[None]:
    """Python-heap peak (numpy and decompressed bytes included) stays under ``limit``."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
    assert peak < limit, f"decoding used {peak >> 20} MiB"


def check_codec(blob: object) -> str:
    """Run every codec entry point on ``blob``; return "ok" or "error". Any other exception fails the test."""
    outcome = "ok"
    with bounded_memory():
        try:
            enc = parse_encoded(blob)  # type: ignore[arg-type]
            validate_encoded(enc, SCHEMAS)
        except EpisodeError as e:
            assert str(e), "an EpisodeError must say what is wrong"
            outcome = "error"
        try:
            decode_episode(blob)  # type: ignore[arg-type]
        except EpisodeError:
            outcome = "error"
        if isinstance(blob, bytes):
            for fn in (decode_low, decode_chunk_frames):
                with contextlib.suppress(EpisodeError):
                    fn(blob)
    return outcome


@budget(300)
@given(st.binary(max_size=2048))
def test_random_bytes(blob: bytes) -> None:
    check_codec(blob)


@budget(300)
@given(VALUES)
def test_random_msgpack_structures(value: object) -> None:
    check_codec(pack(value))


@budget(200)
@given(st.fixed_dictionaries({"v": st.just(1) | VALUES, "meta": VALUES, "low": VALUES, "chunks": VALUES}))
def test_episode_shaped_maps(top: dict) -> None:
    check_codec(pack(top))


@budget(400)
@given(mutated_episode())
def test_mutated_valid_episodes(blob: bytes) -> None:
    check_codec(blob)


@budget(100)
@given(st.lists(VALUES, min_size=1, max_size=3), st.integers(0, 4))
def test_chunk_heads_with_junk(values: list, which: int) -> None:
    tree = base_episode_tree()
    head = tree["chunks"][0]
    for key, v in zip(
        ["start", "stop", "enc", "cams", "shapes", "depth", "depth_shape"][which:], values, strict=False
    ):
        head[key] = v
    blob = repack(tree)
    check_codec(blob)
    with contextlib.suppress(EpisodeError):
        decode_chunk_frames(pack(head))


@budget(50)
@given(
    st.integers(1, 40),
    st.sampled_from(list(SCHEMAS)),
    st.integers(1, 12),
    st.booleans(),
    st.integers(1, 9),
    st.sampled_from(["zstd", "jpeg"]),
)
def test_valid_episodes_round_trip(
    steps: int, emb: str, size: int, depth: bool, chunk: int, enc: str
) -> None:
    ep = synthetic_episode(emb, steps=steps, size=size * 4, depth=depth, interventions=steps // 3)
    blob = encode_episode(ep, chunk_steps=chunk, image_encoding=enc)
    validate_encoded(parse_encoded(blob), SCHEMAS)
    back = decode_episode(blob)
    np.testing.assert_array_equal(back.state, ep.state)
    assert {c: f.shape for c, f in back.images.items()} == {c: f.shape for c, f in ep.images.items()}


def _tampered(fn) -> bytes:
    top = msgpack.unpackb(encode_episode(synthetic_episode(steps=4, size=8, depth=True), chunk_steps=2))
    fn(top)
    return pack(top)


def _set_meta(**kw: object):
    return lambda top: top["meta"].update(kw)


def _chunk(**kw: object):
    def fn(top: dict) -> None:
        head = msgpack.unpackb(top["chunks"][0])
        head.update(kw)
        top["chunks"][0] = pack(head)

    return fn


@pytest.mark.parametrize(
    "fn, match",
    [
        (_set_meta(reward=float("nan")), "meta.reward"),
        (_set_meta(end_time=float("inf")), "meta.end_time"),
        (_set_meta(fps=float("nan")), "meta.fps"),
        (_set_meta(robot_id="a|b"), "meta.robot_id"),
        (_set_meta(task="reach\n"), "meta.task"),
        (_set_meta(instruction="x" * 5000), "meta.instruction"),
        (lambda top: top.update(v=2), "unknown schema version 2"),
        (lambda top: top["low"]["state"].update(shape=[1] * 70, data=b"\0" * 4), "state: bad shape"),
        (lambda top: top["low"]["state"].update(shape=[MAX_STEPS + 1, 8]), "state: bad shape"),
        (lambda top: top["low"]["state"].update(shape=[100_000, 100_000]), "do not fill shape"),
        (_chunk(start="a", stop="b"), "not a step range"),
        (_chunk(stop=2**40), "not a step range"),
        (_chunk(shapes={"external": 5, "wrist": [8, 8, 3]}), "image shape"),
        (_chunk(shapes={"external": [8.0, 8, 3], "wrist": [8, 8, 3]}), "image shape"),
        (_chunk(shapes={"external": [5000, 8, 3], "wrist": [8, 8, 3]}), "image shape"),
        (_chunk(depth=5), "depth must be"),
        (_chunk(depth_shape=[60000, 60000]), "depth shape"),
        (_chunk(cams={"external": [1, 2], "wrist": [b"", b""]}), "frames"),
        (_chunk(cams={"external": [b"", b""]}), "cameras or depth differ"),
    ],
)
def test_each_bad_field_has_a_clear_error(fn, match: str) -> None:
    blob = _tampered(fn)
    with pytest.raises(EpisodeError, match=match):
        validate_encoded(parse_encoded(blob), SCHEMAS)
    assert check_codec(blob) == "error"


def test_decompression_bombs_are_refused_before_allocating() -> None:
    # a 6 KB zstd frame that declares (and would inflate to) 200 MB, where the shape allows 192 bytes
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * (200 << 20))
    with bounded_memory(8 << 20), pytest.raises(EpisodeError, match="declares"):
        decode_frame(bomb, "zstd", (8, 8, 3))
    undeclared = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(b"\0" * (16 << 20))
    with bounded_memory(8 << 20), pytest.raises(EpisodeError):
        decode_frame(undeclared, "zstd", (8, 8, 3))
    # a JPEG header declaring 60000 x 60000 (10 GB decoded) for an 8 x 8 frame
    import cv2

    ok, small = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(small.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    with bounded_memory(8 << 20), pytest.raises(EpisodeError, match="does not declare"):
        decode_frame(bytes(data), "jpeg", (8, 8, 3))
    # and a stored episode whose frames are such bombs fails cleanly when a sampler decodes it
    blob = _tampered(_chunk(cams={"external": [bomb, bomb], "wrist": [bomb, bomb]}))
    validate_encoded(parse_encoded(blob), SCHEMAS)  # frames are not decoded at ingest
    with bounded_memory(8 << 20), pytest.raises(EpisodeError):
        decode_episode(blob)


@pytest.mark.parametrize("blob", [None, "text", 123, [b"x"], {"v": 1}])
def test_non_bytes_are_an_episode_error(blob: object) -> None:
    with pytest.raises(EpisodeError, match="must be bytes"):
        parse_encoded(blob)  # type: ignore[arg-type]
