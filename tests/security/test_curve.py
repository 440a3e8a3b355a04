"""ZeroMQ CURVE on the weight channel: key files, who gets announcements, and that the wire is encrypted."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from fleet import curve
from fleet.weights import Manifest, WeightAnnouncer, WeightSubscriber, sign

MANIFEST = sign(Manifest(version=7, sha256="ab" * 32, size=10, created=1.0, step=3), b"fleet-secret")


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    for name in (curve.SERVER, curve.CLIENT):
        curve.write_keypair(tmp_path, name, curve.generate_keypair())
    return tmp_path


def _listen(pub: WeightAnnouncer, sub: WeightSubscriber, seconds: float) -> Manifest | None:
    """Announce repeatedly (PUB/SUB drops messages until the subscription has propagated) and listen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pub.announce(MANIFEST)
        got = sub.wait(0.05)
        if got is not None:
            return got
    return None


def test_key_files_round_trip_and_checks(keydir: Path) -> None:
    server = curve.load_server_keys(keydir)
    client = curve.load_client_keys(keydir)
    assert client.server_public == server.keypair.public
    assert server.allowed_clients == {client.keypair.public}
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in keydir.iterdir())
    assert client.keypair.secret.decode() not in repr(client) and server.keypair.secret.decode() not in repr(
        server
    )
    (keydir / "curve-client.public").write_text("not a key\n")
    with pytest.raises(curve.CurveKeyError, match="not a Z85 CURVE key"):
        curve.load_client_keys(keydir)
    other = curve.generate_keypair()
    (keydir / "curve-client.public").write_bytes(other.public)  # a valid key, but not this secret's
    with pytest.raises(curve.CurveKeyError, match="does not belong"):
        curve.load_client_keys(keydir)
    with pytest.raises(curve.CurveKeyError, match="no such key file"):
        curve.load_client_keys(keydir, name="curve-client-robot7")
    with pytest.raises(FileExistsError):  # never silently replaced
        curve.write_keypair(keydir, curve.SERVER, curve.generate_keypair())


def test_curve_announcements_reach_only_key_holders(keydir: Path, tmp_path: Path) -> None:
    server = curve.load_server_keys(keydir)
    pub = WeightAnnouncer("tcp://127.0.0.1:0", curve=server)
    good = WeightSubscriber(pub.endpoint, curve=curve.load_client_keys(keydir))
    stranger = curve.CurveClientKeys(curve.generate_keypair(), server.keypair.public)  # not on the allow-list
    unlisted = WeightSubscriber(pub.endpoint, curve=stranger)
    impostor_view = curve.CurveClientKeys(
        curve.load_client_keys(keydir).keypair, curve.generate_keypair().public
    )
    wrong_server = WeightSubscriber(
        pub.endpoint, curve=impostor_view
    )  # expects another server: handshake fails
    plain = WeightSubscriber(pub.endpoint)
    try:
        got = _listen(pub, good, 5.0)
        assert got is not None and got.version == MANIFEST.version
        for sub in (unlisted, wrong_server, plain):
            assert _listen(pub, sub, 0.6) is None
        assert pub.allow_list is not None and pub.allow_list.refused >= 1
    finally:
        for s in (good, unlisted, wrong_server, plain):
            s.close()
        pub.close()


class _Tap:
    """A TCP relay that records what the server sends: the bytes an eavesdropper on the link would see."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.seen = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.lsock.settimeout(5)
        down, _ = self.lsock.accept()
        up = socket.create_connection(self.upstream)
        with down, up:
            while not self.stop.is_set():
                ready, _, _ = select.select([down, up], [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is up:
                        self.seen += data
                    (down if s is up else up).sendall(data)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.lsock.close()


@pytest.mark.parametrize("with_curve", [False, True])
def test_wire_is_encrypted_with_curve(keydir: Path, with_curve: bool) -> None:
    ctx = zmq.Context()
    pub = WeightAnnouncer(
        "tcp://127.0.0.1:0", context=ctx, curve=curve.load_server_keys(keydir) if with_curve else None
    )
    tap = _Tap(pub.endpoint)
    sub = WeightSubscriber(
        tap.endpoint, context=ctx, curve=curve.load_client_keys(keydir) if with_curve else None
    )
    try:
        assert _listen(pub, sub, 5.0) is not None
        # the plain channel shows the manifest to anyone on the path (the control); CURVE shows nothing of it
        assert (MANIFEST.sha256.encode() in tap.seen) is not with_curve
    finally:
        sub.close()
        tap.close()
        pub.close()
        ctx.term()
