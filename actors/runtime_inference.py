"""The actor's inference thread: computes the next chunk while the control loop executes the current one, and
applies policy hot swaps between two chunks.

One request is in flight at a time. The control thread submits (sample, first step, epoch) and polls for the
result without blocking; the epoch lets it discard a chunk computed for a world that has since changed (an
episode reset, a supervisor takeover). A swap requested from any thread is applied by this thread before it
starts the next chunk: the chunk being computed finishes on the old weights, the next one uses the new ones,
and the control loop never waits for either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.policy_client import PolicyClient
from policy.processor import PolicySample

log = logging.getLogger(__name__)

SwapTarget = PolicyClient | Mapping[str, Any] | bytes | None


@dataclass(frozen=True)
class ChunkResult:
    """A finished request: the chunk (None on error), for which step and epoch, from which version."""

    chunk: np.ndarray | None  # (H, A) float32
    first_step: int  # control step whose observation it was predicted from
    epoch: int
    version: int  # weights version that produced it
    latency_s: float  # submit to result
    error: str = ""


class ChunkWorker:
    """Owns the policy client; everything that touches the client runs on this worker's thread."""

    def __init__(
        self, client: PolicyClient, action_dim: int, name: str = "inference", error_backoff_s: float = 0.05
    ):
        self._client = client
        self.action_dim = action_dim  # a chunk of another width is refused here, not on the control thread
        self._cv = threading.Condition()
        self._request: tuple[PolicySample, int, int, float] | None = None
        self._result: ChunkResult | None = None
        self._busy = False
        self._swap: tuple[SwapTarget, int, Future] | None = None
        self._stop = False
        self.error_backoff_s = (
            error_backoff_s  # after a failed chunk, wait this long (doubling) before the next
        )
        self._failures_in_row = 0
        self.chunks = 0
        self.errors = 0
        self.swaps = 0
        self.last_error = ""
        self._latencies: deque[float] = deque(maxlen=512)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ control thread

    @property
    def busy(self) -> bool:
        """A request is queued or being computed, or its result has not been collected yet."""
        with self._cv:
            return self._busy or self._request is not None or self._result is not None

    @property
    def version(self) -> int:
        return self._client.version

    @property
    def client(self) -> PolicyClient:
        """The client running now (for `sample_from` on the control thread; `infer` stays on this thread)."""
        return self._client

    def submit(self, sample: PolicySample, first_step: int, epoch: int) -> bool:
        """Queue a request; False (and nothing queued) if one is already in flight."""
        with self._cv:
            if self._busy or self._request is not None or self._result is not None or self._stop:
                return False
            self._request = (sample, first_step, epoch, time.perf_counter())
            self._cv.notify_all()
            return True

    def poll(self) -> ChunkResult | None:
        """The finished result, if any (never blocks)."""
        with self._cv:
            res, self._result = self._result, None
            return res

    def wait(self, timeout_s: float) -> ChunkResult | None:
        """Block until the in-flight request finishes (first chunk of an episode; synchronous mode)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._result is None and (self._busy or self._request is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            res, self._result = self._result, None
            return res

    def drain(self, timeout_s: float) -> bool:
        """Wait for the in-flight request to finish and drop its result (before resetting the world)."""
        res = self.wait(timeout_s)
        return res is not None or not self.busy

    # ------------------------------------------------------------------------------------ any thread

    def swap(self, target: SwapTarget, version: int) -> Future:
        """Schedule a swap for the next chunk boundary; returns at once.

        target: a PolicyClient to replace the current one, tensors (a mapping, or trainable-weights bytes) for
        the current client's ``load_weights``, or None to ``route`` the current (remote) client to ``version``. The future resolves,
        once applied, to the client the worker let go of (the previous one for a client swap, else None); the
        caller owns it (close it, or keep it as the standby for the next swap). A swap superseded before it was
        applied resolves to its own client. It fails with the client's error if loading failed.
        """
        fut: Future = Future()
        with self._cv:
            superseded, self._swap = self._swap, (target, version, fut)
            self._cv.notify_all()
        if superseded is not None:  # resolved outside the lock: its callbacks may call back into the actor
            old_target, _, old_fut = superseded
            old_fut.set_result(old_target if isinstance(old_target, PolicyClient) else None)
        return fut

    def latency_ms(self) -> tuple[float, float]:
        """(p50, p99) chunk latency over recent requests, ms."""
        lat = np.fromiter(self._latencies, np.float64) * 1e3 if self._latencies else np.zeros(1)
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (after the chunk being computed) and close the client."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        with self._cv:
            pending, self._swap = self._swap, None
        if pending is not None:  # never applied: hand its client back to the caller
            target, _, fut = pending
            fut.set_result(target if isinstance(target, PolicyClient) else None)
        if not self._thread.is_alive():
            self._client.close()
        else:
            log.warning("inference thread still busy after %.1f s; leaving its client open", timeout_s)

    # ------------------------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and self._request is None and self._swap is None:
                    self._cv.wait()
                if self._stop:
                    return
                swap, self._swap = self._swap, None
                request = self._request
                if request is not None:
                    self._request = None
                    self._busy = True
            if swap is not None:
                self._apply_swap(*swap)
            if request is not None:
                result = self._infer(*request)
                with self._cv:
                    self._busy = False
                    self._result = result
                    self._cv.notify_all()
                if result.error:
                    time.sleep(min(1.0, self.error_backoff_s * 2 ** min(self._failures_in_row, 5)))

    def _apply_swap(self, target: SwapTarget, version: int, fut: Future) -> None:
        try:
            if isinstance(target, PolicyClient):
                previous, self._client = self._client, target
                if target.version != version:
                    target.version = version
                released: PolicyClient | None = previous
            elif target is None:
                self._client.route(version)
                released = None
            else:
                self._client.load_weights(target, version)
                released = None
        except Exception as e:  # a bad version must not kill the inference thread: keep the old policy
            log.error(
                "hot swap to version %d failed, keeping version %d: %s", version, self._client.version, e
            )
            fut.set_exception(e)
            return
        self.swaps += 1
        log.info("policy swapped to version %d", version)
        fut.set_result(released)

    def _infer(self, sample: PolicySample, first_step: int, epoch: int, submitted: float) -> ChunkResult:
        version = self._client.version
        try:
            chunk = np.asarray(self._client.infer(sample), dtype=np.float32)
            version = self._client.version  # a remote server reports the version that actually answered
            if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != self.action_dim:
                raise ValueError(f"chunk of shape {chunk.shape}, expected (H >= 1, {self.action_dim})")
            if not np.isfinite(chunk).all():
                raise ValueError("chunk holds NaN or inf: not sending it to the arm")
        except Exception as e:  # the control loop keeps going on what it has; the next request retries
            self.errors += 1
            self._failures_in_row += 1
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("chunk for step %d failed: %s", first_step, self.last_error)
            return ChunkResult(
                None, first_step, epoch, version, time.perf_counter() - submitted, self.last_error
            )
        self._failures_in_row = 0
        self.chunks += 1
        latency = time.perf_counter() - submitted
        self._latencies.append(latency)
        return ChunkResult(chunk, first_step, epoch, version, latency)
