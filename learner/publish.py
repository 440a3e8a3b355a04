"""Where the learner hands finished weight versions: the ``WeightSink`` protocol and a directory sink.

A version is the trainable subset of the policy as safetensors bytes, with its parent version, the training
step it came from and its evaluation figures. The sink, not the learner, allocates version numbers: they only
ever grow and are never reused, even when the learner restarts from an older checkpoint and publishes again
(the orphaned version keeps its number; the new one gets the next).

Two sinks: ``WeightStoreSink`` hands versions to the fleet's signed weight store (``fleet/weights.py``: Redis
numbering, HMAC signature, ZeroMQ announcement), which is what actors hot-swap from; ``DirectoryWeightSink`` is
a plain directory for a learner without a fleet (tests, offline training, benchmarks).

Layout of a directory sink::

    <dir>/counter              last allocated version (written before the payload, so a crash cannot reuse it)
    <dir>/v000003.safetensors  payload
    <dir>/v000003.json         manifest: version, parent, step, figures, sha256, size, created
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from fleet.weights import WeightAnnouncer, WeightStore


@runtime_checkable
class WeightSink(Protocol):
    def publish(self, payload: bytes, parent: int | None, step: int, figures: dict[str, float]) -> int:
        """Store ``payload`` as a new version and return its number (> every number handed out before)."""
        ...


class WeightStoreSink:
    """Publish into ``fleet.weights.WeightStore`` and announce each version (when an announcer is given)."""

    def __init__(self, store: WeightStore, announcer: WeightAnnouncer | None = None, mode: str = "expert"):
        self.store = store
        self.announcer = announcer
        self.mode = mode  # the manifest says which subset the payload holds (expert | lora | full)

    def publish(self, payload: bytes, parent: int | None, step: int, figures: dict[str, float]) -> int:
        manifest = self.store.publish(
            payload, parent=parent, step=step, figures=dict(figures), mode=self.mode
        )
        if self.announcer is not None:
            self.announcer.announce(manifest)
        return manifest.version


class VersionManifest(BaseModel):
    version: int  # >= 1; 0 is the scripted / pretrained seed in EpisodeMeta.policy_version
    parent: int | None  # version the learner started this one from (None: from the initial weights)
    step: int  # learner optimizer step the weights come from
    figures: dict[str, float] = Field(default_factory=dict)  # eval loss, rollout success, ...
    sha256: str  # of the payload bytes
    size: int  # payload bytes
    created: float  # unix seconds


def write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename with fsync: a reader (or a crash) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DirectoryWeightSink:
    """Versions as files in one directory; safe for several publishers on one machine (flock)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _last_allocated(self) -> int:
        counter = self.dir / "counter"
        last = int(counter.read_text().strip() or 0) if counter.exists() else 0
        # the manifests too: a counter file lost or restored from an old backup must not lower the floor
        return max([last, *self.versions()])

    def publish(self, payload: bytes, parent: int | None, step: int, figures: dict[str, float]) -> int:
        with self._locked():
            version = self._last_allocated() + 1
            write_atomic(self.dir / "counter", str(version).encode())
            manifest = VersionManifest(
                version=version,
                parent=parent,
                step=step,
                figures={k: float(v) for k, v in figures.items()},
                sha256=hashlib.sha256(payload).hexdigest(),
                size=len(payload),
                created=time.time(),
            )
            write_atomic(self._payload_path(version), payload)
            # the manifest goes last: a version is listed only once its payload is complete
            write_atomic(self._manifest_path(version), manifest.model_dump_json(indent=1).encode())
        return version

    def versions(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self.dir.glob("v*.json"))

    def latest(self) -> int | None:
        vs = self.versions()
        return vs[-1] if vs else None

    def manifest(self, version: int) -> VersionManifest:
        path = self._manifest_path(version)
        if not path.exists():
            raise KeyError(f"version {version} is not in {self.dir} (have {self.versions()})")
        return VersionManifest.model_validate_json(path.read_text())

    def read(self, version: int) -> tuple[bytes, VersionManifest]:
        """Payload and manifest; raises ValueError when the payload does not match its sha256."""
        m = self.manifest(version)
        payload = self._payload_path(version).read_bytes()
        if hashlib.sha256(payload).hexdigest() != m.sha256:
            raise ValueError(f"version {version}: payload sha256 does not match its manifest (corrupt file)")
        return payload, m

    def _payload_path(self, version: int) -> Path:
        return self.dir / f"v{version:06d}.safetensors"

    def _manifest_path(self, version: int) -> Path:
        return self.dir / f"v{version:06d}.json"
