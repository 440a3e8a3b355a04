"""Forged and replayed weight announcements never reach an actor's swap logic; the store rejects them too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from fleet.redis_server import EmbeddedRedis
from fleet.weights import (
    TOPIC,
    Manifest,
    WeightStore,
    WeightSubscriber,
    WeightVerificationError,
    sign,
    verify_manifest,
)

SECRET = b"fleet-secret"


def _manifest(version: int, key: bytes = SECRET, **kw: object) -> Manifest:
    return sign(Manifest(version=version, sha256="cd" * 32, size=4, created=1.0, **kw), key)


def test_subscriber_drops_forged_replayed_and_malformed_announcements() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = WeightSubscriber(f"tcp://127.0.0.1:{port}", context=ctx, secret=SECRET)
    try:
        probe = _manifest(1)
        deadline = time.monotonic() + 5
        while sub.wait(0.05) is None:  # slow joiner: wait until the subscription is live
            assert time.monotonic() < deadline
            pub.send_multipart([TOPIC, probe.model_dump_json().encode()])
        while sub.wait(0.2) is not None:  # drain the extra probes (dropped as replays)
            pass
        sent = [
            [TOPIC, _manifest(7).model_dump_json().encode()],  # genuine, new: returned
            [TOPIC, _manifest(8, key=b"attacker").model_dump_json().encode()],  # forged
            [TOPIC, _manifest(7).model_dump_json().encode()],  # replay of the same
            [TOPIC, _manifest(5).model_dump_json().encode()],  # an older genuine one announced again
            [TOPIC, _manifest(9).model_dump_json().encode().replace(b'"step":0', b'"step":1')],  # tampered
            [TOPIC, b"\xff\xfe not json"],
            [TOPIC, b"{}", b"extra frame"],
            [TOPIC],
            [TOPIC, _manifest(8).model_dump_json().encode()],  # genuine, new: returned
        ]
        for frames in sent:
            pub.send_multipart(frames)
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 2:
            m = sub.wait(0.1)
            if m is not None:
                got.append(m.version)
        assert got == [7, 8] and sub.newest == 8
        assert sub.dropped >= len(sent) - 2
    finally:
        sub.close()
        pub.close(0)
        ctx.term()


def test_store_rejects_forged_and_replayed_versions(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    store = WeightStore(str(tmp_path / "w"), SECRET, redis_server.client())
    v1 = store.publish(b"old-weights")
    v2 = store.publish(b"new-weights", parent=v1.version)
    r = redis_server.client()
    # a genuine old manifest recorded as the newest version: its signed version number gives it away
    r.hset("mf:weights:manifests", str(v2.version), v1.model_dump_json())
    with pytest.raises(WeightVerificationError, match="claims version"):
        store.fetch(v2.version)
    # the old payload under the new manifest: sha256 mismatch
    r.hset("mf:weights:manifests", str(v2.version), v2.model_dump_json())
    Path(store._path(v2.version, "safetensors")).write_bytes(b"old-weights")
    with pytest.raises(WeightVerificationError, match="sha256"):
        store.fetch(v2.version)
    # a forged manifest for the real payload, signed with another key
    r.hset("mf:weights:manifests", str(v1.version), _manifest(v1.version, key=b"attacker").model_dump_json())
    with pytest.raises(WeightVerificationError, match="signature"):
        store.fetch(v1.version)


@pytest.mark.parametrize(
    "signature", ["", "ä" * 64, "\ud800" * 3, "AB" * 32, "0" * 63, "0" * 65, " " + "0" * 64]
)
def test_verify_refuses_odd_signatures_with_a_verification_error(signature: str) -> None:
    m = _manifest(3).model_copy(update={"signature": signature})
    with pytest.raises(WeightVerificationError, match="signature"):
        verify_manifest(m, SECRET)
