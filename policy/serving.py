"""`PolicyServer`: many robots, one batched MolmoAct2 server over ZeroMQ (the one socket policy/ may own).

Wire: a ROUTER socket speaking `policy/protocol.py` (msgpack, one frame per request and per response) to the
actors' `RemotePolicyClient` (DEALER), optionally under CURVE (the caller passes the server's secret key bytes
and, for an allow-list, runs a ZAP handler on the context it passes in; see fleet/curve.py).

Threads:
- the socket thread owns the ROUTER: it decodes and checks each request, answers pings and errors at once,
  and queues inference work; it also sends the responses the model thread hands back (over an inproc pipe,
  since a ZeroMQ socket belongs to one thread).
- the model thread forms batches (up to `max_batch` requests, waiting at most `max_wait_ms` after the first),
  splits them by weights version, and runs MolmoThink with each robot's depth cache.

Nothing is dropped silently: a malformed, oversized, replayed or unroutable request gets an error response
with the request id when one can be read, and the server keeps serving. A retried request (same robot and
id, later send time: what `RemotePolicyClient` does after a timeout) is computed once; its answer goes to the
newest socket. A message with the same id *and* send time as one already received is a replay and is refused.

Versions (`policy/serving_versions.py`) are added, promoted and retired while requests flow; routing is
per request (`version` field), else per robot (`assign`), else the champion.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import msgpack
import numpy as np
import torch
import zmq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.molmothink import DepthMode, ThinkCache, ThinkConfig
from policy.processor import PolicySample
from policy.protocol import (
    InferResponse,
    ProtocolError,
    decode_request,
    encode_response,
    error_response,
)
from policy.serving_metrics import MetricsEndpoint, ServingMetrics
from policy.serving_versions import PolicyVersions, ServedVersion

log = logging.getLogger(__name__)


class PolicyServerConfig(BaseModel):
    """Everything about serving; the model and its weights come separately."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # interface the ROUTER binds ("0.0.0.0": every interface)
    port: int = Field(5560, ge=0, le=65535)  # ROUTER port; 0 picks a free one (see `PolicyServer.address`)
    metrics_port: int | None = Field(None, ge=0, le=65535)  # HTTP /metrics + /healthz; None: no endpoint
    max_batch: int = Field(8, ge=1)  # requests per model call (1 = no batching)
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first request of a batch waits for company
    active_window_s: float = Field(1.0, gt=0)  # robots heard from this recently are the company worth
    # waiting for: once each has a request in the batch, it goes without waiting out max_wait_ms
    max_queue: int = Field(256, ge=1)  # waiting requests beyond which new ones are answered "overloaded"
    max_request_bytes: int = Field(16 << 20, ge=1024)  # larger messages are refused unread ("bad_request")
    think: ThinkConfig = ThinkConfig()  # change threshold and the default depth mode
    cache_robots: int = Field(4096, ge=1)  # robots whose MolmoThink cache is kept (least recently used go)
    replay_window: int = Field(
        4096, ge=16
    )  # recent request ids remembered (retries answered once, replays refused)
    drain_s: float = Field(2.0, ge=0)  # on stop, how long queued requests may still be served
    seed: int = 0  # flow-matching noise of the server's generator

    @model_validator(mode="after")
    def _check(self) -> PolicyServerConfig:
        if self.max_queue < self.max_batch:
            raise ValueError(
                f"max_queue={self.max_queue} is below max_batch={self.max_batch}: a batch could never fill; "
                "raise max_queue"
            )
        return self


@dataclass
class _Work:
    robot: str
    id: str
    sample: PolicySample
    version: int | None  # asked for (None: assignment or champion, resolved when the batch forms)
    mode: DepthMode
    arrived: float  # time.monotonic()
    identity: bytes  # ROUTER identity it came from (the reply goes to the newest one for this id)


@dataclass
class _Seen:
    sent: float  # client send time of the newest copy of this request
    identity: bytes  # where its answer goes
    answer: bytes | None = None  # the encoded response once computed (a later retry is answered from it)


def best_effort_id(blob: bytes) -> str:
    """The request id of a message that failed to decode, when the top-level map still yields one."""
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(blob) + 1, max_str_len=1024)
        unpacker.feed(blob)
        for _ in range(min(unpacker.read_map_header(), 16)):
            key = unpacker.unpack()
            if key == "id":
                value = unpacker.unpack()
                return value if isinstance(value, str) and 0 < len(value) <= 64 else "unknown"
            unpacker.skip()
    except Exception:  # any garbage: there is no id to echo
        pass
    return "unknown"


class PolicyServer:
    """Batched multi-version MolmoAct2 inference for many robots. `start()` binds; `stop()` drains and closes."""

    def __init__(
        self,
        policy: MolmoAct2Policy,
        config: PolicyServerConfig | None = None,
        *,
        version: int = 0,
        curve_secret_key: bytes | None = None,
        zap_domain: str = "molmofleet",
        context: zmq.Context | None = None,
    ) -> None:
        self.config = cfg = config or PolicyServerConfig()
        if curve_secret_key is not None and (len(curve_secret_key) != 40 or not zmq.has("curve")):
            raise ValueError("curve_secret_key must be a 40-byte Z85 key, with a libzmq built with CURVE")
        self.versions = PolicyVersions(policy, version, cfg.think)
        self.metrics = ServingMetrics()
        self._curve_secret = curve_secret_key
        self._zap_domain = zap_domain
        self._ctx = context or zmq.Context.instance()
        self._queue: queue.Queue[_Work] = queue.Queue()
        self._caches: OrderedDict[str, ThinkCache] = OrderedDict()  # robot -> cache (model thread only)
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()  # (robot, id) -> (socket thread only)
        self._heard: OrderedDict[str, float] = (
            OrderedDict()
        )  # robot -> last request, monotonic s (socket thread)
        self._pipe = f"inproc://policy-server-{uuid.uuid4().hex}"
        self._draining = threading.Event()
        self._model_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._endpoint: MetricsEndpoint | None = None
        self._generator: torch.Generator | None = None  # flow noise, made at start on the policy's device
        self._started = 0.0
        self.address = ""
        self.served = 0
        self._refresh_version_gauges()

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> PolicyServer:
        cfg = self.config
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        if self._curve_secret is not None:
            router.curve_secretkey = self._curve_secret
            router.curve_publickey = zmq.curve_public(self._curve_secret)
            router.zap_domain = self._zap_domain.encode()
            router.curve_server = True
        if cfg.port:
            router.bind(f"tcp://{cfg.host}:{cfg.port}")
            port = cfg.port
        else:
            port = router.bind_to_random_port(f"tcp://{cfg.host}")
        self.address = f"tcp://{cfg.host}:{port}"
        pull = self._ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(self._pipe)
        self._generator = torch.Generator(device=self.versions.base.device).manual_seed(cfg.seed)
        if cfg.metrics_port is not None:
            self._endpoint = MetricsEndpoint(self.metrics, self.health, cfg.host, cfg.metrics_port)
        self._started = time.time()
        self._threads = [
            threading.Thread(
                target=self._socket_loop, args=(router, pull), name="policy-sockets", daemon=True
            ),
            threading.Thread(target=self._model_loop, name="policy-model", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info(
            "policy server on %s (versions %s, champion %d)",
            self.address,
            self.versions.loaded(),
            self.versions.champion,
        )
        return self

    def stop(self) -> None:
        """Refuse new work, serve what is queued (up to `drain_s`), then close the sockets. Idempotent."""
        self._draining.set()
        for t in self._threads:
            t.join(self.config.drain_s + 10)
        self._threads = []
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def metrics_port(self) -> int | None:
        return self._endpoint.port if self._endpoint is not None else None

    # ---- versions ------------------------------------------------------------------------------------------
    def load_version(self, version: int, trainable_bytes: bytes, champion: bool = False) -> None:
        """Add a version from its trainable-weights blob while serving; `champion=True` also promotes it."""
        self.versions.load(version, trainable_bytes, champion)
        self._refresh_version_gauges()

    def set_champion(self, version: int) -> None:
        self.versions.set_champion(version)
        self._refresh_version_gauges()

    def retire_version(self, version: int) -> None:
        self.versions.retire(version)
        self._refresh_version_gauges()

    def assign(self, robot: str, version: int | None) -> None:
        """Serve `robot` from `version` when its requests name none (a canary cohort); None: the champion."""
        self.versions.assign(robot, version)

    def _refresh_version_gauges(self) -> None:
        self.metrics.versions_loaded.set(len(self.versions.loaded()))
        self.metrics.champion_version.set(self.versions.champion)

    def cache_of(self, robot: str) -> ThinkCache | None:
        """The robot's MolmoThink cache (what its next adaptive call compares with)."""
        return self._caches.get(robot)

    def health(self) -> dict:
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        return {
            "status": "ok" if alive and not self._draining.is_set() else "stopping" if alive else "down",
            "address": self.address,
            "versions": self.versions.loaded(),
            "champion": self.versions.champion,
            "queue": self._queue.qsize(),
            "robots": len(self._caches),
            "served": self.served,
            "uptime_s": round(time.time() - self._started, 1) if self._started else 0.0,
        }

    # ---- socket thread -------------------------------------------------------------------------------------
    def _socket_loop(self, router: zmq.Socket, pull: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        try:
            while not self._model_done.is_set():
                events = dict(poller.poll(50))
                if pull in events:
                    self._deliver_all(router, pull)
                if router in events:
                    for _ in range(256):  # bounded, so answers keep flowing under a flood
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self._intake(router, frames)
                        except Exception as e:  # a request must never take the socket thread down
                            log.exception("policy server: request intake failed")
                            msg = f"{type(e).__name__}: {e}"[:300]
                            self._reply(router, frames[0], error_response("unknown", "internal", msg))
            self._deliver_all(router, pull)  # the model thread's last answers
        finally:
            router.close(linger=0)
            pull.close(linger=0)

    def _reply(self, router: zmq.Socket, identity: bytes, resp: InferResponse) -> None:
        self.metrics.requests.labels(resp.error_code or "ok").inc()
        router.send_multipart([identity, encode_response(resp)])

    def _deliver_all(self, router: zmq.Socket, pull: zmq.Socket) -> None:
        while True:
            try:
                identity, robot, req_id, payload = pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            seen = self._seen.get((robot.decode(), req_id.decode()))
            if seen is not None:  # a retry may have moved the request to a newer socket
                seen.answer, identity = payload, seen.identity
            router.send_multipart([identity, payload])

    def _intake(self, router: zmq.Socket, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        if len(body) != 1:
            self._reply(
                router,
                identity,
                error_response("unknown", "bad_request", f"expected 1 frame, got {len(body)}"),
            )
            return
        blob = body[0]
        if len(blob) > self.config.max_request_bytes:
            msg = f"request of {len(blob)} bytes exceeds the server's {self.config.max_request_bytes} byte limit"
            self._reply(router, identity, error_response(best_effort_id(blob), "bad_request", msg))
            return
        try:
            req = decode_request(blob)
        except ProtocolError as e:
            self._reply(router, identity, error_response(best_effort_id(blob), "bad_request", str(e)))
            return
        served = self.versions.resolve(req.robot, req.version)
        if served is None:
            msg = f"version {req.version} is not loaded (loaded: {self.versions.loaded()})"
            self._reply(router, identity, error_response(req.id, "unknown_version", msg))
            return
        if req.kind == "ping":
            self._reply(router, identity, InferResponse(id=req.id, ok=True, version=served.version))
            return
        sample = req.sample
        assert sample is not None  # decode_request guarantees a sample on infer
        problem = self._check_sample(served, sample)
        if problem is not None:
            self._reply(router, identity, error_response(req.id, problem[0], problem[1]))
            return
        key, sent = (req.robot, req.id), req.sent if math.isfinite(req.sent) else 0.0
        seen = self._seen.get(key)
        if seen is not None:
            if sent <= seen.sent:
                self.metrics.duplicates.labels("replay").inc()
                msg = f"replayed request: robot {req.robot!r} already sent id {req.id!r} at this send time"
                self._reply(router, identity, error_response(req.id, "bad_request", msg))
                return
            self.metrics.duplicates.labels("retry").inc()
            seen.sent, seen.identity = sent, identity
            if seen.answer is not None:  # computed already: the first answer went to a socket now closed
                router.send_multipart([identity, seen.answer])
                self.metrics.requests.labels("ok").inc()
            return  # else: still queued; the answer will go to this newer socket
        if self._draining.is_set() or self._queue.qsize() >= self.config.max_queue:
            why = "the server is shutting down" if self._draining.is_set() else "the request queue is full"
            self._reply(router, identity, error_response(req.id, "overloaded", why))
            return
        self._seen[key] = _Seen(sent, identity)
        while len(self._seen) > self.config.replay_window:
            self._seen.popitem(last=False)
        mode = req.depth_mode or self.config.think.mode
        now = time.monotonic()
        self._heard[req.robot] = now
        self._heard.move_to_end(req.robot)
        while self._heard and next(iter(self._heard.values())) < now - self.config.active_window_s:
            self._heard.popitem(last=False)
        self._queue.put(_Work(req.robot, req.id, sample, req.version, mode, now, identity))
        self.metrics.queue_depth.set(self._queue.qsize())

    def _check_sample(self, served: ServedVersion, s: PolicySample) -> tuple[str, str] | None:
        """Refuse at the door what would fail inside a batch (and take its neighbours down with it)."""
        policy = served.policy
        if s.embodiment not in policy.norm_stats.metadata_by_tag:
            return "unknown_embodiment", f"no normalisation statistics for {s.embodiment!r}"
        meta = policy.norm_stats[s.embodiment]
        if not 1 <= len(s.images) <= policy.config.max_cameras:
            return "bad_request", f"{len(s.images)} cameras; the model takes 1..{policy.config.max_cameras}"
        if s.state.shape != (meta.state_dim,):
            return (
                "bad_request",
                f"state of shape {s.state.shape}; {s.embodiment!r} has {meta.state_dim} dims",
            )
        if not np.isfinite(s.state).all():
            return "bad_request", "state holds NaN or infinity"
        if any(min(img.shape[:2]) < 1 for img in s.images.values()):
            return "bad_request", "an image has no pixels"
        return None

    # ---- model thread --------------------------------------------------------------------------------------
    def _model_loop(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(self._pipe)
        deadline = None
        try:
            while True:
                if self._draining.is_set():
                    deadline = deadline or time.monotonic() + self.config.drain_s
                    if self._queue.empty() or time.monotonic() > deadline:
                        break
                batch = self._next_batch()
                try:
                    self._run(batch, push)
                except Exception as e:  # a bug must cost this batch, not the server
                    log.exception("policy server: batch failed")
                    for w in batch:
                        self._send(
                            push, w, error_response(w.id, "internal", f"{type(e).__name__}: {e}"[:300])
                        )
            while True:  # past the drain deadline: whatever is left is told to retry elsewhere
                try:
                    w = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._send(push, w, error_response(w.id, "overloaded", "the server is shutting down"))
        finally:
            push.close()
            self._model_done.set()

    def _next_batch(self) -> list[_Work]:
        try:
            first = self._queue.get(timeout=0.05)
        except queue.Empty:
            return []
        items, deadline = [first], first.arrived + self.config.max_wait_ms / 1000
        while len(items) < self.config.max_batch:
            left = deadline - time.monotonic()
            if left > 0 and len({w.robot for w in items}) >= len(self._heard):
                left = 0  # every robot heard from lately is in: nobody else to wait for
            try:  # past the deadline, still take what is already waiting (the thread was busy)
                items.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        self.metrics.queue_depth.set(self._queue.qsize())
        return items

    def _send(self, push: zmq.Socket, w: _Work, resp: InferResponse) -> None:
        resp.server_ms = (time.monotonic() - w.arrived) * 1000
        self.metrics.requests.labels(resp.error_code or "ok").inc()
        push.send_multipart([w.identity, w.robot.encode(), w.id.encode(), encode_response(resp)])

    def _run(self, items: list[_Work], push: zmq.Socket) -> None:
        """Split by version, then so each robot appears once per model call (its cache is sequential)."""
        groups: dict[int, tuple[ServedVersion, list[list[_Work]]]] = {}
        for w in items:
            served = self.versions.resolve(w.robot, w.version)
            if served is None:  # retired while the request waited
                msg = f"version {w.version} is no longer loaded (loaded: {self.versions.loaded()})"
                self._send(push, w, error_response(w.id, "unknown_version", msg))
                continue
            calls = groups.setdefault(served.version, (served, []))[1]
            target = next((c for c in calls if all(o.robot != w.robot for o in c)), None)
            if target is None:
                calls.append(target := [])
            target.append(w)
        for served, calls in groups.values():
            for call in calls:
                self._infer(served, call, push)

    def _infer(self, served: ServedVersion, call: list[_Work], push: zmq.Socket) -> None:
        started = time.monotonic()
        caches = [self._caches.get(w.robot) for w in call]
        try:
            out = served.think.infer(
                [w.sample for w in call],
                caches,
                [w.mode for w in call],
                self._generator,
                version=served.version,
            )
        except Exception as e:
            if len(call) > 1:  # find the culprit: every other request still gets its chunk
                for w in call:
                    self._infer(served, [w], push)
                return
            log.exception("inference failed for robot %s", call[0].robot)
            code = "bad_request" if isinstance(e, ValueError) else "internal"
            self._send(push, call[0], error_response(call[0].id, code, f"{type(e).__name__}: {e}"[:500]))
            return
        m, cells = self.metrics, served.think.num_cells
        m.batch_size.observe(len(call))
        m.observe_stages(out.timings, len(call))
        for w, chunk, cache, redone, mode in zip(
            call, out.actions, out.caches, out.repredicted, (w.mode for w in call), strict=True
        ):
            if cache is not None:
                self._caches[w.robot] = cache
                self._caches.move_to_end(w.robot)
            if mode != "none":
                m.depth_cells.labels("repredicted").inc(redone)
                m.depth_cells.labels("replayed").inc(cells - redone)
            m.stage_seconds.labels("queue").observe(started - w.arrived)
            m.stage_seconds.labels("total").observe(time.monotonic() - w.arrived)
            m.chunks.labels(str(served.version)).inc()
            self.served += 1  # before the answer leaves: whoever reads the answer sees the count
            self._send(push, w, InferResponse(id=w.id, ok=True, version=served.version, chunk=chunk))
        while len(self._caches) > self.config.cache_robots:
            self._caches.popitem(last=False)
        m.robots.set(len(self._caches))
