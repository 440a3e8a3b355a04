"""The actor -> policy server channel under CURVE: a client built from the fleet's key directory (what
`fleet actor` passes from ``weights.curve_dir``) gets chunks from a real CURVE `PolicyServer` with an
allow-list; a client without keys, or with a keypair the server does not list, gets none, and times out
rather than hangs. A robot's own keypair (``curve-client-<robot>.*``) is preferred over the shared one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from actors.embodiments import EMBODIMENTS
from actors.policy_client import (
    InProcessPolicyClient,
    PolicyTimeout,
    RemotePolicyClient,
    policy_client_for,
)
from fleet import curve
from policy.molmothink import ThinkConfig
from policy.processor import PolicySample
from policy.serving import PolicyServer, PolicyServerConfig

FRANKA = EMBODIMENTS["franka"]
VERSION = 3


def franka_sample() -> PolicySample:
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for c in FRANKA.cameras}
    state = ((FRANKA.action_low + FRANKA.action_high) / 2).astype(np.float32)
    return PolicySample(
        images=images, state=state, instruction="touch the red cube", embodiment=FRANKA.norm_tag
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fleet keys generate`'s CURVE files plus one robot's own keypair."""
    d = tmp_path_factory.mktemp("keys")
    for name in (curve.SERVER, curve.CLIENT, f"{curve.CLIENT}-franka-07"):
        curve.write_keypair(d, name, curve.generate_keypair())
    return d


@pytest.fixture(scope="module")
def server(keys: Path) -> Iterator[tuple[PolicyServer, curve.ClientAllowList]]:
    """A CURVE policy server as `fleet policy-server --curve-dir KEYS` runs it: every curve-client*.public listed."""
    import torch

    torch.set_num_threads(1)
    server_keys = curve.load_server_keys(keys)
    assert server_keys.allowed_clients is not None
    ctx = zmq.Context()
    allow = curve.ClientAllowList(ctx, server_keys.allowed_clients).start()
    srv = PolicyServer(
        InProcessPolicyClient.tiny(seed=0).policy,
        PolicyServerConfig(port=0, think=ThinkConfig(mode="none")),
        version=VERSION,
        curve_secret_key=server_keys.keypair.secret,
        zap_domain=curve.ZAP_DOMAIN,
        context=ctx,
    ).start()
    try:
        yield srv, allow
    finally:
        srv.stop()
        allow.stop()
        ctx.term()


def remote(address: str, robot: str, curve_dir: Path | None, timeout_s: float = 1.0) -> RemotePolicyClient:
    """The client `fleet actor --policy tcp://...` builds (env and horizon only matter to local policies)."""
    client = policy_client_for(
        address, env=None, horizon=FRANKA.chunk_horizon, robot_id=robot, timeout_s=timeout_s, retries=0,
        curve_dir=curve_dir,
    )  # fmt: skip
    assert isinstance(client, RemotePolicyClient)
    return client


@pytest.mark.parametrize("robot", ["franka-01", "franka-07"])
def test_client_with_the_fleets_keys_gets_chunks_from_a_curve_server(
    server: tuple[PolicyServer, curve.ClientAllowList], keys: Path, robot: str
) -> None:
    srv, _ = server
    client = remote(srv.address, robot, keys)
    try:
        assert client.ping() == VERSION
        chunk = client.infer(franka_sample())
        assert chunk.shape == (FRANKA.chunk_horizon, FRANKA.action_dim) and np.isfinite(chunk).all()
        assert client.version == VERSION
    finally:
        client.close()


def test_robot_keypair_is_preferred_over_the_shared_one(keys: Path) -> None:
    shared = curve.load_keypair(keys, curve.CLIENT).public
    own = curve.load_keypair(keys, f"{curve.CLIENT}-franka-07").public
    assert curve.robot_client_keys(keys, "franka-07").keypair.public == own != shared
    assert curve.robot_client_keys(keys, "franka-01").keypair.public == shared
    assert curve.robot_client_keys(keys, "franka-01").server_public == curve.read_key(
        keys / f"{curve.SERVER}.public"
    )


def _infer_in_thread(client: RemotePolicyClient, within_s: float) -> BaseException | None:
    """What ``client.infer`` raised (None: a chunk), failing the test if it is still blocked after ``within_s``."""
    raised: list[BaseException | None] = []

    def call() -> None:
        try:
            client.infer(franka_sample())
            raised.append(None)
        except BaseException as e:  # handed to the test thread
            raised.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(within_s)
    assert not t.is_alive(), f"infer still blocked after {within_s} s (timeout_s={client.timeout_s})"
    return raised[0]


def test_client_without_keys_or_with_unlisted_keys_gets_nothing(
    server: tuple[PolicyServer, curve.ClientAllowList], keys: Path, tmp_path: Path
) -> None:
    srv, allow = server
    served = srv.served
    stranger = tmp_path / "stranger"  # the server's public key, but a client keypair not on its allow-list
    curve.write_keypair(stranger, curve.CLIENT, curve.generate_keypair())
    (stranger / f"{curve.SERVER}.public").write_bytes((keys / f"{curve.SERVER}.public").read_bytes())
    # the hang was a race (one refused client in two or three met it): eight strangers all but always do
    for curve_dir in (None, *[stranger] * 8):
        refused = allow.refused
        client = remote(srv.address, "franka-01", curve_dir, timeout_s=0.3)
        try:
            # let the handshake fail before the first request: a refused CURVE client has no connection
            # left, and a send with no connection used to block the inference thread for good
            deadline = time.monotonic() + 5
            while curve_dir is not None and allow.refused == refused:
                assert time.monotonic() < deadline, "the server never refused the unlisted key"
                time.sleep(0.01)
            time.sleep(0.05)
            assert isinstance(_infer_in_thread(client, within_s=5), PolicyTimeout)
        finally:
            client.close()
    assert srv.served == served  # nothing computed for either


def test_missing_key_files_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(curve.CurveKeyError, match="no such key file"):
        remote("tcp://127.0.0.1:9", "franka-01", tmp_path)
