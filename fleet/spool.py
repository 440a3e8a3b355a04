"""The actor-side outbox: an episode is on local disk before anything else happens to it, and leaves the disk
only after the replay store acknowledged it (stored, already stored, or dead-lettered with its reason).

Files are written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves either the
whole episode or nothing; on restart whatever is left is re-sent, and the store's idempotent append makes a
resend of an already-stored episode a no-op. Delivery runs in one background thread, oldest first, with
exponential backoff while the store is unreachable.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from fleet.episode import Episode, encode_episode

log = logging.getLogger(__name__)

SUFFIX = ".episode"


class SpoolFull(RuntimeError):
    """The backlog reached its byte limit, or the disk under it is full: the store has been unreachable too long."""


class Spool:
    def __init__(
        self,
        directory: str | Path,
        deliver: Callable[[bytes], object],
        max_bytes: float = 4 << 30,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        chunk_steps: int = 32,
    ):
        """``deliver(blob)`` hands wire bytes to the store and returns once they are acknowledged; it raises
        (redis.RedisError, OSError, TimeoutError) when the store is unreachable."""
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.deliver = deliver
        self.max_bytes = max_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.chunk_steps = chunk_steps
        self.delivered = 0
        self.failures = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._lock = threading.Lock()
        for tmp in self.dir.glob("*.tmp"):  # a crash mid-write: the episode was never acknowledged to anyone
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ writer side

    def put(self, episode: Episode | bytes) -> Path:
        """Durably record an episode; returns once it is on disk. Raises SpoolFull beyond the byte limit or
        when the disk is full (nothing already spooled is touched)."""
        blob = encode_episode(episode, self.chunk_steps) if isinstance(episode, Episode) else episode
        if self.backlog_bytes() + len(blob) > self.max_bytes:
            raise SpoolFull(
                f"spool {self.dir} holds {self.backlog_bytes() / 1e6:.1f} MB, limit "
                f"{self.max_bytes / 1e6:.1f} MB: the replay store has been unreachable "
                f"({self.last_error or 'no error seen'})"
            )
        with self._lock:
            self._seq += 1
            # time-ordered names: delivery goes oldest first, also across restarts
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{SUFFIX}"
        final = self.dir / name
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)  # half an episode is none: do not leave it taking the space
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(
                    f"spool {self.dir}: the disk is full ({e.strerror}) with "
                    f"{self.backlog_bytes() / 1e6:.1f} MB not yet delivered: the replay store has "
                    f"been unreachable ({self.last_error or 'no error seen'})"
                ) from e
            raise
        os.replace(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._wake.set()
        return final

    def pending(self) -> list[Path]:
        return sorted(self.dir.glob(f"*{SUFFIX}"))

    def backlog_bytes(self) -> int:
        total = 0
        for p in self.pending():
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # delivered meanwhile
                pass
        return total

    # ------------------------------------------------------------------------------------------ delivery

    def flush_once(self) -> int:
        """Try to deliver everything pending once; returns how many were delivered. Raises on store errors."""
        n = 0
        for path in self.pending():
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                continue
            self.deliver(blob)
            path.unlink(missing_ok=True)
            self.delivered += 1
            n += 1
        return n

    def start(self) -> Spool:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"spool-{self.dir.name}", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        delay = self.retry_initial_s
        while not self._stop.is_set():
            try:
                self.flush_once()
                delay = self.retry_initial_s
                self._wake.wait(1.0)
                self._wake.clear()
            except (redis.RedisError, OSError, TimeoutError) as e:
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning(
                    "spool %s: store unreachable (%s); %d pending, retry in %.1f s",
                    self.dir,
                    self.last_error,
                    len(self.pending()),
                    delay,
                )
                self._stop.wait(delay)
                delay = min(self.retry_max_s, delay * 2)
            except Exception as e:  # anything else must not end delivery silently: log it, back off, go on
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("spool %s: delivery failed; retry in %.1f s", self.dir, delay)
                self._stop.wait(delay)
                delay = min(self.retry_max_s, delay * 2)

    def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending; True if drained in time."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, drain_s: float = 0.0) -> None:
        if drain_s > 0:
            self.drain(drain_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
