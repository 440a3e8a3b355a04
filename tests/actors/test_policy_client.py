"""Policy clients: the wire protocol, the remote client against a real ZeroMQ ROUTER (timeouts, reconnects,
errors, version routing), the in-process tiny model and its weight loading, and the scripted expert's chunks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import numpy as np
import pytest
import zmq

from actors.embodiments import EMBODIMENTS
from actors.policy_client import (
    InProcessPolicyClient,
    PolicyTimeout,
    RemotePolicyClient,
    ScriptedPolicyClient,
)
from actors.sim.env import FleetSimEnv
from actors.sim.experts import EXPERTS
from policy.processor import PolicySample
from policy.protocol import (
    InferRequest,
    InferResponse,
    ProtocolError,
    RemotePolicyError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
)

FRANKA = EMBODIMENTS["franka"]


def franka_sample(seed: int = 0) -> PolicySample:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for c in FRANKA.cameras}
    state = (FRANKA.action_low + FRANKA.action_high) / 2
    return PolicySample(
        images=images,
        state=state.astype(np.float32),
        instruction="touch the red cube",
        embodiment=FRANKA.norm_tag,
    )


class ReferenceServer:
    """The smallest server of policy/protocol.py: a ROUTER answering each request with ``handler(request)``
    (None: leave it unanswered). The real one, batched, is policy/serving.py."""

    def __init__(self, handler: Callable[[InferRequest], InferResponse | None]):
        self.handler = handler
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.requests: list[InferRequest] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            identity, blob = self.sock.recv_multipart()
            try:
                req = decode_request(blob)
            except ProtocolError as e:
                resp: InferResponse | None = error_response("unknown", "bad_request", str(e))
            else:
                self.requests.append(req)
                try:
                    resp = self.handler(req)
                except Exception as e:  # the server answers every failure
                    resp = error_response(req.id, "internal", f"{type(e).__name__}: {e}")
            if resp is not None:
                self.sock.send_multipart([identity, encode_response(resp)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[InferRequest], InferResponse | None]], ReferenceServer]]:
    servers: list[ReferenceServer] = []

    def start(handler: Callable[[InferRequest], InferResponse | None]) -> ReferenceServer:
        servers.append(ReferenceServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def echo_state(version: int = 5) -> Callable[[InferRequest], InferResponse]:
    """A chunk of 4 copies of the state, from weights `version` (or the version asked for)."""

    def handle(req: InferRequest) -> InferResponse:
        v = req.version if req.version is not None else version
        chunk = None if req.sample is None else np.tile(req.sample.state, (4, 1))
        return InferResponse(id=req.id, ok=True, version=v, chunk=chunk, server_ms=1.0)

    return handle


# ------------------------------------------------------------------------------------------------ protocol


def test_protocol_round_trips_samples_and_chunks() -> None:
    s = franka_sample()
    req = decode_request(encode_request(InferRequest(kind="infer", robot="franka-01", sample=s, version=3)))
    assert (req.kind, req.robot, req.version) == ("infer", "franka-01", 3)
    assert req.sample is not None and req.sample.instruction == s.instruction
    assert list(req.sample.images) == list(s.images)  # camera order (main first) is kept
    for cam in s.images:
        np.testing.assert_array_equal(req.sample.images[cam], s.images[cam])
    np.testing.assert_array_equal(req.sample.state, s.state)
    chunk = np.arange(24, dtype=np.float32).reshape(3, 8)
    resp = decode_response(encode_response(InferResponse(id=req.id, ok=True, version=3, chunk=chunk)))
    np.testing.assert_array_equal(resp.chunk, chunk)
    err = decode_response(encode_response(error_response(req.id, "unknown_version", "no v9")))
    with pytest.raises(RemotePolicyError, match="unknown_version"):
        err.raise_for_error()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.update(v=2), "protocol version"),
        (lambda m: m.update(kind="train"), "kind"),
        (lambda m: m["sample"]["state"].update(dtype="<c8"), "dtype"),
        (lambda m: m["sample"]["state"].update(data=b"\x00" * 3), "do not fill"),
        (lambda m: m["sample"]["images"]["external"].update(shape=[32, 96]), "expected"),
        (lambda m: m.update(id=""), "id"),
    ],
)
def test_protocol_rejects_malformed_requests_with_the_field(
    mutate: Callable[[dict], None], match: str
) -> None:
    msg = msgpack.unpackb(encode_request(InferRequest(kind="infer", robot="r", sample=franka_sample())))
    mutate(msg)
    with pytest.raises(ProtocolError, match=match):
        decode_request(msgpack.packb(msg))


# ------------------------------------------------------------------------------------------------ remote


def test_remote_client_infers_and_routes_versions(serve: Callable) -> None:
    server = serve(echo_state(version=5))
    client = RemotePolicyClient(server.address, "franka-01", timeout_s=2.0)
    try:
        s = franka_sample()
        chunk = client.infer(s)
        assert chunk.shape == (4, 8) and chunk.flags.writeable
        np.testing.assert_allclose(chunk[0], s.state)
        assert client.version == 5 and server.requests[-1].version is None  # champion by default
        client.route(7)  # a canary asks for its version
        client.infer(s)
        assert server.requests[-1].version == 7 and client.version == 7
        assert client.ping() == 7 and server.requests[-1].robot == "franka-01"
    finally:
        client.close()


def test_remote_client_reconnects_after_a_timeout_and_ignores_the_late_answer(serve: Callable) -> None:
    calls = {"n": 0}

    def slow_first(req: InferRequest) -> InferResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.3)  # answers after the client gave up: to a socket that no longer exists
        return echo_state()(req)

    server = serve(slow_first)
    client = RemotePolicyClient(server.address, "r1", timeout_s=0.25, retries=1)
    try:
        chunk = client.infer(franka_sample())
        assert chunk.shape == (4, 8)
        assert client.timeouts == 1 and client.reconnects == 1
        assert len(server.requests) == 2 and server.requests[0].id == server.requests[1].id
    finally:
        client.close()


def test_remote_client_raises_after_its_retries_then_recovers(serve: Callable) -> None:
    answer = {"on": False}
    server = serve(lambda req: echo_state()(req) if answer["on"] else None)
    client = RemotePolicyClient(server.address, "r1", timeout_s=0.1, retries=1)
    try:
        with pytest.raises(PolicyTimeout):
            client.infer(franka_sample())
        assert client.timeouts == 2 and client.reconnects == 2
        answer["on"] = True
        assert client.infer(franka_sample()).shape == (4, 8)  # the fresh socket works
    finally:
        client.close()


def test_remote_client_surfaces_server_errors(serve: Callable) -> None:
    server = serve(lambda req: error_response(req.id, "overloaded", "queue full"))
    client = RemotePolicyClient(server.address, "r1", timeout_s=1.0)
    try:
        with pytest.raises(RemotePolicyError) as err:
            client.infer(franka_sample())
        assert err.value.code == "overloaded" and client.timeouts == 0
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------ in process


@pytest.fixture(scope="module")
def tiny() -> InProcessPolicyClient:
    import torch

    torch.set_num_threads(1)
    return InProcessPolicyClient.tiny(seed=0)


def test_in_process_tiny_policy_gives_chunks_in_real_units(tiny: InProcessPolicyClient) -> None:
    chunk = tiny.infer(franka_sample())
    assert chunk.shape == (FRANKA.chunk_horizon, FRANKA.action_dim) and chunk.dtype == np.float32
    assert np.all(chunk >= FRANKA.action_low - 1e-4) and np.all(chunk <= FRANKA.action_high + 1e-4)


def test_remote_and_in_process_give_the_same_chunk(serve: Callable, tiny: InProcessPolicyClient) -> None:
    served = InProcessPolicyClient.tiny(seed=0)
    local = InProcessPolicyClient.tiny(seed=0)
    server = serve(lambda req: InferResponse(id=req.id, ok=True, version=2, chunk=served.infer(req.sample)))
    client = RemotePolicyClient(server.address, "r1", timeout_s=10.0)
    try:
        np.testing.assert_allclose(client.infer(franka_sample(1)), local.infer(franka_sample(1)), atol=1e-5)
    finally:
        client.close()


def test_in_process_client_loads_trainable_weights_and_refuses_foreign_ones() -> None:
    import torch

    from policy.checkpoint import trainable_bytes

    client = InProcessPolicyClient.tiny(seed=0)
    other = InProcessPolicyClient.tiny(seed=1)
    with torch.no_grad():  # "trained": at init the AdaLN-zero expert outputs nothing, whatever the weights
        for p in other.policy.expert.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    s = franka_sample()
    before = InProcessPolicyClient(client.policy, seed=3).infer(s)
    client.load_weights(trainable_bytes(other.policy), version=4)
    assert client.version == 4
    after = InProcessPolicyClient(client.policy, seed=3).infer(s)
    assert not np.allclose(before, after)
    with pytest.raises(KeyError, match="another architecture"):
        client.load_weights({"not.a.parameter": np.zeros(3, np.float32)}, version=5)
    assert client.version == 4


def _with_header(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    """``blob`` with its safetensors header JSON changed by ``edit``, the data section kept."""
    import json

    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n :]


def _overlap_two_of_a_shape(header: dict) -> None:
    """Point one tensor at another's bytes (same shape, so each entry is self-consistent): a gap is left."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    first, second = next(
        (a, b) for a in entries for b in entries if a < b and entries[a]["shape"] == entries[b]["shape"]
    )
    entries[second]["data_offsets"] = list(entries[first]["data_offsets"])


def test_in_process_client_loads_from_a_receive_buffer_and_refuses_malformed_blobs_untouched() -> None:
    import torch

    from policy.checkpoint import trainable_bytes

    client = InProcessPolicyClient.tiny(seed=0)
    other = InProcessPolicyClient.tiny(seed=1)
    with torch.no_grad():
        for p in other.policy.expert.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    blob = trainable_bytes(other.policy)
    mine = dict(client.policy.named_parameters())
    before = {n: p.detach().clone() for n, p in mine.items()}
    malformed = {
        "truncated": blob[:-1],
        "trailing bytes": blob + b"\0",
        "header past the end": (len(blob)).to_bytes(8, "little") + blob[8:],
        "overlapping tensors": _with_header(blob, _overlap_two_of_a_shape),
        "unknown dtype": _with_header(
            blob, lambda h: next(v for k, v in h.items() if k != "__metadata__").update(dtype="F8_E9M9")
        ),
    }
    for why, bad in malformed.items():
        with pytest.raises(ValueError):
            client.load_weights(bad, version=7)
        assert client.version == 0, why
        assert all(torch.equal(p, before[n]) for n, p in mine.items()), f"{why}: a weight was touched"
    receive = bytearray(len(blob) + 100)  # a receive buffer holds the biggest version seen so far
    receive[: len(blob)] = blob
    with memoryview(receive)[: len(blob)] as view:
        client.load_weights(view, version=8)
    theirs = dict(other.policy.named_parameters())
    assert client.version == 8
    assert all(torch.equal(mine[n], theirs[n]) for n in other.policy.trainable_parameter_names())


# ------------------------------------------------------------------------------------------------ scripted


def test_scripted_chunk_is_the_expert_rolled_forward_from_the_observation() -> None:
    env = FleetSimEnv("franka", "reach", render=False)
    try:
        obs, _ = env.reset(seed=3)
        for _ in range(5):
            obs, *_ = env.step(obs["state"])
        client = ScriptedPolicyClient(env, horizon=FRANKA.chunk_horizon)
        sample = client.sample_from(obs, env.instruction, FRANKA.norm_tag)
        state_before = env.scene.state().copy()
        chunk = client.infer(sample)
        np.testing.assert_array_equal(env.scene.state(), state_before)  # planning never touched the live sim
        expert = EXPERTS["reach"](env.scene, env.task)
        live = []
        for _ in range(FRANKA.chunk_horizon):
            live.append(expert.act())
            env.step(live[-1])
        # the same plan up to float rounding (the live step's kinematics are from before its last substep)
        np.testing.assert_allclose(chunk, np.stack(live), atol=1e-5)
    finally:
        env.close()
