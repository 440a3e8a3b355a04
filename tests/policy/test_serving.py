"""PolicyServer over real ZeroMQ sockets with the actors' RemotePolicyClient: per-robot routing and MolmoThink
caches across 8 concurrent robots, a version swap under load, bad and fuzzed requests, CURVE, health and
metrics."""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.policy_client import RemotePolicyClient
from policy.checkpoint import trainable_bytes
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.molmothink import ThinkConfig, compare_image
from policy.normalization import NormStats
from policy.processor import PolicySample
from policy.protocol import InferRequest, InferResponse, RemotePolicyError, decode_response, encode_request
from policy.serving import PolicyServer, PolicyServerConfig
from tests.policy.scenes import textured_frame, with_block

TAG = "franka"


def shifted(policy: MolmoAct2Policy, shift: float) -> MolmoAct2Policy:
    """The policy with a constant expert velocity `shift`: its chunks sit at noise + shift (normalised), so
    the version that produced a chunk can be read off the chunk itself."""
    out = copy.deepcopy(policy)
    with torch.no_grad():
        out.expert.final_layer.linear.bias.fill_(shift)
    return out


@pytest.fixture(scope="module")
def base() -> MolmoAct2Policy:
    rng = np.random.default_rng(5)
    stats = NormStats()
    stats.add(TAG, rng.uniform(-2, 2, (400, 8)), rng.uniform(-2, 2, (400, 8)), action_horizon=15)
    policy = MolmoAct2Policy.from_config(MolmoAct2Config.tiny(finetune={"mode": "expert"}), stats, seed=0)
    return shifted(policy, -1.0).eval()  # version 1: chunks below zero


@pytest.fixture(scope="module")
def blob_up(base: MolmoAct2Policy) -> bytes:
    return trainable_bytes(shifted(base, +1.0))  # chunks above zero: expert tensors only


@pytest.fixture
def serve(base: MolmoAct2Policy) -> Iterator:
    servers: list[PolicyServer] = []

    def start(**overrides: object) -> PolicyServer:
        kwargs = {k: overrides.pop(k) for k in ("curve_secret_key", "context") if k in overrides}
        cfg = PolicyServerConfig(port=0, **overrides)
        servers.append(PolicyServer(base, cfg, version=1, **kwargs).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def sample(main: np.ndarray, state_dim: int = 8, embodiment: str = TAG) -> PolicySample:
    return PolicySample(
        images={"main": main, "wrist": main[::-1].copy()},
        state=np.linspace(-0.5, 0.5, state_dim, dtype=np.float32),
        instruction="stack the blocks",
        embodiment=embodiment,
    )


def level(base: MolmoAct2Policy, chunk: np.ndarray) -> float:
    """Mean of a chunk in normalised units: about -0.5 from version 1, +0.5 from the shifted-up versions."""
    return float(base.norm_stats.normalize_action(TAG, chunk).mean())


# ------------------------------------------------------------------------------------------------ routing


def test_eight_concurrent_robots_get_their_version_and_their_own_cache(serve, base, blob_up) -> None:
    server = serve(max_batch=8, max_wait_ms=30.0)
    server.load_version(2, blob_up)
    v2 = server.versions.resolve("any", 2).policy
    assert v2.vision is not base.vision and next(v2.vision.parameters()) is next(base.vision.parameters())
    assert next(v2.expert.parameters()) is not next(base.expert.parameters())  # only shipped tensors copied
    robots = [f"arm-{i}" for i in range(8)]
    want = {r: 2 if i < 4 else 1 for i, r in enumerate(robots)}
    clients = [RemotePolicyClient(server.address, r, timeout_s=30.0) for r in robots]
    clients[0].route(2)  # canaries asking for their version ...
    clients[1].route(2)
    server.assign(robots[2], 2)  # ... and canaries pinned by the server
    server.assign(robots[3], 2)
    frames = {r: with_block(textured_frame(i), 10 + 2 * i) for i, r in enumerate(robots)}
    moved = {
        r: with_block(textured_frame(i), 11 + 2 * i) if i % 2 else frames[r] for i, r in enumerate(robots)
    }
    chunks: dict[tuple[str, int], np.ndarray] = {}
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def run(client: RemotePolicyClient) -> None:
        try:
            for step, frame in enumerate((frames, moved)):
                gate.wait(30)
                chunks[client.robot_id, step] = client.infer(sample(frame[client.robot_id]))
                assert client.version == want[client.robot_id]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for c in clients:
            c.close()
    assert not errors, errors
    for i, r in enumerate(robots):
        for step in (0, 1):
            assert (level(base, chunks[r, step]) > 0) == (want[r] == 2), (r, step)
        cache = server.cache_of(r)
        assert cache is not None and cache.version == want[r]
        np.testing.assert_array_equal(cache.image, compare_image(moved[r], 320))  # its own camera, no other's
        assert cache.repredicted == (2 if i % 2 else 0)  # the block moved one cell, or the scene stood still
    m = server.metrics
    batches = m.value("molmofleet_policy_server_batch_size_count")
    assert m.value("molmofleet_policy_server_batch_size_sum") == 16 and batches < 16  # requests were batched
    assert m.value("molmofleet_policy_server_depth_cells_total", {"kind": "repredicted"}) == 800 + 8
    assert server.health()["robots"] == 8


def test_a_version_swap_under_load_loses_no_request(serve, base, blob_up) -> None:
    server = serve(max_batch=8, max_wait_ms=2.0, think=ThinkConfig(mode="none"))
    robots = [f"arm-{i}" for i in range(8)]
    seen: dict[str, list[int]] = {r: [] for r in robots}
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(robot: str, i: int) -> None:
        client = RemotePolicyClient(server.address, robot, timeout_s=30.0, retries=0)
        try:
            while not stop.is_set():
                chunk = client.infer(sample(textured_frame(i)))
                seen[robot].append(client.version)
                assert (level(base, chunk) > 0) == (client.version == 3)
        except BaseException as e:
            errors.append(e)
        finally:
            client.close()

    def wait_for(pred, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred() and not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pred(), (errors, {r: len(v) for r, v in seen.items()})

    threads = [threading.Thread(target=run, args=(r, i)) for i, r in enumerate(robots)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(v) >= 3 for v in seen.values()))
        server.load_version(3, blob_up, champion=True)  # hot add + promote while 8 robots keep asking
        wait_for(lambda: all(v.count(3) >= 3 for v in seen.values()))
        server.retire_version(1)
        counts = {r: len(v) for r, v in seen.items()}
        wait_for(lambda: all(len(seen[r]) >= counts[r] + 2 for r in robots))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for r, versions in seen.items():  # every request was answered, by the old version then the new
        assert versions == sorted(versions) and set(versions) == {1, 3}, (r, versions)
    assert server.versions.loaded() == [3]
    late = RemotePolicyClient(server.address, "arm-late", version=1, timeout_s=10.0)
    try:
        with pytest.raises(RemotePolicyError) as err:
            late.infer(sample(textured_frame(0)))
        assert err.value.code == "unknown_version"
    finally:
        late.close()
    assert server.metrics.value("molmofleet_policy_server_requests_total", {"outcome": "internal"}) == 0


def test_the_remote_chunk_is_the_in_process_chunk(serve, base) -> None:
    server = serve(think=ThinkConfig(mode="none"), seed=0)
    s = sample(textured_frame(4))
    client = RemotePolicyClient(server.address, "arm-0", timeout_s=30.0)
    try:
        remote = client.infer(s)
    finally:
        client.close()
    local = base.predict_actions(s, generator=torch.Generator().manual_seed(0))  # same seed, same noise
    np.testing.assert_allclose(remote, local, atol=1e-5)


# ------------------------------------------------------------------------------------------------ bad input


class RawClient:
    """A DEALER sending hand-made frames, one request outstanding at a time."""

    def __init__(self, address: str, context: zmq.Context | None = None, curve: tuple | None = None):
        self.sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(address)

    def ask(self, *frames: bytes, timeout_s: float = 30.0) -> InferResponse | None:
        self.sock.setsockopt(
            zmq.SNDTIMEO, int(timeout_s * 1000)
        )  # a refused handshake leaves no peer to queue to
        try:
            self.sock.send_multipart(list(frames))
        except zmq.Again:
            return None
        if not self.sock.poll(timeout_s * 1000):
            return None
        return decode_response(self.sock.recv())

    def close(self) -> None:
        self.sock.close(linger=0)


def request(s: PolicySample | None, req_id: str, sent: float = 1.0, **kw: object) -> bytes:
    kind = "infer" if s is not None else "ping"
    return encode_request(InferRequest(kind=kind, robot="arm-x", sample=s, id=req_id, sent=sent, **kw))


def test_malformed_oversized_and_replayed_requests_get_errors_and_serving_goes_on(serve) -> None:
    server = serve(max_request_bytes=200_000, think=ThinkConfig(mode="none"))
    raw = RawClient(server.address)
    good = sample(textured_frame(5))
    try:
        resp = raw.ask(b"\x00\xffnot msgpack")
        assert (resp.ok, resp.id, resp.error_code) == (False, "unknown", "bad_request")
        assert raw.ask(b"one", b"two").error_code == "bad_request"
        big = sample(np.zeros((300, 300, 3), np.uint8))
        resp = raw.ask(request(big, "too-big"))
        assert (resp.id, resp.error_code) == ("too-big", "bad_request") and "exceeds" in resp.error_message
        msg = msgpack.unpackb(request(good, "bad-dtype"))
        msg["sample"]["state"]["dtype"] = "<c8"
        resp = raw.ask(msgpack.packb(msg))
        assert (resp.id, resp.error_code) == ("bad-dtype", "bad_request") and "dtype" in resp.error_message
        assert (
            raw.ask(request(sample(textured_frame(5), embodiment="yam"), "e")).error_code
            == "unknown_embodiment"
        )
        assert raw.ask(request(sample(textured_frame(5), state_dim=5), "s")).error_code == "bad_request"
        assert raw.ask(request(good, "v", version=9)).error_code == "unknown_version"
        assert raw.ask(request(good, "d", depth_mode="deep")).error_code == "bad_request"

        first = raw.ask(request(good, "once", sent=100.0))
        assert first.ok and first.chunk is not None
        served = server.served
        replay = raw.ask(request(good, "once", sent=100.0))  # the same message again
        assert replay.error_code == "bad_request" and "replayed" in replay.error_message
        retry = raw.ask(request(good, "once", sent=101.0))  # a client retry: answered, not recomputed
        assert retry.ok and np.array_equal(retry.chunk, first.chunk) and server.served == served
        assert raw.ask(request(None, "ping")).ok
        assert raw.ask(request(good, "after")).ok  # still serving
    finally:
        raw.close()
    m = server.metrics
    assert m.value("molmofleet_policy_server_duplicates_total", {"kind": "replay"}) == 1
    assert m.value("molmofleet_policy_server_duplicates_total", {"kind": "retry"}) == 1
    assert m.value("molmofleet_policy_server_requests_total", {"outcome": "bad_request"}) == 7


@pytest.fixture(scope="module")
def fuzz_server(base: MolmoAct2Policy) -> Iterator[PolicyServer]:
    server = PolicyServer(base, PolicyServerConfig(port=0, think=ThinkConfig(mode="none")), version=1).start()
    yield server
    server.stop()


_SMALL = sample(textured_frame(6)[:32, :32].copy())
_FIELDS = [
    ("v",), ("kind",), ("id",), ("robot",), ("version",), ("sent",), ("depth",), ("sample",),
    ("sample", "images"), ("sample", "images", "main"), ("sample", "images", "main", "shape"),
    ("sample", "images", "main", "dtype"), ("sample", "images", "main", "data"), ("sample", "state"),
    ("sample", "state", "shape"), ("sample", "state", "data"), ("sample", "instruction"), ("sample", "embodiment"),
]  # fmt: skip
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=48),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip
_counter = itertools.count()


def _mutated(path: tuple[str, ...], value: object, delete: bool) -> bytes:
    msg = msgpack.unpackb(request(_SMALL, f"fuzz-{next(_counter)}"))
    node = msg
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return msgpack.packb(msg, use_bin_type=True)


_FRAMES = st.one_of(
    st.binary(max_size=200).map(lambda b: [b]),
    st.builds(_mutated, st.sampled_from(_FIELDS), _VALUES, st.booleans()).map(lambda b: [b]),
    st.integers(1, 400).map(lambda n: [request(_SMALL, f"cut-{next(_counter)}")[:n]]),
    st.lists(st.binary(max_size=16), min_size=0, max_size=3).filter(lambda f: len(f) != 1),
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=_FRAMES)
def test_fuzzed_requests_each_get_one_answer_and_the_server_survives(fuzz_server, frames) -> None:
    raw = RawClient(fuzz_server.address)
    try:
        resp = raw.ask(*frames, timeout_s=20.0) if frames else raw.ask(b"")
        assert resp is not None, f"no answer to {frames!r:.200}"
        assert resp.ok or resp.error_code in ("bad_request", "unknown_version", "unknown_embodiment")
        assert raw.sock.poll(0) == 0  # exactly one answer
        assert raw.ask(request(None, f"alive-{next(_counter)}")).ok
    finally:
        raw.close()


# ------------------------------------------------------------------------------------------------ ops


def test_health_and_prometheus_metrics_over_http(serve) -> None:
    server = serve(metrics_port=0, think=ThinkConfig(mode="none"))
    client = RemotePolicyClient(server.address, "arm-0", timeout_s=30.0)
    try:
        client.infer(sample(textured_frame(7)))
    finally:
        client.close()
    base_url = f"http://127.0.0.1:{server.metrics_port}"
    health = json.loads(urllib.request.urlopen(f"{base_url}/healthz", timeout=5).read())
    assert health["status"] == "ok" and health["versions"] == [1] and health["served"] == 1
    text = urllib.request.urlopen(f"{base_url}/metrics", timeout=5).read().decode()
    for line in (
        "molmofleet_policy_server_queue_depth 0.0",
        "molmofleet_policy_server_batch_size_count 1.0",
        'molmofleet_policy_server_requests_total{outcome="ok"} 1.0',
        'molmofleet_policy_server_chunks_total{version="1"} 1.0',
        "molmofleet_policy_server_champion_version 1.0",
    ):
        assert line in text, line
    for stage in ("queue", "collate", "prefix", "depth", "expert", "total"):
        assert f'molmofleet_policy_server_stage_seconds_count{{stage="{stage}"}} 1.0' in text


def test_curve_server_answers_only_clients_that_know_its_key(serve) -> None:
    public, secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    ctx = zmq.Context()
    server = serve(curve_secret_key=secret, context=ctx, think=ThinkConfig(mode="none"))
    trusted = RawClient(server.address, ctx, (client_public, client_secret, public))
    plain = RawClient(server.address, ctx)
    try:
        assert trusted.ask(request(None, "p1")).ok
        assert plain.ask(request(None, "p2"), timeout_s=0.3) is None  # no CURVE handshake, no answer
    finally:
        trusted.close()
        plain.close()
        server.stop()
        ctx.term()


def test_versions_refuse_foreign_weights_and_keep_the_champion(serve, base, blob_up) -> None:
    server = serve(think=ThinkConfig(mode="none"))
    other = MolmoAct2Policy.from_config(
        MolmoAct2Config.tiny(finetune={"mode": "expert"}, action_expert_config={"hidden_size": 64}),
        base.norm_stats,
    )
    with pytest.raises(ValueError, match="different architecture"):
        server.load_version(2, trainable_bytes(other))
    server.load_version(2, blob_up)
    with pytest.raises(ValueError, match="already loaded"):
        server.load_version(2, blob_up)
    with pytest.raises(ValueError, match="champion"):
        server.retire_version(1)
    server.assign("arm-9", 2)
    server.set_champion(2)
    server.retire_version(1)
    assert server.versions.loaded() == [2] and server.health()["champion"] == 2
