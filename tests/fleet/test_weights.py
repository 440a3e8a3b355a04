"""Weight store: signed versions, verification rejects corruption and forgery, announcements reach subscribers."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from fleet.redis_server import EmbeddedRedis
from fleet.weights import (
    WeightAnnouncer,
    WeightStore,
    WeightSubscriber,
    WeightVerificationError,
    parse_manifest,
    sign,
)


@pytest.fixture
def weights(redis_server: EmbeddedRedis, tmp_path: Path) -> WeightStore:
    return WeightStore(str(tmp_path / "w"), "s3cret", redis_server.client(), chunk_bytes=1000)


def test_publish_fetch_round_trip(weights: WeightStore) -> None:
    payload = bytes(range(256)) * 40
    m1 = weights.publish(payload, parent=None, step=10, figures={"loss": 0.5})
    m2 = weights.publish(payload[::-1], parent=1, step=20)
    assert (m1.version, m2.version) == (1, 2) and weights.versions() == [1, 2] and weights.latest() == 2
    got_m, got = weights.fetch(1)
    assert got == payload and got_m.figures == {"loss": 0.5} and got_m.size == len(payload)


def test_corrupt_payload_is_rejected(weights: WeightStore) -> None:
    m = weights.publish(b"x" * 5000)
    path = Path(weights._path(m.version, "safetensors"))
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightVerificationError, match="sha256"):
        weights.fetch(m.version)


def test_forged_manifest_is_rejected(
    weights: WeightStore, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    m = weights.publish(b"good" * 100)
    forged = sign(m.model_copy(update={"step": 999}), b"not-the-fleet-secret")
    redis_server.client().hset("mf:weights:manifests", str(m.version), forged.model_dump_json())
    with pytest.raises(WeightVerificationError, match="signature"):
        weights.fetch(m.version)
    # a genuine old manifest replayed under a newer version number is rejected too
    weights.publish(b"v2" * 100)
    redis_server.client().hset("mf:weights:manifests", "2", m.model_dump_json())
    with pytest.raises(WeightVerificationError, match="claims version 1"):
        weights.fetch(2)


def test_version_numbers_never_reused_across_store_instances(
    weights: WeightStore, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    weights.publish(b"a")
    again = WeightStore(str(tmp_path / "w"), "s3cret", redis_server.client())
    assert again.publish(b"b").version == 2


def test_malformed_manifest_is_a_clear_error() -> None:
    with pytest.raises(WeightVerificationError, match="malformed manifest"):
        parse_manifest(b'{"version": -3}')


def test_no_secret_is_refused(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MOLMOFLEET_FLEET_SECRET"):
        WeightStore(str(tmp_path), "", redis_server.client())


def test_fetch_into_reuses_one_buffer_growing_it_only_for_a_bigger_version(weights: WeightStore) -> None:
    small, big = bytes(range(256)) * 9 + b"odd", bytes(range(255, -1, -1)) * 30  # not multiples of a chunk
    m_small, m_big = weights.publish(small), weights.publish(bytearray(big))  # any bytes-like is published
    assert m_big.sha256 == hashlib.sha256(big).hexdigest() and m_big.size == len(big)  # hashed while written
    buffer = bytearray()
    m, view = weights.fetch_into(m_small.version, buffer)
    assert m == m_small and view.obj is buffer and view == small and len(buffer) == len(small)
    del view
    m, view = weights.fetch_into(m_big.version, buffer)
    assert m == m_big and view == big and len(buffer) == len(big)
    del view
    m, view = weights.fetch_into(m_small.version, buffer)  # a smaller one: a view of the buffer's start
    assert view == small and len(buffer) == len(big)
    with pytest.raises(BufferError):  # why the docstring says to drop the view: a viewed buffer cannot grow
        buffer.extend(b"x")
    del view
    assert weights.fetch(m_big.version) == (m_big, big)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "oversized"])
def test_fetch_into_refuses_a_damaged_payload_reading_no_more_than_its_size(
    weights: WeightStore, damage: str
) -> None:
    payload = bytes(range(256)) * 20
    m = weights.publish(payload)
    path = Path(weights._path(m.version, "safetensors"))
    data = bytearray(path.read_bytes())
    if damage == "flipped":
        data[len(data) // 3] ^= 0x01
    elif damage == "truncated":
        del data[-1]
    else:  # a swapped-in huge file: refused after its first byte past the manifest's size, not read whole
        data += b"x" * (8 << 20)
    path.write_bytes(bytes(data))
    read = 0
    real_open = weights.fs.open

    def counting_open(*args: object, **kwargs: object):  # counts what fetch_into reads from the file
        f = real_open(*args, **kwargs)
        real_readinto, real_read = f.readinto, f.read

        def readinto(b: memoryview) -> int:
            nonlocal read
            n = real_readinto(b)
            read += n
            return n

        def read_some(size: int = -1) -> bytes:
            nonlocal read
            out = real_read(size)
            read += len(out)
            return out

        f.readinto, f.read = readinto, read_some
        return f

    weights.fs.open = counting_open  # type: ignore[method-assign]
    buffer = bytearray()
    with pytest.raises(WeightVerificationError, match="sha256/size mismatch"):
        weights.fetch_into(m.version, buffer)
    assert read <= len(payload) + 1
    weights.fs.open = real_open  # type: ignore[method-assign]
    good = weights.publish(payload[::-1])
    _, view = weights.fetch_into(good.version, buffer)  # the buffer a refusal left behind is reusable
    assert view == payload[::-1]


def test_announcement_reaches_subscriber(weights: WeightStore) -> None:
    pub = WeightAnnouncer("tcp://127.0.0.1:0")
    sub = WeightSubscriber(pub.endpoint, poll_s=0.2)
    try:
        time.sleep(0.3)  # PUB/SUB slow joiner: the subscription must propagate first
        m = weights.publish(b"w" * 10)
        pub.announce(m)
        got = None
        for _ in range(20):
            got = sub.wait(0.2)
            if got:
                break
        assert got is not None and got.version == m.version
        assert sub.wait(0.05) is None  # nothing more: the caller polls Redis
    finally:
        sub.close()
        pub.close()
