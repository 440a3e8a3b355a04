"""What the replay benchmarks share: a realistic episode encoded once before timing, a bench Redis, the raw
stream layout the baselines use, and the machine's physical limits (loopback bytes/s, Redis SET ops/s).

The episode is a yam_bimanual one: 3 cameras at 224x224, 30 Hz, 300 steps, 14-dim state and action. Frames are
a smooth synthetic scene (lit table with grain, three moving objects with soft shadows, sensor noise) JPEG-encoded
at quality 90, which lands at the ~10-20 KB per frame real 224x224 camera frames have. Every timed episode reuses
the encoded frames; only its id and times change, patched in place, so the timing measures the store, not the
encoder or a copy.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import redis

from fleet.episode import EmbodimentSchema, Episode, EpisodeMeta, encode_episode, parse_encoded
from fleet.redis_server import EmbeddedRedis, find_redis_server

EMBODIMENT = EmbodimentSchema(
    name="yam_bimanual", state_dim=14, action_dim=14, cameras=("top", "left_wrist", "right_wrist")
)
SCHEMAS = {EMBODIMENT.name: EMBODIMENT}
LOW_FIELDS = ("state", "action", "intervention", "timestamp")
RAW_PREFIX = "raw"  # baseline streams: raw:{episode id}, one entry per step, entry id 0-{step + 1}


# ----------------------------------------------------------------------------------------------- episode


def scene_frames(camera: int, steps: int, size: int, seed: int, loop: int = 60) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a smooth scene seen by one camera; the motion repeats every ``loop`` steps
    (rendering is the slow part of building the template, and JPEG sizes do not depend on the loop)."""
    rng = np.random.default_rng(seed * 31 + camera)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    table = np.stack([0.45 + 0.25 * xx, 0.38 + 0.15 * yy, 0.30 + 0.20 * (1 - xx) * yy], -1) * 255
    table += (10 * np.sin(45 * yy + 5 * np.sin(4 * xx + camera)))[
        ..., None
    ]  # wood grain: low-frequency texture
    table[yy < 0.18] = (70, 80, 95)  # back wall: a hard edge, as real scenes have
    colours = np.array([[205, 45, 40], [40, 165, 70], [55, 65, 210]], np.float32)
    rendered = np.empty((min(loop, steps), size, size, 3), np.uint8)
    for t in range(len(rendered)):
        phase = 2 * np.pi * t / len(rendered)
        img = table.copy()
        for k, colour in enumerate(colours):
            cx = 0.5 + 0.28 * np.cos(phase + 2.1 * k + camera)
            cy = 0.55 + 0.22 * np.sin(phase + k)
            d2 = (xx - cx) ** 2 + (yy - cy) ** 2
            shadow = np.exp(-((xx - cx - 0.03) ** 2 + (yy - cy - 0.03) ** 2) / 0.008)[..., None]
            img *= 1 - 0.35 * shadow
            body = (d2 < 0.06**2)[..., None]  # a hard-edged object...
            img = np.where(body, colour * (1.1 - 2.5 * np.sqrt(d2)[..., None]), img)  # ...with shading
        img += rng.normal(0, 6.0, img.shape).astype(np.float32)  # sensor noise: most of a JPEG's bytes
        rendered[t] = np.clip(img, 0, 255).astype(np.uint8)
    return rendered[np.arange(steps) % len(rendered)]


def realistic_episode(steps: int = 300, size: int = 224, fps: float = 30.0, seed: int = 0) -> Episode:
    t = np.arange(steps, dtype=np.float64) / fps
    joints = np.sin(t[:, None] * 0.7 + np.arange(EMBODIMENT.state_dim)).astype(
        np.float32
    )  # smooth trajectory
    now = time.time()
    meta = EpisodeMeta(
        robot_id="yam-bench-01",
        embodiment=EMBODIMENT.name,
        task="fold_towel",
        instruction="fold the towel in half",
        policy_version=1,
        fps=fps,
        success=True,
        duration_s=steps / fps,
        start_time=now - steps / fps,
        end_time=now,
        seed=seed,
    )
    return Episode(
        meta=meta,
        images={c: scene_frames(k, steps, size, seed) for k, c in enumerate(EMBODIMENT.cameras)},
        state=joints,
        action=np.roll(joints, -1, axis=0),
        intervention=np.zeros(steps, bool),
        timestamp=t,
    )


@dataclass
class EpisodeTemplate:
    """One realistic episode, pre-encoded: wire bytes for the store, per-step fields for the raw baseline."""

    blob: bytes  # wire format (fleet.episode), JPEG frames
    steps: list[dict[str, bytes]]  # per step: camera -> JPEG bytes, low field -> raw array bytes
    payload_bytes: int  # JPEG + low-dim array bytes of one episode: what both sides store
    id_offset: int  # where the 32-char hex episode id sits in ``blob``
    time_offsets: tuple[int, int]  # where start_time / end_time (msgpack float64) sit in ``blob``
    chunk_steps: int

    @property
    def num_steps(self) -> int:
        return len(self.steps)


def build_template(
    steps: int = 300, size: int = 224, chunk_steps: int = 32, seed: int = 0
) -> EpisodeTemplate:
    """Encode one realistic episode (JPEG) and split it into the raw baseline's per-step fields."""
    ep = realistic_episode(steps, size, seed=seed)
    blob = encode_episode(ep, chunk_steps=chunk_steps, image_encoding="jpeg")
    enc = parse_encoded(blob)
    frames: dict[str, list[bytes]] = {c: [] for c in enc.cameras}
    for chunk in enc.chunks:
        for cam, fs in msgpack.unpackb(chunk)["cams"].items():
            frames[cam] += fs
    rows = [
        {
            **{c: frames[c][i] for c in frames},
            **{k: np.ascontiguousarray(enc.low[k][i]).tobytes() for k in LOW_FIELDS},
        }
        for i in range(steps)
    ]
    payload = sum(len(v) for row in rows for v in row.values())
    eid = ep.meta.episode_id.encode()
    assert blob.count(eid) == 1 and len(eid) == 32
    offsets = tuple(
        blob.index(b"%c%s\xcb" % (0xA0 + len(k), k)) + len(k) + 2 for k in (b"start_time", b"end_time")
    )
    return EpisodeTemplate(blob, rows, payload, blob.index(eid), offsets, chunk_steps)  # type: ignore[arg-type]


class EpisodeStamper:
    """Fresh episodes from a template: a new id and end time patched into one reused buffer (no copy)."""

    def __init__(self, template: EpisodeTemplate, writer: int):
        self.t = template
        self.buf = bytearray(template.blob)
        self.writer = writer
        self.n = 0

    def next(self) -> tuple[str, bytearray]:
        eid = f"{self.writer:04x}{self.n:012x}{uuid.uuid4().hex[:16]}"
        self.n += 1
        now = time.time()
        o = self.t.id_offset
        self.buf[o : o + 32] = eid.encode()
        s, e = self.t.time_offsets
        dur = self.t.num_steps / 30.0
        self.buf[s : s + 8] = struct.pack(">d", now - dur)
        self.buf[e : e + 8] = struct.pack(">d", now)
        return eid, self.buf


def raw_write(pipe: redis.client.Pipeline, template: EpisodeTemplate, episode_id: str) -> None:
    """Queue the baseline's writes of one episode: one XADD per step into its own stream."""
    key = f"{RAW_PREFIX}:{episode_id}"
    for i, fields in enumerate(template.steps):
        pipe.xadd(key, fields, id=f"0-{i + 1}")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- redis


@contextlib.contextmanager
def bench_redis(aof: bool) -> Iterator[EmbeddedRedis]:
    """A fresh embedded redis-server in a temp dir, stopped and removed on exit, SIGTERM or Ctrl-C."""
    tmp = Path(tempfile.mkdtemp(prefix="molmofleet-bench-"))
    # AOF off by default: fsyncing GBs of frames measures the disk, and both sides would pay it the same
    extra = [] if aof else ["--appendonly", "no"]
    server = EmbeddedRedis(tmp / "redis", extra_args=extra)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with server:
            yield server
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the redis-server process has used (user + sys, all its threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB: VmHWM, which (unlike ru_maxrss) is not inherited from the
    parent a spawned process was forked from, and restarts at reset_peak_rss()."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Restart the peak at the current RSS (Linux >= 4.0), so a phase reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# ----------------------------------------------------------------------------------------------- limits


def machine_load() -> str:
    """Load average and CPU pressure: how much of the machine other work is taking right now."""
    some = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        some = Path("/proc/pressure/cpu").read_text().split()[1].split("=")[1]  # "some avg10=NN.NN"
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" + (
        f", CPU pressure {some}%" if some else ""
    )


def loopback_bytes_per_s(seconds: float = 1.0, block: int = 1 << 20) -> float:
    """TCP loopback throughput with a raw socket: the ceiling for any client-server byte stream here."""
    srv = socket.create_server(("127.0.0.1", 0))
    received = [0]

    def sink() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(block):
                received[0] += len(data)

    th = threading.Thread(target=sink, daemon=True)
    th.start()
    payload = b"\0" * block
    with socket.create_connection(srv.getsockname()) as c:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        th.join()
        dt = time.perf_counter() - t0
    srv.close()
    return received[0] / dt


def redis_set_ops(server: EmbeddedRedis, value_bytes: int, requests: int, pipeline: int = 16) -> float:
    """SET requests/s from redis-benchmark (C client, 50 connections, 4096 random keys) against ``server``;
    nan without the tool."""
    tool = Path(find_redis_server()).with_name("redis-benchmark")
    if not tool.exists():
        tool = Path(shutil.which("redis-benchmark") or "/nonexistent")
    if not tool.exists():
        return float("nan")
    env = {**os.environ, "REDISCLI_AUTH": server.password}
    out = subprocess.run(
        [
            str(tool),
            "-p",
            str(server.port),
            "-a",
            server.password,
            "-t",
            "set",
            "-q",
            "-d",
            str(value_bytes),
            "-n",
            str(requests),
            "-P",
            str(pipeline),
            "-r",
            "4096",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    ).stdout
    last = out.replace("\r", "\n").strip().splitlines()[-1]  # "SET: 123456.78 requests per second, p50=..."
    server.client().flushall()
    return float(last.split()[1])
