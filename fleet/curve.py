"""ZeroMQ CURVE for the fleet's sockets: keypairs, their files, socket setup and the client allow-list.

A CURVE server socket (the one that binds: the weight announcer, the policy server) holds a long-term keypair.
A client knows the server's public key, so it talks to the real server only, and holds its own keypair; the
server admits only client public keys on its allow-list (a ZAP handler). Traffic is encrypted either way.

Keys are Z85 text (40 characters for 32 bytes). Files, as ``fleet keys generate`` writes them (0600):

    curve-server.public / curve-server.secret   the server keypair
    curve-client.public / curve-client.secret   a client keypair (robots may get their own: curve-client-<id>.*)

Every ``curve-client*.public`` in the directory is on the server's allow-list. File handling stays here:
``policy/`` takes raw key bytes (it reads no files other than checkpoints).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

ZAP_DOMAIN = "molmofleet"
SERVER = "curve-server"
CLIENT = "curve-client"


class CurveKeyError(ValueError):
    """A key file is missing or does not hold a Z85 CURVE key."""


@dataclass(frozen=True)
class CurveKeypair:
    public: bytes  # Z85, 40 bytes
    secret: bytes = field(repr=False)  # Z85, 40 bytes; never in a repr or a log line


@dataclass(frozen=True)
class CurveServerKeys:
    keypair: CurveKeypair
    allowed_clients: frozenset[bytes] | None = (
        None  # Z85 client public keys; None: any client knowing our key
    )


@dataclass(frozen=True)
class CurveClientKeys:
    keypair: CurveKeypair
    server_public: bytes  # Z85 public key of the server this client trusts


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise RuntimeError(
            "this libzmq has no CURVE support: install pyzmq's wheel (bundles libsodium) or unset "
            "the CURVE key settings"
        )


def generate_keypair() -> CurveKeypair:
    _require_curve()
    public, secret = zmq.curve_keypair()
    return CurveKeypair(public, secret)


def check_key(key: bytes, what: str) -> bytes:
    """``key`` if it is a Z85 CURVE key, else CurveKeyError naming ``what`` (never the key)."""
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, TypeError, KeyError, IndexError):  # z85.decode raises KeyError on a non-Z85 character
        ok = False
    if not ok:
        raise CurveKeyError(f"{what}: not a Z85 CURVE key (40 characters)")
    return key


def read_key(path: str | Path) -> bytes:
    path = Path(path).expanduser()
    if not path.exists():
        raise CurveKeyError(f"{path}: no such key file (`fleet keys generate` writes them)")
    return check_key(path.read_bytes().strip(), str(path))


def write_secret_file(path: Path, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to a new 0600 file (created with that mode: never readable by others, not even briefly)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # O_TRUNC on an existing file keeps its old mode
    return path


def write_keypair(
    directory: str | Path, name: str, pair: CurveKeypair, force: bool = False
) -> tuple[Path, Path]:
    """Write ``<name>.public`` and ``<name>.secret`` (both 0600) and return their paths."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return (
        write_secret_file(d / f"{name}.public", pair.public + b"\n", force),
        write_secret_file(d / f"{name}.secret", pair.secret + b"\n", force),
    )


def load_keypair(directory: str | Path, name: str) -> CurveKeypair:
    d = Path(directory).expanduser()
    public, secret = read_key(d / f"{name}.public"), read_key(d / f"{name}.secret")
    if zmq.curve_public(secret) != public:
        raise CurveKeyError(f"{d / name}.public does not belong to {d / name}.secret")
    return CurveKeypair(public, secret)


def load_server_keys(directory: str | Path, allow_any_client: bool = False) -> CurveServerKeys:
    """The server keypair and, unless ``allow_any_client``, every ``curve-client*.public`` as the allow-list."""
    d = Path(directory).expanduser()
    allowed = (
        None if allow_any_client else frozenset(read_key(p) for p in sorted(d.glob(f"{CLIENT}*.public")))
    )
    if allowed is not None and not allowed:
        raise CurveKeyError(f"{d}: no {CLIENT}*.public file, so no client could connect")
    return CurveServerKeys(load_keypair(d, SERVER), allowed)


def load_client_keys(directory: str | Path, name: str = CLIENT) -> CurveClientKeys:
    """A client keypair and the server's public key (a robot needs no server secret on its disk)."""
    d = Path(directory).expanduser()
    return CurveClientKeys(load_keypair(d, name), read_key(d / f"{SERVER}.public"))


def robot_client_keys(directory: str | Path, robot_id: str) -> CurveClientKeys:
    """The robot's own keypair (``curve-client-<robot_id>.*``) if ``directory`` holds one, else the fleet's shared
    ``curve-client.*``; with the server's public key."""
    own = f"{CLIENT}-{robot_id}"
    return load_client_keys(
        directory, own if (Path(directory).expanduser() / f"{own}.public").exists() else CLIENT
    )


def configure_server(sock: zmq.Socket, server_secret: bytes, domain: str = ZAP_DOMAIN) -> None:
    """Make ``sock`` a CURVE server (before bind). Clients are checked by a ClientAllowList on its context."""
    _require_curve()
    sock.curve_secretkey = check_key(server_secret, "server secret key")
    sock.curve_publickey = zmq.curve_public(server_secret)
    sock.zap_domain = domain.encode()
    sock.curve_server = True


def configure_client(
    sock: zmq.Socket, client_public: bytes, client_secret: bytes, server_public: bytes
) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server_public`` (before connect)."""
    _require_curve()
    sock.curve_publickey = check_key(client_public, "client public key")
    sock.curve_secretkey = check_key(client_secret, "client secret key")
    sock.curve_serverkey = check_key(server_public, "server public key")


class ClientAllowList:
    """A ZAP handler admitting only listed CURVE client keys to the server sockets of one context.

    ZeroMQ allows one ZAP handler per context: servers sharing a context share this list.
    """

    def __init__(self, context: zmq.Context, allowed: Iterable[bytes], domain: str = ZAP_DOMAIN):
        self.allowed = frozenset(check_key(k, "allowed client key") for k in allowed)
        self.domain = domain
        self._auth = ThreadAuthenticator(context)
        self._lock = threading.Lock()
        self.refused = 0  # handshakes refused so far (a figure for health and tests)

    def callback(self, domain: str, client_key: bytes) -> bool:
        ok = domain == self.domain and client_key in self.allowed
        if not ok:
            with self._lock:
                self.refused += 1
        return ok

    def start(self) -> ClientAllowList:
        self._auth.start()
        self._auth.configure_curve_callback(domain=self.domain, credentials_provider=self)
        return self

    def stop(self) -> None:
        self._auth.stop()

    def __enter__(self) -> ClientAllowList:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
