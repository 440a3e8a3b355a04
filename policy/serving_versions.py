"""The weights versions a policy server holds side by side, and which one each robot gets.

A version is the server's base policy with a version's trainable tensors loaded into a copy of just those
tensors: every parameter the version does not ship (the frozen backbone in expert-only or LoRA fine-tuning) is
shared with the base, so a canary costs the memory of its trainable subset, not of a second model. Loading
happens on the caller's thread while the serving thread keeps running the versions already in the table; the
new version enters the table in one step, and a retired one leaves it in one step (a batch already running on
it finishes, holding its own reference).

Routing, per request: the version the request asks for; else the version this server assigned the robot (a
canary cohort pinned server-side); else the champion.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

from policy.checkpoint import load_trainable_bytes, safetensors_layout
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.molmothink import MolmoThink, ThinkConfig


@dataclass
class ServedVersion:
    version: int  # weights version number (what responses and episodes carry)
    policy: MolmoAct2Policy  # shares every tensor the version does not ship with the base policy
    think: MolmoThink  # the adaptive-depth inference path around `policy`
    loaded_at: float  # unix s


def shipped_names(blob: bytes) -> set[str]:
    """Tensor names in a safetensors blob, read from its header without loading any tensor."""
    return set(safetensors_layout(memoryview(blob).cast("B"))[1])


def standby_copy(base: MolmoAct2Policy, copied: set[str]) -> MolmoAct2Policy:
    """A policy whose parameters named in `copied` are fresh copies and every other tensor is the base's own."""
    shared: list[object] = [base.config, base.norm_stats, base.prompt_tokenizer, base.action_tokenizer]
    shared.append(base.processor)
    shared += [p for n, p in base.named_parameters() if n not in copied]
    shared += [b for _, b in base.named_buffers()]  # RoPE tables: read-only at inference
    # deepcopy returns memo entries as they are: shared objects are referenced, the rest is copied.
    return copy.deepcopy(base, {id(obj): obj for obj in shared})


class PolicyVersions:
    """Thread-safe table: version -> ServedVersion, the champion, and per-robot assignments."""

    def __init__(self, base: MolmoAct2Policy, version: int, think: ThinkConfig | None = None) -> None:
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        self.base = base.eval()
        self.think_config = think or ThinkConfig()
        self._lock = threading.Lock()
        self._table = {
            version: ServedVersion(version, self.base, MolmoThink(self.base, self.think_config), time.time())
        }
        self._champion = version
        self._assigned: dict[str, int] = {}

    # ---- changes -----------------------------------------------------------------------------------------
    def load(self, version: int, trainable: bytes, champion: bool = False) -> ServedVersion:
        """Add `version` from a trainable-weights blob (checked against the base's architecture). The slow part
        (copy, load) runs outside the lock; requests keep being served meanwhile."""
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        with self._lock:
            if version in self._table:
                raise ValueError(
                    f"version {version} is already loaded (versions are never reused: retire it first)"
                )
        policy = standby_copy(self.base, shipped_names(trainable)).eval()
        load_trainable_bytes(policy, trainable)
        served = ServedVersion(version, policy, MolmoThink(policy, self.think_config), time.time())
        with self._lock:
            if version in self._table:
                raise ValueError(f"version {version} was loaded concurrently")
            self._table[version] = served
            if champion:
                self._champion = version
        return served

    def set_champion(self, version: int) -> None:
        """Serve `version` to every robot that asks for no version and has no assignment."""
        with self._lock:
            if version not in self._table:
                raise KeyError(f"version {version} is not loaded (loaded: {sorted(self._table)})")
            self._champion = version

    def retire(self, version: int) -> None:
        """Drop `version`; its assignments fall back to the champion. The champion cannot be retired."""
        with self._lock:
            if version not in self._table:
                raise KeyError(f"version {version} is not loaded (loaded: {sorted(self._table)})")
            if version == self._champion:
                raise ValueError(
                    f"version {version} is the champion: set another champion before retiring it"
                )
            del self._table[version]
            self._assigned = {r: v for r, v in self._assigned.items() if v != version}

    def assign(self, robot: str, version: int | None) -> None:
        """Pin `robot` to `version` when its requests name none (None: back to the champion)."""
        with self._lock:
            if version is None:
                self._assigned.pop(robot, None)
                return
            if version not in self._table:
                raise KeyError(f"version {version} is not loaded (loaded: {sorted(self._table)})")
            self._assigned[robot] = version

    # ---- lookups -----------------------------------------------------------------------------------------
    def resolve(self, robot: str, requested: int | None) -> ServedVersion | None:
        """The version serving this request, or None when the one it names is not loaded."""
        with self._lock:
            wanted = requested if requested is not None else self._assigned.get(robot, self._champion)
            return self._table.get(wanted)

    @property
    def champion(self) -> int:
        return self._champion

    def loaded(self) -> list[int]:
        with self._lock:
            return sorted(self._table)

    def assignments(self) -> dict[str, int]:
        with self._lock:
            return dict(self._assigned)
