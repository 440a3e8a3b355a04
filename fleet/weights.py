"""Versioned, signed weight sets: the weight store, its announcements and the actors' view of them.

A version is the trainable subset of the policy (safetensors bytes) plus a manifest (version, parent, sha256,
size, created, training step, eval figures) signed with HMAC-SHA256 under the fleet secret. The payload and
manifest live in a directory or any fsspec URL; Redis records every manifest (so an actor that missed an
announcement converges by polling) and ZeroMQ PUB announces new ones. Version numbers come from Redis INCR:
never reused, also across learner restarts. With CURVE keys (fleet/curve.py) the announcement channel is
authenticated and encrypted; a subscriber given the fleet secret also drops forged and replayed announcements.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time

import fsspec
import redis
import zmq
from pydantic import BaseModel, Field, ValidationError

from fleet.curve import ClientAllowList, CurveClientKeys, CurveServerKeys, configure_client, configure_server

log = logging.getLogger(__name__)

TOPIC = b"weights"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class WeightVerificationError(RuntimeError):
    """A version failed its sha256 or signature check: it must never reach an arm."""


class Manifest(BaseModel):
    version: int = Field(ge=1)
    parent: int | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    created: float
    step: int = 0
    mode: str = "expert"  # which subset it holds: expert | lora | full
    figures: dict[str, float] = Field(default_factory=dict)
    signature: str = ""  # HMAC-SHA256 over every other field

    def signing_bytes(self) -> bytes:
        return json.dumps(
            self.model_dump(exclude={"signature"}), sort_keys=True, separators=(",", ":")
        ).encode()


def sign(manifest: Manifest, secret: bytes) -> Manifest:
    sig = hmac.new(secret, manifest.signing_bytes(), hashlib.sha256).hexdigest()
    return manifest.model_copy(update={"signature": sig})


def verify_manifest(manifest: Manifest, secret: bytes) -> None:
    expected = hmac.new(secret, manifest.signing_bytes(), hashlib.sha256).hexdigest()
    # the format check first: compare_digest refuses (TypeError) non-ASCII strings
    if not _SIGNATURE.fullmatch(manifest.signature) or not hmac.compare_digest(expected, manifest.signature):
        raise WeightVerificationError(
            f"version {manifest.version}: manifest signature does not verify "
            "(forged, or signed with another fleet secret)"
        )


def parse_manifest(raw: bytes | str) -> Manifest:
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as e:
        raise WeightVerificationError(
            f"malformed manifest: {e.errors()[0]['msg']} at {'.'.join(map(str, e.errors()[0]['loc']))}"
        ) from None


class WeightStore:
    """Durable versions (fsspec) + their index in Redis."""

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        client: redis.Redis,
        prefix: str = "mf",
        chunk_bytes: int = 4 << 20,
    ):
        if not secret:
            raise ValueError(
                "weights: no fleet secret; set MOLMOFLEET_FLEET_SECRET or weights.secret_file "
                "(`fleet keys generate` makes one)"
            )
        self.fs, self.root = fsspec.core.url_to_fs(os.path.expanduser(str(url)))
        self.fs.makedirs(self.root, exist_ok=True)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.r = client
        self.p = prefix
        self.chunk_bytes = chunk_bytes

    def _path(self, version: int, what: str) -> str:
        return f"{self.root}/v{version:06d}.{what}"

    def publish(
        self,
        payload: bytes | bytearray | memoryview,
        parent: int | None = None,
        step: int = 0,
        figures: dict[str, float] | None = None,
        mode: str = "expert",
    ) -> Manifest:
        version = int(self.r.incr(f"{self.p}:weights:seq"))
        view = memoryview(payload).cast("B")
        h = hashlib.sha256()
        tmp = self._path(version, "safetensors.tmp")
        with self.fs.open(tmp, "wb") as f:  # one pass: each chunk is hashed while in cache, then written
            for start in range(0, len(view), self.chunk_bytes):
                chunk = view[start : start + self.chunk_bytes]
                h.update(chunk)
                f.write(chunk)
        m = sign(
            Manifest(
                version=version,
                parent=parent,
                sha256=h.hexdigest(),
                size=len(view),
                created=time.time(),
                step=step,
                mode=mode,
                figures=figures or {},
            ),
            self.secret,
        )
        self.fs.mv(tmp, self._path(version, "safetensors"))
        with self.fs.open(self._path(version, "manifest.json"), "w") as f:
            f.write(m.model_dump_json())
        # recorded only once the bytes are durable: a reader never sees a manifest without its payload
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(f"{self.p}:weights:manifests", str(version), m.model_dump_json())
        pipe.zadd(f"{self.p}:weights:versions", {str(version): version})
        pipe.execute()
        return m

    def manifest(self, version: int) -> Manifest:
        raw = self.r.hget(f"{self.p}:weights:manifests", str(version))
        if raw is None:
            raise KeyError(f"version {version} is unknown to this fleet")
        m = parse_manifest(raw)
        verify_manifest(m, self.secret)
        if m.version != version:
            raise WeightVerificationError(f"manifest recorded under {version} claims version {m.version}")
        return m

    def versions(self) -> list[int]:
        return [int(v) for v in self.r.zrange(f"{self.p}:weights:versions", 0, -1)]

    def latest(self) -> int | None:
        v = self.r.zrange(f"{self.p}:weights:versions", -1, -1)
        return int(v[0]) if v else None

    def fetch_into(self, version: int, buffer: bytearray) -> tuple[Manifest, memoryview]:
        """Read a version into ``buffer`` and verify signature and sha256; returns the manifest and a view of the
        payload at the start of ``buffer``. Raises WeightVerificationError.

        An actor keeps one buffer for every version it fetches: the reads land in pages it already touched, so a
        swap pays neither a fresh allocation nor its page faults (at 10 MB, more than reading and hashing). The
        buffer grows to the largest version seen and never shrinks; drop the returned view before the next call
        (a bytearray with a live view cannot grow).
        """
        m = self.manifest(version)
        if len(buffer) < m.size:
            buffer.extend(bytes(m.size - len(buffer)))
        view = memoryview(buffer)[: m.size]
        h = hashlib.sha256()
        got = extra = 0
        with self.fs.open(self._path(version, "safetensors"), "rb") as f:
            # each chunk is hashed as it arrives, while still in cache
            while got < m.size and (n := f.readinto(view[got : got + self.chunk_bytes])):
                h.update(view[got : got + n])
                got += n
            if got == m.size:  # one byte past the manifest's size: a swapped-in bigger file, refused unread
                extra = len(f.read(1))
        if extra or got != m.size or h.hexdigest() != m.sha256:
            view.release()
            raise WeightVerificationError(
                f"version {version}: payload sha256/size mismatch "
                f"({got}{'+' if extra else ''} bytes, manifest says {m.size}): "
                "corrupt or tampered"
            )
        return m, view

    def fetch(self, version: int) -> tuple[Manifest, bytes]:
        """`fetch_into` a buffer of its own, as bytes: for a one-off read (an actor that swaps reuses one)."""
        buffer = bytearray()
        m, view = self.fetch_into(version, buffer)
        view.release()
        return m, bytes(buffer)


class WeightAnnouncer:
    """Publishes manifests on a ZeroMQ PUB socket (a hint: subscribers also poll Redis).

    ``curve``: serve CURVE (authenticated, encrypted); with an allow-list, a ZAP handler runs on the context (a
    private one unless ``context`` is given: ZeroMQ has one ZAP handler per context).
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5556",
        context: zmq.Context | None = None,
        curve: CurveServerKeys | None = None,
    ):
        self._own_ctx = curve is not None and curve.allowed_clients is not None and context is None
        self.ctx = zmq.Context() if self._own_ctx else context or zmq.Context.instance()
        self.allow_list = None
        if curve is not None and curve.allowed_clients is not None:
            self.allow_list = ClientAllowList(self.ctx, curve.allowed_clients).start()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            configure_server(self.sock, curve.keypair.secret)
        if endpoint.endswith(":0"):
            port = self.sock.bind_to_random_port(endpoint.rsplit(":", 1)[0])
            endpoint = f"{endpoint.rsplit(':', 1)[0]}:{port}"
        else:
            self.sock.bind(endpoint)
        self.endpoint = endpoint

    def announce(self, m: Manifest) -> None:
        self.sock.send_multipart([TOPIC, m.model_dump_json().encode()])

    def close(self) -> None:
        self.sock.close(0)
        if self.allow_list is not None:
            self.allow_list.stop()
        if self._own_ctx:
            self.ctx.term()


class WeightSubscriber:
    """An actor's ear: wakes on announcements, and otherwise polls every ``poll_s`` (missed messages, restarts).

    ``curve``: connect as a CURVE client. ``secret``: return only announcements signed by the fleet and newer
    than any returned before (a replayed old announcement is dropped; rollbacks come from the rollout state).
    """

    def __init__(
        self,
        endpoint: str | None,
        poll_s: float = 2.0,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
        secret: str | bytes | None = None,
    ):
        self.poll_s = poll_s
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.newest = 0  # highest version returned so far
        self.dropped = 0  # announcements dropped: malformed, forged or replayed
        self.sock = None
        if endpoint:
            self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
            self.sock.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                configure_client(self.sock, curve.keypair.public, curve.keypair.secret, curve.server_public)
            self.sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
            self.sock.connect(endpoint)

    def wait(self, timeout_s: float | None = None) -> Manifest | None:
        """Block until an announcement (returned) or the poll interval passes (None: time to poll Redis)."""
        timeout = self.poll_s if timeout_s is None else timeout_s
        if self.sock is None:
            time.sleep(timeout)
            return None
        if self.sock.poll(int(timeout * 1000)):
            body = self.sock.recv_multipart()[-1]
            try:
                m = parse_manifest(body)
                if self.secret is not None:
                    verify_manifest(m, self.secret)
                    if m.version <= self.newest:
                        raise WeightVerificationError(
                            f"version {m.version} announced after {self.newest}: replayed"
                        )
            except WeightVerificationError as e:
                self.dropped += 1
                log.warning("ignored announcement: %s", e)
                return None
            self.newest = max(self.newest, m.version)
            return m
        return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
