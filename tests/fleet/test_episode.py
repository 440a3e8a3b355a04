"""Episode codec: round trips and a precise error for each kind of malformed input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fleet.episode import (
    EpisodeError,
    decode_episode,
    encode_episode,
    parse_encoded,
    validate_encoded,
    validate_episode,
)
from tests.factories import SCHEMAS, synthetic_episode


@pytest.mark.parametrize("encoding", ["zstd", "jpeg"])
def test_round_trip(encoding: str) -> None:
    ep = synthetic_episode("yam_bimanual", steps=21, depth=True, interventions=4)
    back = decode_episode(encode_episode(ep, chunk_steps=8, image_encoding=encoding))
    assert back.meta == ep.meta
    for k in ("state", "action", "intervention", "timestamp"):
        np.testing.assert_array_equal(getattr(back, k), getattr(ep, k))
    np.testing.assert_array_equal(back.depth, ep.depth)
    for cam, frames in ep.images.items():
        tol = 0 if encoding == "zstd" else 8  # JPEG is lossy
        assert np.abs(back.images[cam].astype(int) - frames).max() <= tol


def _tamper(blob: bytes, fn) -> bytes:
    top = msgpack.unpackb(blob)
    fn(top)
    return msgpack.packb(top, use_bin_type=True)


def _nan_state(top: dict) -> None:
    a = np.frombuffer(top["low"]["state"]["data"], "<f4").copy()
    a[3] = np.nan
    top["low"]["state"]["data"] = a.tobytes()


BAD = {
    "truncated": (lambda b: b[: len(b) // 2], "not valid msgpack"),
    "unknown version": (lambda b: _tamper(b, lambda t: t.__setitem__("v", 99)), "unknown schema version 99"),
    "missing meta": (lambda b: _tamper(b, lambda t: t.pop("meta")), "missing field 'meta'"),
    "missing robot_id": (lambda b: _tamper(b, lambda t: t["meta"].pop("robot_id")), "meta.robot_id"),
    "wrong type": (lambda b: _tamper(b, lambda t: t["meta"].__setitem__("fps", "fast")), "meta.fps"),
    "nan state": (lambda b: _tamper(b, _nan_state), "state: contains NaN"),
    "short data": (lambda b: _tamper(b, lambda t: t["low"]["action"].__setitem__("data", b"\0" * 4)), "action"),
    "huge dims": (lambda b: _tamper(b, lambda t: t["low"]["state"].__setitem__("shape", [10**9, 8])), "state: bad shape"),
    "bad chunks": (lambda b: _tamper(b, lambda t: t.__setitem__("chunks", "x")), "chunks: must be a list"),
    "not a map": (lambda b: msgpack.packb([1, 2]), "top level must be a map"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_episode_gets_precise_error(case: str) -> None:
    mutate, message = BAD[case]
    blob = mutate(encode_episode(synthetic_episode(steps=10), chunk_steps=4))
    with pytest.raises(EpisodeError, match=message):
        validate_encoded(parse_encoded(blob), SCHEMAS)


def test_embodiment_mismatch() -> None:
    ep = synthetic_episode("franka")
    ep.meta.embodiment = "so101"
    with pytest.raises(EpisodeError, match="state: 8 dims, so101 has 6"):
        validate_episode(ep, SCHEMAS)
    ep.meta.embodiment = "spot"
    with pytest.raises(EpisodeError, match="unknown embodiment 'spot'"):
        validate_episode(ep, SCHEMAS)


def test_intervention_count_must_match_flags() -> None:
    ep = synthetic_episode(interventions=3)
    ep.meta.interventions = 1
    with pytest.raises(EpisodeError, match="interventions is 1 but 3"):
        validate_episode(ep, SCHEMAS)
