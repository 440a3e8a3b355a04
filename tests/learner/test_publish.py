"""Weight sinks: numbers only grow and are never reused (threads, restarts, a lost counter file), payloads are
verified, and the fleet's signed store receives and announces versions through WeightStoreSink."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from fleet.redis_server import EmbeddedRedis
from fleet.weights import WeightAnnouncer, WeightStore, WeightSubscriber
from learner.publish import DirectoryWeightSink, WeightSink, WeightStoreSink


def test_directory_sink_numbers_grow_across_threads_and_restarts(tmp_path: Path) -> None:
    sink = DirectoryWeightSink(tmp_path)
    assert isinstance(sink, WeightSink)
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: got.append(sink.publish(b"w%d" % i, None, i, {"l": 1.0})))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))
    again = DirectoryWeightSink(tmp_path)  # a restarted learner
    assert again.publish(b"next", 8, 100, {}) == 9
    (tmp_path / "counter").unlink()  # a lost counter: the manifests still set the floor
    assert DirectoryWeightSink(tmp_path).publish(b"after", 9, 101, {}) == 10
    payload, m = again.read(10)
    assert payload == b"after" and m.parent == 9 and m.sha256 == hashlib.sha256(b"after").hexdigest()
    (tmp_path / "v000010.safetensors").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        again.read(10)


def test_weight_store_sink_signs_and_announces(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    store = WeightStore(str(tmp_path / "w"), "secret", redis_server.client())
    pub = WeightAnnouncer("tcp://127.0.0.1:0")
    sub = WeightSubscriber(pub.endpoint, secret="secret")
    try:
        sink = WeightStoreSink(store, pub, mode="lora")
        # a PUB socket drops messages until the subscription has propagated: publish until one arrives
        first = sink.publish(b"x" * 100, None, 10, {"eval_loss": 0.5})
        heard = None
        for _ in range(50):
            heard = sub.wait(0.1)
            if heard is not None:
                break
            sink.publish(b"x" * 100, first, 11, {})
        assert heard is not None and heard.version >= first and heard.mode == "lora"
        manifest, payload = store.fetch(first)  # verified: sha256 and HMAC signature
        assert payload == b"x" * 100 and manifest.figures == {"eval_loss": 0.5} and manifest.step == 10
        assert store.versions()[0] == first
    finally:
        sub.close()
        pub.close()
