"""The policy-serving wire protocol: what an actor's `RemotePolicyClient` and the policy server exchange.

Defined once, here, so client (actors/policy_client.py) and server (policy/serving.py) cannot drift. Pure
bytes in, bytes out: no sockets (policy/ is a model library); the transport is ZeroMQ, owned by the callers.

Transport: the client is a DEALER, the server a ROUTER. The client sends one frame (a request); the ROUTER
sees ``[identity, request]`` and answers ``[identity, response]``; the client receives one frame. Several
requests may be outstanding on a socket: responses carry the request id, and a client drops any whose id it
is no longer waiting for (the answer to a request it already timed out on).

Every message is a msgpack map with ``"v": PROTOCOL_VERSION``. Arrays travel as ``{"dtype", "shape", "data"}``
(numpy dtype string, list of ints, raw C-order bytes), checked against an allow-list of dtypes and a size cap.

Request (client -> server):
    v        int   PROTOCOL_VERSION
    kind     str   "infer" (predict a chunk) | "ping" (liveness and the version the server runs)
    id       str   request id chosen by the client, echoed in the response (1..64 chars)
    robot    str   robot id: per-robot metrics and fair batching on the server
    version  int | None   weights version wanted (canary routing); None: the server's current champion
    depth    str   (optional) MolmoThink depth mode for this call: "full" | "adaptive" | "none"; absent: the
                   server's default (policy/molmothink.py)
    sample   map   (infer only) {"images": {camera: ARRAY (H, W, 3) uint8, main camera first},
                                 "state": ARRAY (S,) float32, "instruction": str, "embodiment": str (norm tag)}
    sent     float client wall time (unix s) when sent, for latency accounting

Response (server -> client):
    v        int   PROTOCOL_VERSION
    id       str   the request's id
    ok       bool
    version  int   weights version that produced the chunk (or that the server runs, for ping)
    chunk    ARRAY (H, A) float32 actions in real units (ok infer only)
    error    map   (not ok) {"code": one of ERROR_CODES, "message": str}
    server_ms float time the request spent in the server (queueing + inference), ms
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np

from policy.processor import PolicySample

PROTOCOL_VERSION = 1
MAX_ARRAY_BYTES = 64 << 20  # one array: 8 cameras of 1024^2 RGB fit many times over
ALLOWED_DTYPES = frozenset({"|u1", "<f4", "<f8", "<i4", "<i8", "|b1"})

ERROR_CODES = (
    "bad_request",  # malformed message: the client has a bug; retrying will not help
    "unknown_version",  # the requested weights version is not loaded on this server
    "unknown_embodiment",  # no normalisation statistics for the sample's embodiment tag
    "overloaded",  # the server shed the request (queue full); retry after a backoff
    "internal",  # the model raised; the message says what
)
DEPTH_MODES = ("full", "adaptive", "none")  # MolmoThink modes a request may ask for
ErrorCode = Literal["bad_request", "unknown_version", "unknown_embodiment", "overloaded", "internal"]
Kind = Literal["infer", "ping"]


class ProtocolError(ValueError):
    """A message that does not follow this protocol; the text says which field and why."""


class RemotePolicyError(RuntimeError):
    """The server answered with an error."""

    def __init__(self, code: str, message: str):
        super().__init__(f"policy server error {code}: {message}")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------------- arrays


def pack_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    if a.dtype.str not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {a.dtype.str} not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack_array(d: object, what: str) -> np.ndarray:
    """An array record -> read-only numpy view of its bytes."""
    if not isinstance(d, dict) or not {"dtype", "shape", "data"} <= d.keys():
        raise ProtocolError(f"{what}: expected an array record with dtype, shape and data")
    dtype, shape, data = d["dtype"], d["shape"], d["data"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:  # a map or list here is not hashable
        raise ProtocolError(f"{what}: dtype {dtype!r:.40} not allowed")
    if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(f"{what}: bad shape {shape!r}")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ProtocolError(f"{what}: {nbytes} bytes exceeds the {MAX_ARRAY_BYTES} byte cap")
    if not isinstance(data, bytes) or len(data) != nbytes:
        raise ProtocolError(
            f"{what}: {len(data) if isinstance(data, bytes) else type(data).__name__} bytes do "
            f"not fill shape {shape} of {dtype}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------------------------------- messages


@dataclass
class InferRequest:
    kind: Kind
    robot: str
    sample: PolicySample | None = None  # infer only
    version: int | None = None  # weights version wanted; None: the server's champion
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent: float = 0.0  # client unix time
    depth_mode: str | None = None  # one of DEPTH_MODES; None: the server's default


@dataclass
class InferResponse:
    id: str
    ok: bool
    version: int = 0
    chunk: np.ndarray | None = None  # (H, A) float32, real units
    error_code: str = ""
    error_message: str = ""
    server_ms: float = 0.0

    def raise_for_error(self) -> None:
        if not self.ok:
            raise RemotePolicyError(self.error_code, self.error_message)


def _loads(blob: bytes, what: str) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_bin_len=MAX_ARRAY_BYTES * 2)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"{what}: not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"{what}: top level must be a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: protocol version {msg.get('v')!r}, this side speaks {PROTOCOL_VERSION}")
    return msg


def _str(msg: dict[str, Any], key: str, what: str, max_len: int = 256) -> str:
    v = msg.get(key)
    if not isinstance(v, str) or not 0 < len(v) <= max_len:
        raise ProtocolError(f"{what}.{key}: expected a string of 1..{max_len} characters, got {v!r:.80}")
    return v


def encode_request(req: InferRequest) -> bytes:
    msg: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "kind": req.kind,
        "id": req.id,
        "robot": req.robot,
        "version": req.version,
        "sent": float(req.sent),
    }
    if req.depth_mode is not None:
        msg["depth"] = req.depth_mode
    if req.kind == "infer":
        s = req.sample
        if s is None:
            raise ProtocolError("an infer request needs a sample")
        msg["sample"] = {
            "images": {cam: pack_array(np.asarray(img, dtype=np.uint8)) for cam, img in s.images.items()},
            "state": pack_array(np.asarray(s.state, dtype="<f4")),
            "instruction": s.instruction,
            "embodiment": s.embodiment,
        }
    return msgpack.packb(msg, use_bin_type=True)


def decode_request(blob: bytes) -> InferRequest:
    msg = _loads(blob, "request")
    kind = msg.get("kind")
    if kind not in ("infer", "ping"):
        raise ProtocolError(f"request.kind: {kind!r}, expected 'infer' or 'ping'")
    req_id = _str(msg, "id", "request", 64)
    robot = _str(msg, "robot", "request", 128)
    version = msg.get("version")
    if version is not None and (not isinstance(version, int) or version < 0):
        raise ProtocolError(f"request.version: {version!r}, expected a non-negative int or null")
    sample = None
    if kind == "infer":
        raw = msg.get("sample")
        if not isinstance(raw, dict) or not isinstance(raw.get("images"), dict) or not raw["images"]:
            raise ProtocolError("request.sample: expected a map with a non-empty images map")
        images = {}
        for cam, rec in raw["images"].items():
            img = unpack_array(rec, f"request.sample.images.{cam}")
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ProtocolError(
                    f"request.sample.images.{cam}: {img.shape} {img.dtype}, expected (H, W, 3) uint8"
                )
            images[str(cam)] = img
        state = unpack_array(raw.get("state"), "request.sample.state")
        if state.dtype != np.float32 or state.ndim != 1:
            raise ProtocolError(f"request.sample.state: {state.shape} {state.dtype}, expected (S,) float32")
        instruction = raw.get("instruction")
        if not isinstance(instruction, str):
            raise ProtocolError("request.sample.instruction: expected a string")
        sample = PolicySample(
            images=images,
            state=state,
            instruction=instruction,
            embodiment=_str(raw, "embodiment", "request.sample", 64),
        )
    depth_mode = msg.get("depth")
    if depth_mode is not None and depth_mode not in DEPTH_MODES:
        raise ProtocolError(f"request.depth: {depth_mode!r:.40}, expected one of {DEPTH_MODES} or absent")
    sent = msg.get("sent", 0.0)
    return InferRequest(
        kind=kind,
        robot=robot,
        sample=sample,
        version=version,
        id=req_id,
        sent=float(sent) if isinstance(sent, int | float) else 0.0,
        depth_mode=depth_mode,
    )


def encode_response(resp: InferResponse) -> bytes:
    msg: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": resp.id,
        "ok": resp.ok,
        "version": int(resp.version),
        "server_ms": float(resp.server_ms),
    }
    if resp.ok and resp.chunk is not None:
        msg["chunk"] = pack_array(np.asarray(resp.chunk, dtype="<f4"))
    if not resp.ok:
        if resp.error_code not in ERROR_CODES:
            raise ProtocolError(f"error code {resp.error_code!r} not in {ERROR_CODES}")
        msg["error"] = {"code": resp.error_code, "message": resp.error_message}
    return msgpack.packb(msg, use_bin_type=True)


def error_response(req_id: str, code: ErrorCode, message: str, version: int = 0) -> InferResponse:
    return InferResponse(id=req_id, ok=False, version=version, error_code=code, error_message=message)


def decode_response(blob: bytes) -> InferResponse:
    msg = _loads(blob, "response")
    resp_id = _str(msg, "id", "response", 64)
    ok = msg.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("response.ok: expected a bool")
    version = msg.get("version", 0)
    if not isinstance(version, int) or version < 0:
        raise ProtocolError(f"response.version: {version!r}, expected a non-negative int")
    server_ms = msg.get("server_ms", 0.0)
    resp = InferResponse(
        id=resp_id,
        ok=ok,
        version=version,
        server_ms=float(server_ms) if isinstance(server_ms, int | float) else 0.0,
    )
    if ok:
        if "chunk" in msg:
            chunk = unpack_array(msg["chunk"], "response.chunk")
            if chunk.dtype != np.float32 or chunk.ndim != 2:
                raise ProtocolError(f"response.chunk: {chunk.shape} {chunk.dtype}, expected (H, A) float32")
            resp.chunk = chunk
    else:
        err = msg.get("error")
        if not isinstance(err, dict):
            raise ProtocolError("response.error: expected a map for a failed response")
        resp.error_code = str(err.get("code", "internal"))
        resp.error_message = str(err.get("message", ""))
    return resp
